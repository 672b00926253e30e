"""Fewer and better cuts between words (issue 12, item 2), in English and Portuguese.

Later chunks extend to a clause or sentence mark anywhere within the engine's
limit before they cut between words; a cut between words goes right before a
function word ("and", "that", "e", "que"...) in the second half of the window
when there is one (cut "phrase"), else after the last word that fits ("word").
"""

from __future__ import annotations

import pytest

from pipeline.settings import Profile
from pipeline.text.chunker import Chunker, check_spans, split_text

# First window 10; later chunks: target 20, so "the second half" is [10, 20]; engine limit 60.
SMALL = Profile(name="small", first_chunk_max_chars=5, chunk_target_chars=20, natural_pause_after_s=1000.0)
LIMITS = {"en": 60, "pt": 60}

# (language, text, the second chunk, its cut)
LATER_CHUNK_CASES = [
    # a clause mark past twice the target but within the limit beats a word cut
    ("en", "One, aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk, llll mmmm",
     "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk,", "clause"),
    ("pt", "Um, aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk. Llll mmmm",
     "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk.", "sentence"),
    # no mark within the limit: before a function word in [10, 20] ...
    ("en", "One, aaaa bbbbbb that cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm", "aaaa bbbbbb", "phrase"),
    ("en", "One, aaaa bbbb cccc and dd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm", "aaaa bbbb cccc", "phrase"),
    ("en", "One, aaaa bbbb cc through eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm", "aaaa bbbb cc", "phrase"),
    ("pt", "Um, aaaa bbbbbb que cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm", "aaaa bbbbbb", "phrase"),
    ("pt", "Um, aaaa bbbb ccc e ddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm", "aaaa bbbb ccc", "phrase"),
    ("pt", "Um, aaaa bbbb cc at\u00e9 eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm", "aaaa bbbb cc", "phrase"),
    # ... and not between two function words ("e | quando", "and | when"): the first one leads
    ("pt", "Um, aaaa bbbbbb e quando cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa bbbbbb", "phrase"),
    ("en", "One, aaaa bbbbbb and when cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa bbbbbb", "phrase"),
    # ... not in the first half (too short a chunk), not a longer word that starts like one
    ("en", "One, aaaa and bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa and bbbb cccc", "word"),
    ("en", "One, aaaa bbbbbb andes cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa bbbbbb andes cc", "word"),
    ("pt", "Um, aaaa bbbbbb quente cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa bbbbbb quente", "word"),
    # "de" and "of" are left out on purpose: they sit inside a noun phrase ("casa de pedra")
    ("pt", "Um, aaaa bbbbbb de cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa bbbbbb de cc", "word"),
    ("en", "One, aaaa bbbbbb of cc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll", "aaaa bbbbbb of cc", "word"),
]


@pytest.mark.parametrize("language, text, expected, cut", LATER_CHUNK_CASES)
def test_later_chunks_prefer_marks_then_a_cut_before_a_function_word(language, text, expected, cut) -> None:
    chunks = split_text(text, SMALL, language, LIMITS)
    assert (chunks[1].text, chunks[1].cut) == (expected, cut)
    check_spans(text, chunks, 60)


# The first chunk falls back to a word cut too (fast: window 40, second half [20, 40]).
FIRST_CHUNK_CASES = [
    ("en", "The otherworldly light spilled over the hills as the caravan moved on",
     "The otherworldly light spilled", "phrase"),
    ("en", "Everybody in the village knew that the old mill was haunted", "Everybody in the village knew", "phrase"),
    ("pt", "A luz estranha caiu sobre as colinas enquanto a caravana seguia", "A luz estranha caiu sobre as colinas",
     "phrase"),
    ("pt", "Todo mundo na aldeia sabia que o velho moinho era assombrado", "Todo mundo na aldeia sabia", "phrase"),
    ("en", "Supercalifragilistic expialidocious words everywhere", "Supercalifragilistic expialidocious", "word"),
]


@pytest.mark.parametrize("language, text, expected, cut", FIRST_CHUNK_CASES)
def test_a_first_chunk_without_marks_cuts_before_a_function_word(language, text, expected, cut) -> None:
    first = split_text(text, "fast", language)[0]
    assert (first.text, first.cut) == (expected, cut)


def test_a_word_that_may_become_a_function_word_is_read_whole() -> None:
    # An engine speed that caps the second chunk at 20 characters (4 characters of
    # audio queued, at 70 characters per second of synthesis), so no mark can come
    # after the window: once " an" arrives, only "an" (it may become "and") is open.
    def chunker() -> Chunker:
        return Chunker(SMALL, "en", char_limits=LIMITS, engine_chars_per_s=70.0)
    ch = chunker()
    assert [c.text for c in ch.feed("One, aaaa bbbb cccc ddd an")] == ["One,"]
    assert ch.feed("d") == []  # "and", or "andes"?
    assert [(c.text, c.cut) for c in ch.feed(" ")] == [("aaaa bbbb cccc ddd", "phrase")]
    ch = chunker()
    ch.feed("One, aaaa bbbb cccc ddd an")
    assert [(c.text, c.cut) for c in ch.feed("t")] == [("aaaa bbbb cccc ddd", "word")]


def test_phrase_cuts_warn_like_word_cuts(caplog) -> None:
    caplog.set_level("WARNING", logger="xtts_stream.chunker")
    chunker = Chunker(SMALL, "en", stream="s9", char_limits=LIMITS)
    chunker.feed(LATER_CHUNK_CASES[2][1])
    chunker.flush()
    assert any("s9" in r.getMessage() and "word boundary" in r.getMessage() for r in caplog.records)
