"""Chunk sizes that keep a chunk-level engine ahead of playback (issue 12, item 3, the chunker's side).

With ``engine_chars_per_s`` (an engine such as Piper that synthesises a chunk
whole, at that many characters per second), chunk k > 0 is kept small enough
that the engine finishes chunks 1..k before the audio of chunks 0..k-1 (at the
profile's ``chars_per_second``), or the pre-buffer if that is longer, has
played out; never below the profile's first-chunk size, never inside a word.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.settings import Profile
from pipeline.text.budget import chunk_budget
from pipeline.text.chunker import Chunker, check_spans, resolve_profile, split_text
from tests.hypothesis_profiles import property_settings

FAST = resolve_profile("fast")  # F 20, target 120, 14 chars/s, pre-buffer 200 ms
CINEMATIC = resolve_profile("cinematic")  # F 60, target 200, 14 chars/s, pre-buffer 500 ms

BUDGET_CASES = [
    # profile, engine chars/s, spoken so far, chunk 0's length, budget for the next chunk
    (FAST, 100.0, 5, 5, 35),  # "Stop." is 0.357 s of audio: 35 characters at 100/s
    (FAST, 100.0, 40, 5, 250),  # 40 characters queued: 2.86 s, of which chunk 1 (35) took 0.35 s
    (FAST, 200.0, 2, 2, 40),  # "Hi" is shorter than the 200 ms pre-buffer, which counts instead
    (FAST, 10.0, 5, 5, 20),  # a slow engine: never below the first-chunk size
    (CINEMATIC, 300.0, 5, 5, 150),  # 500 ms pre-buffer
    (CINEMATIC, 300.0, 165, 5, 3375),
]


@pytest.mark.parametrize("profile, speed, spoken, first, expected", BUDGET_CASES)
def test_the_budget_is_what_the_engine_can_make_while_the_queued_audio_plays(profile, speed, spoken, first,
                                                                             expected) -> None:
    assert chunk_budget(profile, speed, spoken, first) == expected


STORY = ("Stop. The caravan moved slowly over the hills while the light faded behind the old mill, and the "
         "riders talked quietly about the long road that still lay ahead of them before the winter came, "
         "the rivers froze and the passes closed for months.")


def test_after_a_short_first_chunk_the_next_ones_start_small_and_grow() -> None:
    chunks = split_text(STORY, "fast", "en", engine_chars_per_s=100.0)
    sizes = [len(c.text) for c in chunks]
    assert chunks[0].text == "Stop."
    assert sizes[1] <= 35 < sizes[2]  # 0.357 s of audio queued: 35 characters at 100/s
    streaming = split_text(STORY, "fast", "en")
    assert len(streaming[1].text) > 35  # a streaming engine is not held back


@pytest.mark.parametrize("text", [STORY, "Hello there, how are you? " * 20, "x" * 600])
@pytest.mark.parametrize("profile", ["fast", "cinematic"])
def test_a_streaming_engine_or_a_very_fast_one_gets_the_same_chunks(profile, text) -> None:
    plain = split_text(text, profile, "en")
    assert split_text(text, profile, "en", engine_chars_per_s=None) == plain
    assert split_text(text, profile, "en", engine_chars_per_s=1e6) == plain


def test_a_first_word_longer_than_the_budget_is_not_cut() -> None:
    text = "Stop. Incomprehensibilities notwithstanding everything went well."
    chunks = split_text(text, "fast", "en", engine_chars_per_s=10.0)  # budget: the floor, 20
    assert chunks[1].text == "Incomprehensibilities" and chunks[1].cut == "word"


@pytest.mark.parametrize("bad", [0, -5.0, math.nan, math.inf, "100", True])
def test_a_bad_engine_speed_is_a_clear_error(bad) -> None:
    with pytest.raises(ValueError, match="engine_chars_per_s"):
        Chunker("fast", "en", engine_chars_per_s=bad)


def test_fed_in_pieces_the_budgeted_chunks_are_the_same() -> None:
    chunker = Chunker("fast", "en", engine_chars_per_s=60.0)
    out = [c for pos in range(0, len(STORY), 3) for c in chunker.feed(STORY[pos:pos + 3])] + chunker.flush()
    assert out == split_text(STORY, "fast", "en", engine_chars_per_s=60.0)


# -- the property -----------------------------------------------------------------------------------

SMALL = Profile(name="small", first_chunk_max_chars=6, chunk_target_chars=40, natural_pause_after_s=1000.0,
                prebuffer_ms=100)
WORDS = ["the", "caravan", "moved", "over", "hills", "and", "light", "spilled", "que", "casa", "rio", "went",
         "an", "long", "road", "ahead", "of", "them", "winter", "mill", "x" * 25, "incomprehensibly"]


@st.composite
def plain_texts(draw) -> str:
    """Ordinary words, commas and sentences (no abbreviations: every space is a possible cut)."""
    out, end = [], "."
    for _ in range(draw(st.integers(1, 120))):
        word = draw(st.sampled_from(WORDS))
        if end == "." or draw(st.integers(0, 9)) == 0:
            word = word.capitalize()
        end = draw(st.sampled_from(["", "", "", "", "", ",", "."]))
        out.append(word + end)
    return " ".join(out)


@property_settings(300)
@given(text=plain_texts(), speed=st.sampled_from([8.0, 25.0, 60.0, 150.0, 600.0]),
       profile=st.sampled_from([FAST, CINEMATIC, SMALL]), language=st.sampled_from(["en", "pt"]))
def test_every_later_chunk_fits_the_engine_budget_unless_it_cannot_be_cut_smaller(text, speed, profile,
                                                                                   language) -> None:
    chunks = split_text(text, profile, language, engine_chars_per_s=speed)
    check_spans(text, chunks, Chunker(profile, language).limit)
    sizes = [len(c.text) for c in chunks]
    for k in range(1, len(chunks)):
        synth_s = sum(sizes[1:k + 1]) / speed  # the engine's time for chunks 1..k, from chunk 0's arrival
        queued_s = max(sum(sizes[:k]) / profile.chars_per_second, profile.prebuffer_ms / 1000)
        if synth_s <= queued_s + 1e-9 or sizes[k] <= profile.first_chunk_max_chars:
            continue
        # Over budget: only when no cut fits, i.e. the chunk's first word is already too long.
        allowed = chunk_budget(profile, speed, sum(sizes[:k]), sizes[0])
        first_space = chunks[k].text.find(" ")
        assert first_space == -1 or first_space > allowed, (k, chunks[k], allowed)
