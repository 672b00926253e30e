"""feed() must cost O(new text): checked by counting work, not by timing.

Work is the number of Python lines the chunker's modules execute plus the
characters their regular expressions read. A rule that re-read the whole
pending text on each delta (a long word, a run of marks or spaces, a stretch
of emoji) would make the work for a text four times as long about sixteen
times as large; linear work makes it about four times.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

import pipeline.text.chunker
import pipeline.text.clean
import pipeline.text.rules
from pipeline.text.chunker import Chunker, split_text

MODULES = (pipeline.text.chunker, pipeline.text.rules, pipeline.text.clean)
FILES = {str(Path(m.__file__).resolve()) for m in MODULES}


class CountingPattern:
    """A compiled pattern that adds the characters each call reads to a counter."""

    def __init__(self, pattern: re.Pattern, counter: list[int]) -> None:
        self._pattern, self._counter = pattern, counter

    def _count(self, m, string: str, pos: int, endpos: int | None) -> None:
        end = len(string) if endpos is None else min(endpos, len(string))
        self._counter[0] += (m.end() - pos if m else 0) + (1 if (m is None or m.end() < end) else 0)

    def match(self, string, pos=0, endpos=None):
        m = self._pattern.match(string, pos, sys.maxsize if endpos is None else endpos)
        self._count(m, string, pos, endpos)
        return m

    def fullmatch(self, string, pos=0, endpos=None):
        m = self._pattern.fullmatch(string, pos, sys.maxsize if endpos is None else endpos)
        self._counter[0] += (len(string) if endpos is None else min(endpos, len(string))) - pos
        return m

    def search(self, string, pos=0, endpos=None):
        m = self._pattern.search(string, pos, sys.maxsize if endpos is None else endpos)
        self._counter[0] += (m.end() if m else len(string)) - pos
        return m

    def sub(self, repl, string, count=0):
        self._counter[0] += len(string)
        return self._pattern.sub(repl, string, count)


@pytest.fixture
def work(monkeypatch):
    """A function that runs a callable and returns the work it did."""
    counter = [0]
    for module in MODULES:
        for name, value in list(vars(module).items()):
            if isinstance(value, re.Pattern):
                monkeypatch.setattr(module, name, CountingPattern(value, counter))
    logging.getLogger("xtts_stream.chunker").setLevel(logging.ERROR)

    def tracer(frame, event, arg):
        if frame.f_code.co_filename not in FILES:
            return None
        if event == "line":
            counter[0] += 1
        return tracer

    def measure(fn) -> int:
        counter[0] = 0
        old = sys.gettrace()
        sys.settrace(tracer)
        try:
            fn()
        finally:
            sys.settrace(old)
        return counter[0]

    yield measure
    logging.getLogger("xtts_stream.chunker").setLevel(logging.NOTSET)


def feed_in(text: str, size: int, language: str = "en", **kwargs) -> None:
    chunker = Chunker("fast", language, **kwargs)
    for pos in range(0, len(text), size):
        chunker.feed(text[pos:pos + size])
    chunker.flush()


PROSE = ("At 6 a.m. Mr. Lee opened the shop in the U.S. Navy yard, and the light spilled over the hills "
         "as the caravan moved on without a word. 1. Preheat the oven. He joined Yahoo! last spring. ")

# Texts of length about n: each one once stressed a rule that could re-read pending text.
SHAPES = {
    "one long word": lambda n: "x" * n,
    "a run of periods": lambda n: "." * n,
    "a run of question marks": lambda n: "Why" + "?" * n + " x",
    "a run of spaces inside a chunk": lambda n: "Hello " + " " * n + "there.",
    "a run of spaces after a title": lambda n: "Dr." + " " * n + "Silva",
    "a run of opening brackets after a title": lambda n: "Dr. " + "(" * n + "x",
    "a run of closing quotes": lambda n: "Hi." + '"' * n + " A",
    "a stretch of emoji": lambda n: "Hi " + "\U0001f600" * (n // 2) + " there",
    "combining marks": lambda n: "a" + "\u0301" * n,
    "a capital word after an abbreviation": lambda n: "the U.S. T" + "h" * n,
    "words without punctuation": lambda n: ("an " * n)[:n],
    "prose": lambda n: (PROSE * (n // len(PROSE) + 1))[:n],
}
N = 3000


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("delta", [1, 7, None], ids=["char", "7 chars", "whole"])
def test_feed_work_grows_linearly_with_the_text(work, shape: str, delta: int | None) -> None:
    make = SHAPES[shape]
    small, large = make(N), make(4 * N)
    cost_small = work(lambda: feed_in(small, delta or len(small)))
    cost_large = work(lambda: feed_in(large, delta or len(large)))
    # Linear: about 4x (plus constant costs); quadratic would be about 16x.
    assert cost_large <= 5 * cost_small + 2000, (shape, cost_small, cost_large)


def test_the_counter_sees_a_quadratic_rescan(work) -> None:
    """The measure itself works: a chunker fed a text re-fed from the start each time costs quadratically."""
    def rescanning(text: str) -> None:
        for end in range(0, len(text) + 1, 50):
            split_text(text[:end])
    small, large = "x" * 1000, "x" * 4000
    assert work(lambda: rescanning(large)) > 10 * work(lambda: rescanning(small))


def test_a_100000_character_word_is_cut_hard_at_the_limit_and_nothing_is_lost() -> None:
    text = "x" * 100_000
    chunker = Chunker("fast", "en")
    chunks = chunker.feed(text) + chunker.flush()
    assert len(chunks) == 400 and {c.cut for c in chunks[:-1]} == {"hard"}
    assert "".join(c.text for c in chunks) == text
