"""Property tests: spans, limits, words and delta-invariance over random texts and splits."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline.settings import Profile
from pipeline.text.chunker import Chunk, Chunker, base_language, check_spans, split_text
from pipeline.text.rules import CJK_CLAUSE_MARKS, CJK_SENTENCE_MARKS, CLOSERS, is_cjk, rules_for
from tests.hypothesis_profiles import property_settings

# Small sizes and limits so that short random texts reach every rule.
SMALL = Profile(name="small", first_chunk_max_chars=5, chunk_target_chars=20, natural_pause_after_s=1000.0)
PAUSING = Profile(name="pausing", first_chunk_max_chars=4, chunk_target_chars=12, chars_per_second=2.0,
                  natural_pause_after_s=3.0)
# (profile, engine limits, engine speed): the last two size chunks for an engine that
# synthesises each chunk whole, at 30 and 120 characters per second.
CONFIGS = [
    (SMALL, {"en": 24, "pt": 30, "zh": 16}, None),
    (PAUSING, {"en": 40, "pt": 18, "zh": 20}, None),
    ("fast", {"en": 60, "pt": 50, "zh": 30}, None),
    ("fast", None, None),
    (SMALL, {"en": 40, "pt": 30, "zh": 16}, 30.0),
    ("fast", {"en": 60, "pt": 50, "zh": 30}, 120.0),
]
FEEDING_CONFIGS = CONFIGS[:3] + CONFIGS[4:]  # the emission tests replay every prefix: no unlimited config
LANGUAGES = ["en", "pt", "zh", "de"]

TOKENS = [
    "Dr.", "Mr.", "Sra.", "Av.", "e.g.", "i.e.", "etc.", "p.m.", "U.S.", "No.", "J.", "3.14", "1,250",
    "R$ 1.299,90", "2.0.1", "7:45", "$29.95", "...", "\u2026", ".", ",", ";", ":", "!", "?", "?!", '"', "'",
    "\u00ab", "\u00bb", "(", ")", "\u201c", "\u201d", "\u2014", "-", "\n", "\n\n", "\t", "\U0001f600",
    "\U0001f44d\U0001f3fd", "\u200d", "\u4f60\u597d", "\u3002", "\uff0c", "\u300d", "e\u0301", "\u00e7\u00e3o",
    "x" * 27, "supercalifragilistic", "A", "a", "The", "word", "Hello", "ol\u00e1", "\u0915\u093c",
    # the first-chunk look-ahead: initials, abbreviations, list markers, number signs, "!" before lowercase,
    # sentence starters, capitalised continuations and function words
    "K.", "J.K.", "a.m.", "Inc.", "St.", "N\u00b0.", "n\u00ba.", "1.", "2.)", "\u2022", "iv.", "Yahoo!", "Then",
    "Navy", "and", "that", "que", "e", "at\u00e9", "Depois", "O",
]
SEPARATORS = ["", " ", " ", " ", "  ", "\n", " \u00a0"]

pieces = st.one_of(
    st.sampled_from(TOKENS),
    st.from_regex(r"[A-Za-z]{1,9}", fullmatch=True),
    st.text(max_size=3),
)
random_texts = st.lists(st.tuples(pieces, st.sampled_from(SEPARATORS)), max_size=50).map(
    lambda parts: "".join(p + s for p, s in parts))

# Corner cases hypothesis found once; pinned so that every run checks them.
FOUND = [
    "Dr.Dr. Dr.Dr.. AAAAAA AAAAAAAA Dr.Dr.",  # the input may end at any point: that is a candidate too
    "Dr. Dr.Dr.Dr.Dr.Dr. . Dr.Dr.",  # a pending mark is already output text
    "Dr. Dr.Dr.Dr.Dr.Dr. Dr....Dr.",  # ... and so is a pending run of marks
    "Dr.Dr.Dr.Dr.Dr.Sra.Sra.e.g.",  # a mark that cannot fit forces the cut now
    "Dr.Dr.Dr.Dr.Dr.Dr.Dr.Dr....Dr.",  # ... as does a run that passes the limit
    "Dr.Dr.Dr.Dr.Dr. ...",  # a hard cut never ends on a space
    "...\n2.0.1 \u00a0\u0915\u093c \u00a02.0.1 \u00a0",  # the period after "2" is output text at once
    'Dr. Dr.Dr. A Dr. "Dr.',  # a title's period is no cut, whatever word follows the quote
    'Dr. Dr."" "Dr.',  # ... and the word boundary after it is known as soon as the quote arrives
]

# Random examples locally, the same ones on every run in CI (see hypothesis_profiles.py).
PROPERTY_SETTINGS = property_settings(300)


@st.composite
def deltas(draw, text: str) -> list[str]:
    """The text split one character at a time, word by word, or at random sizes."""
    mode = draw(st.sampled_from(["char", "word", "random"]))
    if mode == "char":
        return list(text)
    if mode == "word":
        out, word = [], ""
        for ch in text:
            word += ch
            if ch.isspace():
                out.append(word)
                word = ""
        return out + [word] if word else out
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=len(text) + 1))
    out, pos, k = [], 0, 0
    while pos < len(text):
        size = sizes[k % len(sizes)]
        out.append(text[pos:pos + size])
        pos += size
        k += 1
    return out


def fed(parts: list[str], profile, language: str, limits, speed) -> list[Chunk]:
    chunker = Chunker(profile, language, char_limits=limits, engine_chars_per_s=speed)
    out = []
    for part in parts:
        out += chunker.feed(part)
    return out + chunker.flush()


def limit_of(profile, language: str, limits) -> int:
    return Chunker(profile, language, char_limits=limits).limit


@PROPERTY_SETTINGS
@given(data=st.data(), text=random_texts, config=st.sampled_from(CONFIGS), language=st.sampled_from(LANGUAGES))
def test_any_split_into_deltas_gives_the_same_chunks(data, text, config, language) -> None:
    profile, limits, speed = config
    parts = data.draw(deltas(text))
    assert "".join(parts) == text
    assert fed(parts, profile, language, limits, speed) == split_text(text, profile, language, limits, speed)


@PROPERTY_SETTINGS
@given(text=random_texts, config=st.sampled_from(CONFIGS), language=st.sampled_from(LANGUAGES))
@example(text=FOUND[5], config=CONFIGS[0], language="zh")
def test_spans_cover_the_text_within_limits_and_never_split_a_word(text, config, language) -> None:
    profile, limits, speed = config
    limit = limit_of(profile, language, limits)
    chunks = split_text(text, profile, language, limits, speed)
    # Disjoint, increasing, cleaned text within the limit, nothing speakable left out.
    check_spans(text, chunks, limit)
    for c in chunks:
        assert c.end == len(text) or _at_word_boundary(text, c.end) or _forced(text, c, limit), (c, text)


def _at_word_boundary(text: str, end: int) -> bool:
    before, after = text[end - 1], text[end]
    if after.isspace():
        return True
    cjk_marks = CJK_SENTENCE_MARKS + CJK_CLAUSE_MARKS
    if before in cjk_marks or (before in CLOSERS and text[:end].rstrip("".join(CLOSERS))[-1:] in cjk_marks):
        return True
    return is_cjk(before) and is_cjk(after)


def _forced(text: str, chunk: Chunk, limit: int) -> bool:
    """A cut inside a word is allowed only when the chunk is full."""
    marks = 0
    while chunk.end + marks < len(text) and unicodedata.category(text[chunk.end + marks])[0] == "M":
        marks += 1
    return chunk.cut == "hard" and len(chunk.text) + marks + 3 >= limit


# Continuations that can change a pending decision: the end of input, a mark, a
# case, a digit, a quote, a dropped character (it moves a span's end without
# adding length), a combining mark, short sentences and clauses, long runs with
# and without punctuation.
CONTINUATIONS = ["", " ", ".", ",", "!", "\"", "a", "A", "1", "\u3002", " a", " A", " 1", " .", " ,", " \u00bb",
                 "\U0001f600", "\U0001f600 a", "\u0301",
                 "a. B", "a, b", ". A", "! A", ", a", " a. B", " a, b", " a b c d e f g h i j k l",
                 " " + " ".join(["lorem"] * 50), " " + " ".join(["lorem"] * 50) + ". B",
                 " " + " lorem" * 5 + ". A" + " lorem" * 40, " " + " lorem" * 9 + ", a" + " lorem" * 40,
                 "x" * 80]



def continuations(text: str, language: str) -> list[str]:
    """CONTINUATIONS, plus whatever turns the word being written into a function word or a sentence starter."""
    rules = rules_for(base_language(language))
    tail = re.search(r"[^\W\d_]+$", text)
    if tail is None:
        return CONTINUATIONS
    word = tail.group().lower()
    grown = {w[len(word):] for w in rules.function_words | rules.starters if w.startswith(word) and w != word}
    return CONTINUATIONS + sorted(grown)


@property_settings(150)
@given(text=random_texts, cut=st.floats(0, 1), config=st.sampled_from(FEEDING_CONFIGS),
       language=st.sampled_from(LANGUAGES))
@example(text=FOUND[0], cut=31.5 / 37, config=CONFIGS[0], language="en")
@example(text=FOUND[2], cut=26.5 / 29, config=CONFIGS[0], language="en")
def test_no_chunk_comes_out_before_its_end_is_certain(text, cut, config, language) -> None:
    profile, limits, speed = config
    prefix = text[:int(len(text) * cut)]
    emitted = Chunker(profile, language, char_limits=limits, engine_chars_per_s=speed).feed(prefix)
    for more in continuations(prefix, language):
        assert split_text(prefix + more, profile, language, limits, speed)[:len(emitted)] == emitted


@property_settings(150)
@given(text=random_texts, config=st.sampled_from(FEEDING_CONFIGS), language=st.sampled_from(LANGUAGES))
@example(text=FOUND[0], config=CONFIGS[0], language="en")
@example(text=FOUND[1], config=CONFIGS[0], language="en")
@example(text=FOUND[2], config=CONFIGS[0], language="en")
@example(text=FOUND[3], config=CONFIGS[0], language="en")
@example(text=FOUND[4], config=CONFIGS[0], language="en")
@example(text=FOUND[6], config=CONFIGS[0], language="en")
@example(text=FOUND[6], config=CONFIGS[1], language="en")
@example(text=FOUND[7], config=CONFIGS[1], language="en")
@example(text=FOUND[8], config=CONFIGS[0], language="en")
def test_each_chunk_comes_out_as_soon_as_its_end_is_certain(text, config, language) -> None:
    """One character less than the chunker waited for, some continuation still changes the chunk."""
    profile, limits, speed = config
    chunker = Chunker(profile, language, char_limits=limits, engine_chars_per_s=speed)
    for pos in range(1, len(text) + 1):
        for chunk in chunker.feed(text[pos - 1]):
            shorter = text[:pos - 1]
            outcomes = [split_text(shorter + more, profile, language, limits, speed)
                        for more in continuations(shorter, language)]
            changed = [len(o) <= chunk.index or o[chunk.index] != chunk for o in outcomes]
            assert any(changed), (shorter, chunk)






# -- the settings profiles -------------------------------------------------------------

@pytest.mark.parametrize("value, derandomized", [(None, False), ("true", True), ("1", True)])
def test_ci_draws_the_same_examples_every_run(monkeypatch, value, derandomized) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    monkeypatch.delenv("CHUNKER_MAX_EXAMPLES", raising=False)
    chosen = property_settings(7)
    assert chosen.derandomize is derandomized
    assert (chosen.database is None) is derandomized
    assert chosen.max_examples == 7 and chosen.deadline is None


def test_a_long_search_sets_the_example_count_and_rejects_nonsense(monkeypatch) -> None:
    monkeypatch.setenv("CHUNKER_MAX_EXAMPLES", "5000")
    assert property_settings(7).max_examples == 5000
    for bad in ("many", "-3", "0", "1e4"):
        monkeypatch.setenv("CHUNKER_MAX_EXAMPLES", bad)
        with pytest.raises(ValueError, match="CHUNKER_MAX_EXAMPLES"):
            property_settings(7)
