"""Where a sentence or a clause may end: the look-ahead rules, per language.

`classify_mark` looks at a run of punctuation in the source text and says
whether a chunk may end after it, and how strongly (sentence or clause). It
only answers once the characters it needs have arrived, which is what keeps
the chunker's output independent of how the text was split into deltas.

Generic rules (every language):
- a mark must be followed by whitespace or the end of the text, so ``3.14``,
  ``1,250``, ``R$ 1.299,90``, ``2.0.1``, ``7:45``, ``e.g`` and URLs never cut;
  CJK full-width marks (``。！？，、；：``) are the exception: no space follows them;
- closing quotes and brackets right after the mark belong to it
  (``He said "Stop." Then`` ends after the quote);
- ``, ; :`` (and kin) end a clause; ``! ?`` (and kin) end a sentence at once;
- a single period ends a sentence unless the next word starts lowercase, the
  next non-space character is punctuation that attaches to the left (``. . .``),
  the word before is a single capital letter and the next word is capitalised
  (initials: ``J. R. R. Tolkien``), or a language rule below says otherwise;
- an ellipsis (``...``, ``…``) before a lowercase word is a clause end (a
  pause inside the sentence), otherwise a sentence end.

Language rules (English and Portuguese; other languages get the generic ones):
- titles never end a sentence (``Dr. Silva``, ``Sra. Lima``, ``Av. Paulista``,
  ``e.g. John``); abbreviations that may end one (``etc.``, ``p.m.``, ``U.S.``)
  need no entry: the lowercase rule keeps them inside a sentence;
- number prefixes do not end a sentence before a digit (``No. 5``, ``pág. 12``).
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds of chunk end, weakest first; NOT_A_CUT means "the mark does not end anything".
NOT_A_CUT, WORD, CLAUSE, SENTENCE = 0, 1, 2, 3

CJK_SENTENCE_MARKS = "\u3002\uff01\uff1f\uff0e\uff61"
CJK_CLAUSE_MARKS = "\uff0c\u3001\uff1b\uff1a"
SENTENCE_MARKS = ".!?\u2026\u203c\u2047\u2048\u2049\u061f\u0964\u0965" + CJK_SENTENCE_MARKS
CLAUSE_MARKS = ",;:\u060c\u061b" + CJK_CLAUSE_MARKS
MARKS = frozenset(SENTENCE_MARKS + CLAUSE_MARKS)
_CLAUSE = frozenset(CLAUSE_MARKS)
_CJK_MARKS = frozenset(CJK_SENTENCE_MARKS + CJK_CLAUSE_MARKS)
_DOTS = frozenset(".\u2026")
CLOSERS = frozenset("\"'\u201d\u2019\u00bb\u203a)]}\u300d\u300f\u3011\u3015\uff09\u3009\u300b\u3017\u3019\u301b\uff02")
OPENERS = "\"'\u201c\u2018\u00ab\u2039([{\u00bf\u00a1\u201e\u201a\u300c\u300e\uff08\u3010\u3014\u3008\u300a"
_OPENERS = frozenset(OPENERS)
# Characters a chunk must not start with: they belong to the text before them.
# Straight quotes are left out: after a space they open a quotation.
ATTACHED = MARKS | (CLOSERS - {'"', "'"})
_MAX_TOKEN = 32  # longer words are never abbreviations


@dataclass(frozen=True)
class LanguageRules:
    language: str
    titles: frozenset[str] = frozenset()
    number_prefixes: frozenset[str] = frozenset()


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_RULES = {
    "en": LanguageRules(
        "en",
        titles=_words("mr mrs ms mx dr prof st mt rev fr gen col capt cmdr lt sgt hon messrs "
                      "e.g i.e vs v cf viz"),
        number_prefixes=_words("no nos fig figs vol vols p pp ch chap sec art ref approx est eq op ca"),
    ),
    "pt": LanguageRules(
        "pt",
        titles=_words("sr sra srs sras srta srtas dr dra drs dras prof profa profs exmo exma ilmo ilma "
                      "sto sta av pe d gal cel ten sgt p.ex ex vs"),
        number_prefixes=_words("n nº no nos núm num pág pag p pp art arts cap vol fig tel ed"),
    ),
}


def rules_for(language: str) -> LanguageRules:
    """The rules for ``language`` ("pt-BR" uses "pt"); unknown languages get the generic ones."""
    return _RULES.get(language, LanguageRules(language))


def classify_mark(buf: str, i: int, final: bool, rules: LanguageRules, floor: int) -> tuple[int, int] | None:
    """Classify the punctuation run starting at ``buf[i]`` (a character in MARKS).

    Returns ``(end, kind)``: ``end`` is just past the run and its closing quotes
    or brackets, ``kind`` is SENTENCE, CLAUSE or NOT_A_CUT. Returns None when the
    answer depends on text that has not arrived yet (never when ``final``).
    ``floor`` is where the current chunk starts: the word before the mark is
    read from there on, never from an earlier chunk.
    """
    n = len(buf)
    j = i
    while j < n and buf[j] in MARKS:
        j += 1
    k = _closers_end(buf, j)
    if k == n and not final:
        return None
    last = buf[j - 1]
    if k < n and not buf[k].isspace():
        if last in _CJK_MARKS:
            return k, CLAUSE if last in _CLAUSE else SENTENCE
        return k, NOT_A_CUT
    if last in _CLAUSE:
        return k, CLAUSE
    run = buf[i:j]
    if not all(ch in _DOTS for ch in run):
        return k, SENTENCE
    return _after_dots(buf, i, k, final, rules, floor, ellipsis=len(run) > 1 or "\u2026" in run)


def mark_run_end(buf: str, i: int) -> int:
    """Where the run of marks at ``buf[i]`` and its closing quotes or brackets end (so far)."""
    n = len(buf)
    while i < n and buf[i] in MARKS:
        i += 1
    return _closers_end(buf, i)


def _closers_end(buf: str, j: int) -> int:
    n = len(buf)
    while j < n and buf[j] in CLOSERS:
        j += 1
    return j


def _after_dots(buf: str, i: int, k: int, final: bool, rules: LanguageRules, floor: int,
                ellipsis: bool) -> tuple[int, int] | None:
    """A period or an ellipsis followed by whitespace or the end: read the next word."""
    n = len(buf)
    m = k
    while m < n and buf[m].isspace():
        m += 1
    if m == n:
        return (k, SENTENCE) if final else None
    if buf[m] in ATTACHED:
        return k, NOT_A_CUT
    p = m
    while p < n and buf[p] in _OPENERS:
        p += 1
    token = "" if ellipsis else word_before(buf, i, floor)
    if p < n or final:
        return k, _dots_kind(buf[p] if p < n else "", token, rules, ellipsis)
    # Only opening quotes or brackets so far: answer now if the answer is the
    # same whatever starts the next word (after a title it always is).
    kinds = {_dots_kind(start, token, rules, ellipsis) for start in _WORD_STARTS}
    return (k, kinds.pop()) if len(kinds) == 1 else None


# One start of each class `_dots_kind` tells apart; "" is anything else or the end of input.
_WORD_STARTS = ("a", "A", "1", "")


def _dots_kind(word: str, token: str, rules: LanguageRules, ellipsis: bool) -> int:
    """What the dots after ``token`` end, given the first character of the next word."""
    if ellipsis:
        return CLAUSE if word.islower() else SENTENCE
    key = token.lower()
    if key in rules.titles or word.islower():
        return NOT_A_CUT
    if word.isdigit() and key in rules.number_prefixes:
        return NOT_A_CUT
    if len(token) == 1 and token.isupper() and word.isupper():
        return NOT_A_CUT
    return SENTENCE


def word_before(buf: str, i: int, floor: int) -> str:
    """The word that ends at ``buf[i]`` (exclusive), without opening quotes or brackets."""
    lo = max(floor, i - _MAX_TOKEN)
    j = i
    while j > lo and not buf[j - 1].isspace():
        j -= 1
    return buf[j:i].lstrip(OPENERS)


def is_cjk(ch: str) -> bool:
    """Han, kana and CJK compatibility characters: scripts written without spaces."""
    cp = ord(ch)
    return (0x3040 <= cp <= 0x30FF or 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF
            or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F or 0x31F0 <= cp <= 0x31FF)
