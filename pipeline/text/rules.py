"""Where a sentence or a clause may end: the look-ahead rules, per language.

`classify_mark` looks at a run of punctuation in the source text and says
whether a chunk may end after it, and how strongly (sentence or clause). It
only answers once the characters it needs have arrived, which is what keeps
the chunker's output independent of how the text was split into deltas.
Every look-ahead and look-back is bounded (a word of at most ``_MAX_TOKEN``
characters, a run of whitespace that the caller has already measured), so
classifying a mark costs the same however long the pending text is.

Generic rules (every language):
- a mark must be followed by whitespace or the end of the text, so ``3.14``,
  ``1,250``, ``R$ 1.299,90``, ``2.0.1``, ``7:45``, ``e.g`` and URLs never cut;
  CJK full-width marks (``。！？，、；：``) are the exception: no space follows them;
- closing quotes and brackets right after the mark belong to it
  (``He said "Stop." Then`` ends after the quote);
- ``, ; :`` (and kin) end a clause at once; ``! ?`` (and kin) end a sentence
  unless the next word starts lowercase (``Yahoo! last spring``);
- a single period ends a sentence unless the next word starts lowercase, the
  next non-space character is punctuation that attaches to the left (``. . .``),
  the word before is a single capital letter and the next word is capitalised
  (initials: ``J. R. R. Tolkien``), the word before is a list marker that
  leads its line or chunk (``1. Preheat``, ``2.) Stir``, ``• a. First``), or it
  is a number sign before a digit (``N°. 5``), or a language rule below says
  otherwise;
- an ellipsis (``...``, ``…``) before a lowercase word is a clause end (a
  pause inside the sentence), otherwise a sentence end.

Language rules (English and Portuguese; other languages get the generic ones):
- titles never end a sentence (``Dr. Silva``, ``Sra. Lima``, ``Av. Paulista``,
  ``e.g. John``);
- abbreviations that may end a sentence (``etc.``, ``Inc.``, ``St.``, and any
  dotted one: ``U.S.``, ``a.m.``, ``J.K.``) end one before a capitalised word
  only when that word usually starts a sentence (``the U.S. Then`` ends,
  ``the U.S. Navy`` and ``at 6 a.m. Mr. Lee`` do not); before a lowercase word
  they never do;
- number prefixes do not end a sentence before a digit (``No. 5``, ``pág. 12``).

The same tables give the chunker its function words: a word boundary right
before one (``and``, ``that``, ``which``, ``e``, ``que``...) is where a cut
between words does the least harm (see `LanguageRules.function_words`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Kinds of chunk end, weakest first; NOT_A_CUT means "the mark does not end anything".
NOT_A_CUT, WORD, CLAUSE, SENTENCE = 0, 1, 2, 3
TOO_LONG = -1  # a run of marks longer than the caller's bound (see classify_mark)

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
# A run of marks, then one of closing quotes and brackets (read in C: a run may be long).
_MARK_RUN = re.compile("[" + re.escape(SENTENCE_MARKS + CLAUSE_MARKS) + "]*")
_CLOSER_RUN = re.compile("[" + re.escape("".join(sorted(CLOSERS))) + "]*")
# Characters a chunk must not start with: they belong to the text before them.
# Straight quotes are left out: after a space they open a quotation.
ATTACHED = MARKS | (CLOSERS - {'"', "'"})
_MAX_TOKEN = 32  # longer words are never abbreviations, list markers or sentence starters
# Bullets that may precede a list marker at the start of a line ("• 3. Serve").
_BULLETS = frozenset("\u2022\u2023\u25e6\u25aa\u25ab\u25cf\u25cb\u25a0\u25a1\u2043\u2219\u00b7*-\u2013\u2014>")
# "1." "12." "1.2." "a." "B." "iv." as the first word of a line or chunk.
_LIST_MARKER = re.compile(r"(?:\d{1,3}(?:\.\d{1,3})*|[^\W\d_]|[ivxIVX]{2,4})")
# Letters and dots: "U.S" "a.m" "J.K" "Ph.D" "S.A" (the final period is the mark itself).
_DOTTED = re.compile(r"(?:[^\W\d_]{1,2}\.)+[^\W\d_]{1,2}")
# Number signs in every language: "N°. 5", "nº. 12", "n.º 3".
_NUMBER_SIGNS = frozenset({"n\u00b0", "n\u00ba", "n.\u00ba", "n.\u00b0", "\u2116"})


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _prefixes(words: frozenset[str]) -> frozenset[str]:
    return frozenset(w[:k] for w in words for k in range(1, len(w)))


@dataclass(frozen=True)
class LanguageRules:
    language: str
    titles: frozenset[str] = frozenset()
    number_prefixes: frozenset[str] = frozenset()
    abbreviations: frozenset[str] = frozenset()  # may end a sentence; see `_abbreviation_kind`
    starters: frozenset[str] = frozenset()  # words that usually start a sentence (lowercased)
    function_words: frozenset[str] = frozenset()  # a word cut right before one does the least harm
    starter_prefixes: frozenset[str] = field(init=False)
    function_prefixes: frozenset[str] = field(init=False)
    longest_function_word: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starter_prefixes", _prefixes(self.starters))
        object.__setattr__(self, "function_prefixes", _prefixes(self.function_words))
        object.__setattr__(self, "longest_function_word", max(map(len, self.function_words), default=0))


_RULES = {
    "en": LanguageRules(
        "en",
        titles=_words("mr mrs ms mx dr prof mt rev fr gen col capt cmdr lt sgt hon messrs "
                      "e.g i.e vs v cf viz"),
        number_prefixes=_words("no nos fig figs vol vols p pp ch chap sec art ref approx est eq op ca"),
        abbreviations=_words("etc inc ltd co corp jr sr bros st ave blvd rd dept univ assn approx est govt "
                             "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs "
                             "fri sat sun min max hr hrs sec"),
        starters=_words(
            "i you he she it we they this that these those there here my your his her its our their "
            "the a an some many most all each every no any both few several such another other neither "
            "either nobody nothing everyone everybody everything someone somebody something one who what "
            "when where why how which and but or so yet then now still also however meanwhile later soon "
            "afterwards instead thus therefore hence finally first second next last today yesterday "
            "tomorrow tonight since because although though while if unless once as at in on for from by "
            "with without during after before to under over not never only even just perhaps maybe "
            "indeed again yes well oh please let do does did is are was were can could would should shall "
            "might must have has had"),
        function_words=_words(
            "and but or nor so yet that which who whom whose where when while whereas because although "
            "though if unless until since as after before once then whether than "
            "in on at to for from with without by into onto over under through across along around "
            "between among behind beyond during toward towards past near inside outside against despite "
            "like upon about within throughout beneath above below"),
    ),
    "pt": LanguageRules(
        "pt",
        titles=_words("sr sra srs sras srta srtas dr dra drs dras prof profa profs exmo exma ilmo ilma "
                      "sto sta av pe d gal cel ten sgt p.ex ex vs"),
        number_prefixes=_words("n nº no nos núm num pág pag p pp art arts cap vol fig tel ed"),
        abbreviations=_words("etc ltda cia jr séc sec aprox tel obs dept depto univ máx mín max min "
                             "jan fev mar abr mai jun jul ago set out nov dez seg ter qua qui sex sáb dom "
                             "hr hrs"),
        starters=_words(
            "o a os as um uma uns umas eu tu ele ela eles elas nós vós você vocês isso isto aquilo este "
            "esta estes estas esse essa esses essas aquele aquela aqueles aquelas meu minha meus minhas "
            "seu sua seus suas nosso nossa mas e ou porém contudo entretanto todavia então depois antes "
            "agora hoje ontem amanhã também já ainda logo assim portanto quando como onde porque pois se "
            "não sim nunca sempre talvez em no na nos nas num numa do da dos das de com sem sobre desde "
            "após durante para por pelo pela lá aqui ali cada todo toda todos todas muitos muitas alguns "
            "algumas nenhum nenhuma quem que qual quais há houve foi era é está estava estão tem tinha "
            "vamos mais só apenas enfim finalmente primeiro além"),
        function_words=_words(
            "e mas ou nem que quando onde enquanto porque pois se embora como quem cujo cuja cujos cujas "
            "porém então conforme caso "
            "em no na nos nas num numa com sem para pra por pelo pela pelos pelas sobre entre contra "
            "desde durante sob até após ao aos à às perante"),
    ),
}


def rules_for(language: str) -> LanguageRules:
    """The rules for ``language`` ("pt-BR" uses "pt"); unknown languages get the generic ones."""
    return _RULES.get(language, LanguageRules(language))


def classify_mark(buf: str, i: int, final: bool, rules: LanguageRules, floor: int,
                  skip_space=None, stop: int | None = None) -> tuple[int, int] | None:
    """Classify the punctuation run starting at ``buf[i]`` (a character in MARKS).

    Returns ``(end, kind)``: ``end`` is just past the run and its closing quotes
    or brackets, ``kind`` is SENTENCE, CLAUSE or NOT_A_CUT. Returns None when the
    answer depends on text that has not arrived yet (never when ``final``).
    ``floor`` is where the current chunk starts: the word before the mark is
    read from there on, never from an earlier chunk. ``skip_space(p)`` returns
    the end of the whitespace run at ``p`` (the chunker passes one that
    remembers how far a long run was already read). The run is read no further
    than ``stop``; a run that reaches it gives ``(stop, TOO_LONG)``.
    """
    n = len(buf)
    end = n if stop is None else min(stop, n)
    j = i + 1  # runs are mostly one mark: read longer ones (and closers) in C
    if j < end and buf[j] in MARKS:
        j = _MARK_RUN.match(buf, j, end).end()
    k = j
    if k < end and buf[k] in CLOSERS:
        k = _CLOSER_RUN.match(buf, k, end).end()
    if k == stop:
        return k, TOO_LONG
    if k == n and not final:
        return None
    last = buf[j - 1]
    if k < n and not buf[k].isspace():
        if last in _CJK_MARKS:
            return k, CLAUSE if last in _CLAUSE else SENTENCE
        return k, NOT_A_CUT
    if last in _CLAUSE:
        return k, CLAUSE
    if k + 1 < n and not buf[k + 1].isspace():
        m = k + 1  # the usual single space
    else:
        m = skip_space(k) if skip_space is not None else _skip_space(buf, k)
    if m == n:
        return (k, SENTENCE) if final else None
    if buf[m] in ATTACHED:
        return k, NOT_A_CUT
    if j == i + 1 and last == ".":
        mode, token = _PERIOD, word_before(buf, i, floor)
    elif all(ch in _DOTS for ch in buf[i:j]):
        mode, token = _ELLIPSIS, ""
    else:
        mode, token = _BANG, ""
    p = m
    if buf[p] in _OPENERS:
        stop = min(n, m + _MAX_TOKEN)
        while p < stop and buf[p] in _OPENERS:
            p += 1
        if p == m + _MAX_TOKEN:  # a long run of opening brackets: no word follows in reach
            return k, _kind(mode, "", "", 0, True, token, buf, i, floor, rules)
        if p == n:
            if final:
                return k, _kind(mode, "", "", 0, True, token, buf, i, floor, rules)
            kinds = {_kind(mode, w[:1], w, 0, True, token, buf, i, floor, rules) for w in _SAMPLE_WORDS}
            return (k, kinds.pop()) if len(kinds) == 1 else None
    kind = _kind(mode, buf[p], buf, p, final, token, buf, i, floor, rules)
    return None if kind is None else (k, kind)


def mark_run_end(buf: str, i: int, stop: int | None = None) -> int:
    """Where the run of marks at ``buf[i]`` and its closing quotes or brackets end (so far, and before ``stop``)."""
    n = len(buf) if stop is None else min(stop, len(buf))
    return _CLOSER_RUN.match(buf, _MARK_RUN.match(buf, i, n).end(), n).end()


def _skip_space(buf: str, p: int) -> int:
    n = len(buf)
    while p < n and buf[p].isspace():
        p += 1
    return p


_PERIOD, _ELLIPSIS, _BANG = 0, 1, 2
# Only opening quotes or brackets so far: one next word of each class the rules tell
# apart (lowercase, a capitalised word that starts nothing, sentence starters in
# English and Portuguese, a digit, anything else); if all agree, so will the real one.
_SAMPLE_WORDS = ("a", "Qzxq", "The", "O", "1", "")


def _kind(mode: int, first: str, text: str, p: int, final: bool, token: str, buf: str, i: int, floor: int,
          rules: LanguageRules) -> int | None:
    """What a run of marks ends, given the next word: its first character, and the word
    itself at text[p:] (read only after an abbreviation). None: wait for more of it."""
    if mode != _PERIOD:
        if mode == _ELLIPSIS:
            return CLAUSE if first.islower() else SENTENCE
        return NOT_A_CUT if first.islower() else SENTENCE  # "Yahoo! last spring"
    key = token.lower()
    if first.islower() or key in rules.titles:
        return NOT_A_CUT
    if _LIST_MARKER.fullmatch(token) and _leads_line(buf, _word_start(buf, i, floor), floor):
        return NOT_A_CUT  # "1. Preheat", "• 3. Serve"
    if first.isdigit() and (key in rules.number_prefixes or key in _NUMBER_SIGNS):
        return NOT_A_CUT
    if not first.isupper():
        return SENTENCE
    if len(token) == 1 and token.isupper():
        return NOT_A_CUT  # an initial before a name
    if rules.starters and (key in rules.abbreviations or _DOTTED.fullmatch(token)):
        return _abbreviation_kind(text, p, final, rules)
    return SENTENCE


def _abbreviation_kind(text: str, p: int, final: bool, rules: LanguageRules) -> int | None:
    """After an abbreviation, a capitalised word ends the sentence only if it usually starts one."""
    n = len(text)
    q, stop = p, min(n, p + _MAX_TOKEN + 1)
    while q < stop and (text[q].isalpha() or unicodedata.category(text[q])[0] == "M"):
        q += 1
    word, complete = unicodedata.normalize("NFC", text[p:q]).lower(), q < n or final
    if word in rules.starters and complete:
        return SENTENCE
    if word in rules.starters or (not complete and word in rules.starter_prefixes):
        return None  # "The" may yet become "Theodore"; "Th" may yet become "Then"
    return NOT_A_CUT


def _word_start(buf: str, i: int, floor: int) -> int:
    lo = max(floor, i - _MAX_TOKEN)
    j = i
    while j > lo and not buf[j - 1].isspace():
        j -= 1
    return j


def _leads_line(buf: str, j: int, floor: int) -> bool:
    """Only bullets and spaces (within reach) stand between ``buf[j]`` and the chunk's or the line's start."""
    lo = max(floor, j - _MAX_TOKEN)
    while j > lo:
        ch = buf[j - 1]
        if ch in "\n\r\u2028\u2029":
            return True
        if not (ch.isspace() or ch in _BULLETS):
            return False
        j -= 1
    return j == floor


def word_before(buf: str, i: int, floor: int) -> str:
    """The word that ends at ``buf[i]`` (exclusive), without opening quotes or brackets."""
    return buf[_word_start(buf, i, floor):i].lstrip(OPENERS)


def is_cjk(ch: str) -> bool:
    """Han, kana and CJK compatibility characters: scripts written without spaces."""
    cp = ord(ch)
    return (0x3040 <= cp <= 0x30FF or 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF
            or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F or 0x31F0 <= cp <= 0x31FF)
