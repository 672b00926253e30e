"""Table-driven tests of the chunker: tricky strings, the size rules, limits, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import Profile, SettingsError
from pipeline.text import limits as engine_limits
from pipeline.text.chunker import Chunk, Chunker, check_spans, split_text

ROOT = Path(__file__).resolve().parent.parent

# Small numbers so the size rules show on short strings: first window 10, target 20, far 40.
SMALL = Profile(name="small", first_chunk_max_chars=5, chunk_target_chars=20, chars_per_second=14.0,
                natural_pause_after_s=1000.0)
SMALL_LIMITS = {"en": 60, "pt": 60}


def texts(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


def first_chunk(text: str, language: str = "en") -> str:
    return split_text(text, "fast", language)[0].text


# The first chunk ends at the first real clause or sentence mark; every case below
# puts a mark that must NOT cut before the one that must.
FIRST_CHUNK_CASES = [
    ("en", "Dr. Silva is here. Then we go.", "Dr. Silva is here."),
    ("en", "Mr. Smith went home. Later on.", "Mr. Smith went home."),
    ("en", "Mrs. Jones came late. Then.", "Mrs. Jones came late."),
    ("en", "Ms. Lee, welcome back.", "Ms. Lee,"),
    ("en", "St. Louis is big. Yes it is.", "St. Louis is big."),
    ("en", "We need e.g. hammers now. Then", "We need e.g. hammers now."),
    ("en", "That is i.e. the point. Next one.", "That is i.e. the point."),
    ("en", "Cats vs. Dogs is old. Next one.", "Cats vs. Dogs is old."),
    ("en", "Bring apples etc. and more. Next.", "Bring apples etc. and more."),
    ("en", "He moved to the U.S. last year. Next.", "He moved to the U.S. last year."),
    ("en", "It starts at 7:45 today. Next one.", "It starts at 7:45 today."),
    ("en", "Version 2.0.1 is out now. Next one.", "Version 2.0.1 is out now."),
    ("en", "Pi is about 3.14 or so. Next one.", "Pi is about 3.14 or so."),
    ("en", "We sold 1,250 units today. Next.", "We sold 1,250 units today."),
    ("en", "It costs $29.95 only. Next one.", "It costs $29.95 only."),
    ("en", "We met at 7 p.m. and then left. Next", "We met at 7 p.m. and then left."),
    ("en", "We met at 7 p.m. Then we left.", "We met at 7 p.m."),
    ("en", "J. R. R. Tolkien wrote it. Next.", "J. R. R. Tolkien wrote it."),
    ("en", "See No. 5 and go home. Next one.", "See No. 5 and go home."),
    ("en", "Wait... what happened? Next.", "Wait..."),
    ("en", "Well\u2026 I think so. Next one.", "Well..."),
    ("en", "He said \"Stop.\" Then he left.", "He said \"Stop.\""),
    ("en", "(See the notes.) Then go on.", "(See the notes.)"),
    ("en", "Really?! Yes, really.", "Really?!"),
    ("en", "Hello,world and more text. Next one.", "Hello,world and more text."),
    ("en", "Go to https://example.com/a:b now. Next", "Go to https://example.com/a:b now."),
    ("pt", "Sr. Jo\u00e3o chegou cedo. Depois saiu.", "Sr. Jo\u00e3o chegou cedo."),
    ("pt", "Sra. Maria ligou hoje. Depois.", "Sra. Maria ligou hoje."),
    ("pt", "A Dra. Ana atende hoje. Depois.", "A Dra. Ana atende hoje."),
    ("pt", "O Dr. Paulo saiu agora. Depois.", "O Dr. Paulo saiu agora."),
    ("pt", "Fica na Av. Paulista, perto.", "Fica na Av. Paulista,"),
    ("pt", "Custa R$ 1.299,90 hoje. Depois.", "Custa R$ 1.299,90 hoje."),
    ("pt", "Compre p\u00e3o etc. para hoje. Depois.", "Compre p\u00e3o etc. para hoje."),
    ("pt", "Chego \u00e0s 3 p.m. amanh\u00e3 cedo. Depois.", "Chego \u00e0s 3 p.m. amanh\u00e3 cedo."),
    ("pt", "Veja a p\u00e1g. 12 do livro. Depois.", "Veja a p\u00e1g. 12 do livro."),
    ("pt", "Ele disse \u00abPare.\u00bb Depois saiu.", "Ele disse \"Pare.\""),
    ("pt-BR", "Sra. Lima chegou. Depois.", "Sra. Lima chegou."),
    ("zh", "\u4f60\u597d\u3002\u6211\u5f88\u597d\u3002", "\u4f60\u597d\u3002"),
]


@pytest.mark.parametrize("language, text, expected", FIRST_CHUNK_CASES)
def test_first_chunk_cuts_only_at_a_real_mark(language: str, text: str, expected: str) -> None:
    chunks = split_text(text, "fast", language)
    assert chunks[0].text == expected
    check_spans(text, chunks)


def test_closing_quote_stays_with_its_sentence_span() -> None:
    text = 'He said "Stop." Then he left.'
    first = split_text(text)[0]
    assert text[first.start:first.end] == 'He said "Stop."'


def test_portuguese_angle_quotes_stay_in_the_span_and_are_normalised() -> None:
    text = "Ela disse \u00absim.\u00bb Depois foi embora."
    first = split_text(text, language="pt")[0]
    assert text[first.start:first.end] == "Ela disse \u00absim.\u00bb"
    assert first.text == 'Ela disse "sim."'


def test_spans_point_at_the_input_as_received() -> None:
    text = "  Hello   there,\n\n how are   you?  "
    chunks = split_text(text)
    assert [(c.start, c.end) for c in chunks] == [(2, 16), (19, 33)]
    assert [text[c.start:c.end] for c in chunks] == ["Hello   there,", "how are   you?"]
    assert texts(chunks) == ["Hello there,", "how are you?"]


# -- emitted as soon as certain ---------------------------------------------------

def test_a_comma_and_a_space_emit_the_first_chunk_at_once() -> None:
    ch = Chunker()
    assert texts(ch.feed("Hello there, ")) == ["Hello there,"]


def test_a_comma_without_the_space_waits_it_might_be_a_number() -> None:
    ch = Chunker()
    assert ch.feed("We sold 1,") == []
    assert ch.feed("250 units. ") == []  # a period needs the next word
    assert texts(ch.feed("Then")) == ["We sold 1,250 units."]


def test_a_title_waits_for_the_next_word() -> None:
    ch = Chunker()
    assert ch.feed("Dr.") == []
    assert ch.feed(" ") == []
    assert ch.feed("Silva") == []
    assert texts(ch.feed(" is in. Now")) == ["Dr. Silva is in."]


def emitted_at(text: str, profile: Profile, limits: dict[str, int]) -> list[tuple[int, str]]:
    """(characters fed so far, chunk text) for each chunk, feeding one character at a time."""
    ch = Chunker(profile, "en", char_limits=limits)
    return [(pos, c.text) for pos in range(1, len(text) + 1) for c in ch.feed(text[pos - 1])]


PAUSING = Profile(name="pausing", first_chunk_max_chars=4, chunk_target_chars=12, chars_per_second=2.0,
                  natural_pause_after_s=3.0)

# Each chunk comes out on the first character after which no continuation can change it.
EMITTED_AT_CASES = [
    # First window 10: "2.0.1 क़ 2" (10) could still end the input; the period after the
    # second "2" is output text whatever follows, so it pushes the text past the window.
    ("...\n2.0.1 \u00a0\u0915\u093c \u00a02.0.1 \u00a0", SMALL, {"en": 24}, [(17, "2.0.1 \u0915\u093c")]),
    # A boundary right after a title is used only when nothing else is left, so
    # only the end of the input can end this chunk: nothing comes out while feeding.
    ('Dr. Dr."" "Dr.', SMALL, {"en": 24}, []),
    # "Dr.Dr" reads as a dotted abbreviation: before "A", a sentence starter, its
    # period ends a sentence once "A" is known to be a whole word (the space after it).
    ('Dr. Dr.Dr. A Dr. "Dr.', PAUSING, {"en": 40}, [(13, "Dr. Dr.Dr.")]),
]


@pytest.mark.parametrize("text, profile, limits, expected", EMITTED_AT_CASES)
def test_a_chunk_comes_out_on_the_character_that_makes_it_certain(text, profile, limits, expected) -> None:
    assert emitted_at(text, profile, limits) == expected


def test_a_period_before_a_lowercase_word_is_not_an_end() -> None:
    ch = Chunker()
    assert ch.feed("It was 7 p.m. and") == []
    assert texts(ch.flush()) == ["It was 7 p.m. and"]


def test_question_and_exclamation_marks_wait_only_for_the_next_letter() -> None:
    ch = Chunker()
    assert ch.feed("Are you there? ") == []  # "Yahoo! last spring": a lowercase word continues
    assert texts(ch.feed("H")) == ["Are you there?"]
    ch = Chunker()
    assert ch.feed("He joined Yahoo! ") == []
    assert ch.feed("l") == []


# -- later chunks ------------------------------------------------------------------

def test_later_chunks_prefer_a_sentence_end_near_the_target() -> None:
    # first chunk "One," then: sentence end at 14, clause at 19, more text beyond 40.
    text = "One, two three four. Five, six seven eight nine ten eleven twelve thirteen"
    chunks = split_text(text, SMALL, char_limits=SMALL_LIMITS)
    assert texts(chunks)[:2] == ["One,", "two three four."]
    assert chunks[1].cut == "sentence"


def test_a_sentence_end_from_a_quarter_of_the_target_beats_a_later_clause_mark() -> None:
    text = "One, aa bbb. Cccc dddd, eeee ffff gggg hhhh iiii jjjj kkkk"
    assert texts(split_text(text, SMALL, char_limits=SMALL_LIMITS))[1] == "aa bbb."


def test_a_very_short_sentence_end_loses_to_a_clause_mark_near_the_target() -> None:
    text = "One, Hi. Aaaa bbbb ccc, dddd eeee ffff gggg hhhh iiii jjjj"
    assert texts(split_text(text, SMALL, char_limits=SMALL_LIMITS))[1] == "Hi. Aaaa bbbb ccc,"


def test_without_punctuation_near_the_target_the_search_extends_to_twice_the_target() -> None:
    text = "One, aaaa bbbb cccc dddd eeee ffff, gggg hhhh iiii jjjj kkkk llll mmmm"
    chunks = split_text(text, SMALL, char_limits=SMALL_LIMITS)
    assert texts(chunks)[1] == "aaaa bbbb cccc dddd eeee ffff,"
    assert chunks[1].cut == "clause"


def test_no_punctuation_within_twice_the_target_cuts_at_a_word_and_warns(caplog) -> None:
    text = "One, " + " ".join(["word"] * 30)
    caplog.set_level(logging.WARNING, logger="xtts_stream.chunker")
    ch = Chunker(SMALL, "en", stream="s7", char_limits=SMALL_LIMITS)
    chunks = ch.feed(text) + ch.flush()
    assert chunks[1].text == "word word word word"  # the last word boundary within the target (20)
    assert chunks[1].cut == "word"
    warnings = [r.getMessage() for r in caplog.records if "word boundary" in r.getMessage()]
    assert warnings and all("s7" in w for w in warnings)
    assert f"offset {chunks[1].end}" in warnings[0]


def test_natural_pauses_skip_clause_marks_for_a_sentence_end() -> None:
    pausing = Profile(name="pause", first_chunk_max_chars=5, chunk_target_chars=20, chars_per_second=1.0,
                      natural_pause_after_s=1.0)
    text = "One, aaaa bbbb cccc, dddd eeee ffff gggg hhhh. Iiii"
    normal = split_text(text, SMALL, char_limits=SMALL_LIMITS)
    paused = split_text(text, pausing, char_limits=SMALL_LIMITS)
    assert normal[1].text == "aaaa bbbb cccc,"
    assert paused[1].text == "aaaa bbbb cccc, dddd eeee ffff gggg hhhh."


def test_the_first_chunk_falls_back_to_the_last_word_within_twice_the_first_size() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve, thirteen"
    assert first_chunk(text) == "one two three four five six seven eight"  # 40 = 2 x 20


def test_chunks_never_exceed_the_engine_limit_and_never_split_words() -> None:
    words = ["palavra", "comprida", "sem", "pontua\u00e7\u00e3o", "alguma"] * 60
    text = " ".join(words)
    chunks = split_text(text, "cinematic", "pt")
    assert all(len(c.text) <= 203 for c in chunks)
    assert all(c.end == len(text) or text[c.end] == " " for c in chunks)
    check_spans(text, chunks, 203)


def test_a_word_longer_than_the_limit_is_the_only_cut_inside_a_word() -> None:
    text = "Look: " + "x" * 70 + " done."
    chunks = split_text(text, SMALL, char_limits={"en": 30})
    assert texts(chunks) == ["Look:", "x" * 30, "x" * 30, "x" * 10 + " done."]
    assert [c.cut for c in chunks] == ["clause", "hard", "hard", "end"]
    check_spans(text, chunks, 30)


def test_cjk_text_without_marks_is_cut_between_characters() -> None:
    text = "\u4f60" * 200
    chunks = split_text(text, "fast", "zh")
    assert all(len(c.text) <= 82 for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert {c.cut for c in chunks[1:-1]} == {"word"}


# -- nothing speakable -----------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n", "\U0001f600\U0001f389", "!!! ... ?", "\u2014 \u2026 \u00ab\u00bb",
                                  "\u200b\u200d\ufe0f"])
def test_a_text_with_nothing_speakable_gives_no_chunks(text: str) -> None:
    assert split_text(text) == []


def test_an_unspeakable_stretch_cut_on_its_own_yields_no_chunk() -> None:
    text = "!!! \U0001f389, Hello there, friend."
    chunks = split_text(text)
    assert texts(chunks) == ["Hello there,", "friend."]
    assert chunks[0].index == 0 and chunks[0].start == text.index("Hello")
    check_spans(text, chunks)


def test_an_unspeakable_stretch_inside_a_span_is_kept_out_of_the_text() -> None:
    text = "Hello there, friend. \U0001f389\U0001f389 !!!"
    chunks = split_text(text)
    assert texts(chunks) == ["Hello there,", "friend. !!!"]
    assert chunks[-1].end == len(text)


def test_unspeakable_characters_inside_a_chunk_are_dropped_from_its_text() -> None:
    text = "\U0001f600 Hello \U0001f44d\U0001f3fd there, friend."
    chunks = split_text(text)
    assert chunks[0].start == 0 and chunks[0].text == "Hello there,"


# -- configuration and errors ---------------------------------------------------------

def test_profile_by_name_or_object_and_explicit_limits() -> None:
    assert Chunker("cinematic").profile.name == "cinematic"
    assert Chunker(SMALL).profile is SMALL
    assert Chunker("fast", "pt-BR").limit == 203
    assert Chunker("fast", "en", char_limits={"en": 99}).limit == 99
    assert Chunker("fast", "xx", char_limits={"en": 99}).limit == engine_limits.DEFAULT_CHAR_LIMIT


@pytest.mark.parametrize("kwargs, error", [
    ({"profile": "nope"}, SettingsError),
    ({"profile": 3}, TypeError),
    ({"language": ""}, ValueError),
    ({"char_limits": {"en": 0}}, ValueError),
    ({"char_limits": {"en": "250"}}, ValueError),
])
def test_bad_arguments_are_clear_errors(kwargs, error) -> None:
    with pytest.raises(error):
        Chunker(**kwargs)


def test_feed_checks_its_input_and_the_end_of_input() -> None:
    ch = Chunker()
    with pytest.raises(TypeError):
        ch.feed(b"bytes")
    assert ch.feed("Hi") == []
    assert texts(ch.flush()) == ["Hi"]
    assert ch.flush() == []
    with pytest.raises(RuntimeError):
        ch.feed("more")


@pytest.mark.parametrize("spans, message", [
    ([(0, 5), (3, 9)], "overlapping"),
    ([(0, 5), (13, 18)], "belongs to no chunk"),
    ([(0, 6), (7, 12)], "whitespace"),
])
def test_check_spans_rejects_bad_spans(spans, message) -> None:
    text = "Hello world, again"
    chunks = [Chunk(i, text[a:b].strip(), a, b) for i, (a, b) in enumerate(spans)]
    with pytest.raises(ValueError, match=message):
        check_spans(text, chunks)


# -- engine limits from coqui-tts ---------------------------------------------------------

def test_parsed_limits_match_the_tokenizer() -> None:
    tokenizer = pytest.importorskip("TTS.tts.layers.xtts.tokenizer")
    assert dict(engine_limits.xtts_char_limits()) == tokenizer.VoiceBpeTokenizer().char_limits


def test_reading_the_limits_imports_neither_torch_nor_coqui() -> None:
    code = ("import sys, pipeline.text.chunker as c, pipeline.text.limits as e\n"
            "assert e.xtts_char_limits(), 'table not found'\n"
            "c.split_text('Hello there, world.')\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m == 'TTS' or m.startswith(('torch.', 'TTS.')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_without_coqui_every_language_gets_the_default_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(engine_limits.importlib.util, "find_spec", lambda name: None)
    engine_limits.xtts_char_limits.cache_clear()
    caplog.set_level(logging.INFO, logger="xtts_stream.text.limits")
    try:
        assert engine_limits.char_limit("pt") == engine_limits.DEFAULT_CHAR_LIMIT
        assert engine_limits.char_limit("ja") == engine_limits.DEFAULT_CHAR_LIMIT
        assert sum("not installed" in r.getMessage() for r in caplog.records) == 1
    finally:
        engine_limits.xtts_char_limits.cache_clear()


def test_parse_char_limits_reads_the_literal_and_rejects_its_absence() -> None:
    source = "class T:\n    def __init__(self):\n        self.char_limits = {'en': 250, 'pt': 203}\n"
    assert engine_limits.parse_char_limits(source) == {"en": 250, "pt": 203}
    with pytest.raises(ValueError):
        engine_limits.parse_char_limits("limits = {'en': 250}\n")
