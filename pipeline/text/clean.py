"""Clean-up of the text the engine gets for one chunk.

The chunk's span always points at the original characters; only `Chunk.text`
is cleaned. Cleaning is per character (a fixed replacement for each one), then
whitespace is collapsed and stripped, then the result is NFC-composed. Working
per character lets the chunker track a chunk's cleaned length while it scans
(`replacement` is that per-character step), so the engine limit holds for the
text the engine actually receives.

What happens to each character:
- whitespace of any kind becomes one space (runs collapse, ends are stripped);
- curly, low and angle quotes become ``"`` or ``'``; en dashes and the like
  become ``-``; an em dash becomes `` - `` (a spoken pause, not a hyphen);
  ``…`` becomes ``...``;
- dropped: emoji and other pictographic symbols (category So, except ``°``
  and ``№`` which coqui's cleaners expand), non-ASCII modifier symbols (Sk,
  skin tones), enclosing marks (keycaps), variation selectors, control and
  format characters (zero-width joiners), private-use and unassigned code
  points, lone surrogates;
- everything else is kept: letters, digits, combining marks (Hindi and
  decomposed accents need them), punctuation, currency and math symbols.
"""

from __future__ import annotations

import re
import unicodedata

_QUOTES = {c: '"' for c in "\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a\u301d\u301e\uff02\u2033"}
_QUOTES.update({c: "'" for c in "\u2018\u2019\u201a\u201b\u2032\uff07"})
_DASHES = {c: "-" for c in "\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d"}
_DASHES.update({c: " - " for c in "\u2014\u2015"})
_SPECIAL = {**_QUOTES, **_DASHES, "\u2026": "..."}
# Symbols coqui's cleaners turn into words; dropping them would lose meaning.
_KEPT_SYMBOLS = frozenset("\u00b0\u2116")
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "So", "Me"})
_SPEAKABLE = re.compile(r"[^\W_]")
_SPACES = re.compile(r"\s+")

_cache: dict[str, str] = {}


def replacement(ch: str) -> str:
    """What one input character becomes in the engine's text ("" = dropped, " " = a space)."""
    out = _cache.get(ch)
    if out is None:
        out = _cache[ch] = _replacement(ch)
    return out


def _replacement(ch: str) -> str:
    if ch.isspace():
        return " "
    if ch in _SPECIAL:
        return _SPECIAL[ch]
    if ch.isascii():
        return ch if ch.isprintable() else ""
    if ch in _KEPT_SYMBOLS:
        return ch
    if _is_variation_selector(ch):
        return ""
    category = unicodedata.category(ch)
    if category in _DROPPED_CATEGORIES or category == "Sk":
        return ""
    # Compatibility forms that compose to something else are left to NFC at the end;
    # a character whose own NFC form is longer (rare: some Devanagari letters) is
    # expanded here so the length the chunker tracks is never an underestimate.
    return unicodedata.normalize("NFC", ch)


def _is_variation_selector(ch: str) -> bool:
    cp = ord(ch)
    return 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF


def clean(text: str) -> str:
    """The text the engine gets for the source ``text`` (may be "" if nothing is left)."""
    mapped = "".join([replacement(ch) for ch in text])
    return unicodedata.normalize("NFC", _SPACES.sub(" ", mapped).strip())


def is_speakable(text: str) -> bool:
    """True if ``text`` (source or cleaned) holds a letter or digit.

    Cleaning never removes a letter or digit and never creates one, so the
    answer is the same before and after `clean`.
    """
    return _SPEAKABLE.search(text) is not None
