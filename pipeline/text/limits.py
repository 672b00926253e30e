"""XTTS's per-language character limits, read from the installed coqui-tts.

coqui-tts keeps the table in `VoiceBpeTokenizer.__init__`
(``TTS/tts/layers/xtts/tokenizer.py``). Importing that module pulls in torch,
which the coordinator side must not load, so the file is located with
`importlib.util.find_spec` (which finds a top-level package without running
it) and the ``char_limits`` dict literal is read with `ast`. The result is
cached. Without coqui-tts (a client-only install) every language gets
DEFAULT_CHAR_LIMIT, the same default the tokenizer itself uses for a language
missing from its table; that fallback is logged once.

A caller that knows the live tokenizer's table (the worker reports it when it
is ready) passes it explicitly and wins over both.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

log = logging.getLogger("xtts_stream.text.limits")

DEFAULT_CHAR_LIMIT = 250
# One input character can clean to three ("…" -> "..."); a limit must leave room for words.
MIN_CHAR_LIMIT = 16
# Real XTTS speaks about 14 characters a second; an audio token is 1024 samples at 22050 Hz.
TOKENS_PER_CHAR = 1.54


def forced_tokens(text: str, tokens_per_char: float = TOKENS_PER_CHAR) -> int:
    """How many audio tokens a random-weight checkpoint is made to emit for ``text`` under the benchmarks'
    length policy (see workers/engines/length_policy.py): a realistic count, and always at least one
    token of audio before the stop token."""
    return max(2, round(tokens_per_char * len(text)))
_TOKENIZER_FILE = ("tts", "layers", "xtts", "tokenizer.py")


@functools.lru_cache(maxsize=1)
def xtts_char_limits() -> Mapping[str, int]:
    """The installed coqui-tts table, or {} if it cannot be found (logged once)."""
    path = _tokenizer_path()
    if path is None:
        log.info("coqui-tts is not installed; every language uses the default limit of %d characters",
                 DEFAULT_CHAR_LIMIT)
        return MappingProxyType({})
    try:
        table = parse_char_limits(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError) as exc:
        log.warning("cannot read XTTS character limits from %s (%s); using %d for every language",
                    path, exc, DEFAULT_CHAR_LIMIT)
        return MappingProxyType({})
    return MappingProxyType(table)


def _tokenizer_path() -> Path | None:
    spec = importlib.util.find_spec("TTS")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_TOKENIZER_FILE)
        if path.is_file():
            return path
    return None


def parse_char_limits(source: str) -> dict[str, int]:
    """The ``char_limits = {...}`` literal in ``source`` (a Python module's text)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(_named_char_limits(t) for t in node.targets):
            if isinstance(node.value, ast.Dict):
                table = ast.literal_eval(node.value)
                return checked_limits(table, "coqui-tts char_limits")
    raise ValueError("no char_limits dict literal found")


def _named_char_limits(target: ast.expr) -> bool:
    return (isinstance(target, ast.Attribute) and target.attr == "char_limits") or (
        isinstance(target, ast.Name) and target.id == "char_limits")


def checked_limits(table: Mapping[str, int], where: str) -> dict[str, int]:
    """``table`` as a plain dict, or a ValueError naming the first bad entry."""
    out: dict[str, int] = {}
    for lang, limit in table.items():
        if not isinstance(lang, str) or isinstance(limit, bool) or not isinstance(limit, int) \
                or limit < MIN_CHAR_LIMIT:
            raise ValueError(f"{where}: bad entry {lang!r}: {limit!r} (need language -> int >= {MIN_CHAR_LIMIT})")
        out[lang] = limit
    return out


def char_limit(language: str, explicit: Mapping[str, int] | None = None) -> int:
    """The engine's character limit for ``language`` (a base code such as "pt")."""
    if explicit is not None:
        return checked_limits(explicit, "char_limits").get(language, DEFAULT_CHAR_LIMIT)
    return xtts_char_limits().get(language, DEFAULT_CHAR_LIMIT)
