"""Clean-up of the engine's text: what is normalised, dropped and kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text.clean import clean, is_speakable, replacement

CASES = [
    ("  a \n\t b  ", "a b"),
    ("one\u00a0\u2009two", "one two"),
    ("\u201cHi\u201d \u2018x\u2019 \u00abol\u00e1\u00bb \u201eja\u201c", "\"Hi\" 'x' \"ol\u00e1\" \"ja\""),
    ("it\u2019s", "it's"),
    ("pages 1\u20132", "pages 1-2"),
    ("well\u2014maybe", "well - maybe"),
    ("a \u2014 b", "a - b"),
    ("wait\u2026 what", "wait... what"),
    ("Hi \U0001f600 there", "Hi there"),
    ("thumbs \U0001f44d\U0001f3fd up", "thumbs up"),
    ("go \U0001f1e7\U0001f1f7!", "go !"),
    ("1\ufe0f\u20e3 first", "1 first"),
    ("family \U0001f468\u200d\U0001f469\u200d\U0001f467 here", "family here"),
    ("a\x00b\x07c", "abc"),
    ("a\u200bb", "ab"),
    ("x\ue000y", "xy"),
    ("R$ 1.299,90 e 50% a 25\u00b0C, \u2116 5", "R$ 1.299,90 e 50% a 25\u00b0C, \u2116 5"),
    ("cafe\u0301", "caf\u00e9"),
    ("\u0958", "\u0915\u093c"),
    ("\u4f60\u597d\u3002 \u0645\u0631\u062d\u0628\u0627 \u0928\u092e\u0938\u094d\u0924\u0947", "\u4f60\u597d\u3002 \u0645\u0631\u062d\u0628\u0627 \u0928\u092e\u0938\u094d\u0924\u0947"),
    ("a^b `c` ~d", "a^b `c` ~d"),
    ("\U0001f600 \U0001f389", ""),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_clean(text: str, expected: str) -> None:
    assert clean(text) == expected


@pytest.mark.parametrize("text, speakable", [
    ("", False), ("   ", False), ("\U0001f600!!! ...", False), ("_", False), ("\u00ab\u00bb", False),
    ("a", True), ("7", True), ("\u0661", True), ("\u4f60", True), ("\U0001f600 ok", True),
])
def test_is_speakable(text: str, speakable: bool) -> None:
    assert is_speakable(text) is speakable


def test_replacement_is_per_character() -> None:
    assert replacement("\u2026") == "..."
    assert replacement("\t") == " "
    assert replacement("\U0001f600") == ""
    assert replacement("x") == "x"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_cleaning_is_stable_and_keeps_what_is_speakable(text: str) -> None:
    out = clean(text)
    assert clean(out) == out
    assert out == out.strip() and "  " not in out
    assert is_speakable(out) == is_speakable(text)
    # The chunker counts length per character before composing: never an underestimate.
    tracked = " ".join("".join(replacement(ch) for ch in text).split())
    assert len(out) <= len(tracked)
