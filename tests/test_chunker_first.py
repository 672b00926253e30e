"""The first chunk ends only where a sentence or a clause really ends (issue 12, item 1).

Each class of false sentence end the first chunk once made, in English and
Portuguese, with a control case that must still cut; then a property: over
random texts, the first chunk never ends right after an initial, a listed
abbreviation before a capitalised continuation, or a leading list marker.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.settings import Profile
from pipeline.text.chunker import Chunker, check_spans, split_text
from pipeline.text.rules import rules_for
from tests.hypothesis_profiles import property_settings

# (language, text, the first chunk)
INITIALS = [
    ("en", "Anna K. Berg arrived late, as usual.", "Anna K. Berg arrived late,"),
    ("en", "J.K. Rowling wrote it, they say.", "J.K. Rowling wrote it,"),
    ("en", "George R. R. Martin wrote it, slowly.", "George R. R. Martin wrote it,"),
    ("en", "Ask W. Smith. He knows, I think.", "Ask W. Smith."),  # control: "Smith." ends it
    ("pt", "Maria J. Souza chegou cedo, como sempre.", "Maria J. Souza chegou cedo,"),
    ("pt", "J.R. Guimar\u00e3es escreveu isso, dizem.", "J.R. Guimar\u00e3es escreveu isso,"),
    ("pt", "Fale com a Ana P. Lima. Ela sabe, acho.", "Fale com a Ana P. Lima."),
]
ABBREVIATIONS = [
    ("en", "He served in the U.S. Navy for years, then left.", "He served in the U.S. Navy for years,"),
    ("en", "At 6 a.m. Mr. Lee opened the shop, as always.", "At 6 a.m. Mr. Lee opened the shop,"),
    ("en", "The U.K. Parliament met, briefly.", "The U.K. Parliament met,"),
    ("en", "We live on Main St. Near the park, mostly.", "We live on Main St. Near the park,"),
    ("en", "Apple Inc. Shares rose today, again.", "Apple Inc. Shares rose today,"),
    # controls: a word that usually starts a sentence ends it
    ("en", "He moved to the U.S. Then he left, sadly.", "He moved to the U.S."),
    ("en", "He works at Acme Inc. It is small, but fine.", "He works at Acme Inc."),
    ("en", "Bring pens etc. The rest is here, somewhere.", "Bring pens etc."),
    ("pt", "No ano 300 a.C. Roma crescia, lentamente.", "No ano 300 a.C. Roma crescia,"),
    ("pt", "A Vale S.A. Minera\u00e7\u00e3o cresceu, diz o jornal.", "A Vale S.A. Minera\u00e7\u00e3o cresceu,"),
    ("pt", "A loja da Silva Ltda. Fica no centro, perto.", "A loja da Silva Ltda. Fica no centro,"),
    ("pt", "Tudo isso foi em 300 a.C. Depois veio o resto.", "Tudo isso foi em 300 a.C."),
    ("pt", "Trouxe frutas etc. Ele trouxe o resto, claro.", "Trouxe frutas etc."),
]
LIST_MARKERS = [
    ("en", "1. Preheat the oven, then wait.", "1. Preheat the oven,"),
    ("en", "2.) Stir the sauce well, then serve.", "2.) Stir the sauce well,"),
    ("en", "a. First item in the list, and more.", "a. First item in the list,"),
    ("en", "\u2022 3. Serve it hot, with bread.", "\u2022 3. Serve it hot,"),
    ("en", "iv. Fourth point here, briefly.", "iv. Fourth point here,"),
    ("en", "- 12. Add salt, to taste.", "- 12. Add salt,"),
    ("en", "He scored 2. Then he left, happy.", "He scored 2."),  # control: not at the start
    ("pt", "1. Pr\u00e9-aque\u00e7a o forno, depois espere.", "1. Pr\u00e9-aque\u00e7a o forno,"),
    ("pt", "b. Segundo item da lista, e mais.", "b. Segundo item da lista,"),
    ("pt", "\u2022 2. Sirva quente, com p\u00e3o.", "\u2022 2. Sirva quente,"),
    ("pt", "Ele marcou 2. Depois saiu, feliz.", "Ele marcou 2."),
]
NUMBER_SIGNS = [
    ("en", "Room N\u00b0. 5 is free, come in.", "Room N\u00b0. 5 is free,"),
    ("en", "See No. 7 on the list, please.", "See No. 7 on the list,"),
    ("pt", "Casa n\u00ba. 12 fica ali, \u00e0 direita.", "Casa n\u00ba. 12 fica ali,"),
    ("pt", "N\u00ba. 7 \u00e9 a sala, \u00e0 esquerda.", "N\u00ba. 7 \u00e9 a sala,"),
]
BANG_BEFORE_LOWERCASE = [
    ("en", "He joined Yahoo! last spring, I think.", "He joined Yahoo! last spring,"),
    ("en", "\"Really?\" she asked, smiling.", "\"Really?\" she asked,"),
    ("en", "Stop! Then go, now.", "Stop!"),  # control
    ("en", "Are you awake? I am, sadly.", "Are you awake?"),  # control
    ("pt", "Ele entrou no Yahoo! em maio, acho.", "Ele entrou no Yahoo! em maio,"),
    ("pt", "\u00abS\u00e9rio?\u00bb perguntou ela, rindo.", "\"S\u00e9rio?\" perguntou ela,"),
    ("pt", "Pare! Depois siga, agora.", "Pare!"),
]
CASES = INITIALS + ABBREVIATIONS + LIST_MARKERS + NUMBER_SIGNS + BANG_BEFORE_LOWERCASE


@pytest.mark.parametrize("language, text, expected", CASES)
@pytest.mark.parametrize("profile", ["fast", "cinematic"])
def test_the_first_chunk_ends_at_a_real_sentence_or_clause_end(profile, language, text, expected) -> None:
    chunks = split_text(text, profile, language)
    assert chunks[0].text == expected
    check_spans(text, chunks)


@pytest.mark.parametrize("language, text, expected", CASES)
def test_fed_one_character_at_a_time_the_first_chunk_is_the_same(language, text, expected) -> None:
    chunker = Chunker("fast", language)
    out = [c for ch in text for c in chunker.feed(ch)] + chunker.flush()
    assert out == split_text(text, "fast", language)


def test_a_list_marker_leading_a_later_line_is_not_a_sentence_end() -> None:
    text = "Steps:\n1. Preheat the oven to two hundred degrees\n2. Stir the sauce well and serve it hot"
    chunks = split_text(text, "fast", "en")
    # Before, "2." before a capital was the last sentence end near the target, and the chunk ended there.
    assert [c.text for c in chunks] == ["Steps:", "1. Preheat the oven to two hundred degrees 2. Stir the sauce well "
                                                  "and serve it hot"]


def test_a_capitalised_word_after_an_abbreviation_is_read_whole_before_deciding() -> None:
    chunker = Chunker("fast", "en")
    assert chunker.feed("In the U.S. The") == []  # "The" or "Theodore"?
    assert chunker.feed("odore") == []
    assert [c.text for c in chunker.feed(" Park, ")] == ["In the U.S. Theodore Park,"]
    chunker = Chunker("fast", "en")
    assert chunker.feed("In the U.S. The") == []
    assert [c.text for c in chunker.feed(" ")] == ["In the U.S."]


def test_a_boundary_right_after_an_initial_is_a_last_resort() -> None:
    # No punctuation within the first window: the word cut avoids "Anna K." and "Dr.".
    text = "Dr. Anna K. Berg and Dr. Paul L. Costa went home together today without a word"
    first = split_text(text, "fast", "en")[0]
    assert first.text == "Dr. Anna K. Berg and Dr. Paul L. Costa" and first.cut == "word"


# -- the property -----------------------------------------------------------------------------------

SMALL = Profile(name="small", first_chunk_max_chars=8, chunk_target_chars=30, natural_pause_after_s=1000.0)
NAMES = ["Berg", "Navy", "Lee", "Silva", "Paulista", "Rowling", "Costa", "Army", "Lima", "Santos"]
WORDS = ["the", "a", "cat", "sat", "on", "mat", "and", "que", "casa", "went", "home", "Ana", "Tom", "red", "old"]
MARKERS = ["1.", "2.)", "12.", "a.", "B.", "iv.", "\u2022 3.", "- 4.", "(5.)"]


def _abbreviations(language: str) -> list[str]:
    rules = rules_for(language)
    plain = sorted(rules.abbreviations)[:12]
    return ["U.S.", "a.m.", "J.K.", "S.A."] + [w.capitalize() + "." for w in plain]


@st.composite
def trapped_texts(draw, language: str) -> tuple[str, list[int]]:
    """A text with initials, abbreviations and list markers, and the offsets right after each trap's mark."""
    parts, traps, size = [], [], 0

    def add(piece: str, trap: bool = False) -> None:
        nonlocal size
        parts.append(piece)
        size += len(piece)
        if trap:
            traps.append(size)

    if draw(st.booleans()):
        add(draw(st.sampled_from(MARKERS)), trap=True)
        add(" ")
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["word", "word", "word", "initial", "abbreviation", "comma", "line"]))
        if kind == "initial":
            add(draw(st.sampled_from("ABCDJKLMPRW")) + ".", trap=True)
            add(" " + draw(st.sampled_from(NAMES)))
        elif kind == "abbreviation":
            add(draw(st.sampled_from(_abbreviations(language))), trap=True)
            add(" " + draw(st.sampled_from(NAMES)))
        elif kind == "comma":
            add(draw(st.sampled_from(WORDS)) + ",")
        elif kind == "line":
            add("\n" + draw(st.sampled_from(MARKERS)), trap=True)
        else:
            add(draw(st.sampled_from(WORDS)))
        add(draw(st.sampled_from([" ", " ", "  ", "\n"])))
    add(draw(st.sampled_from(WORDS)) + ".")
    return "".join(parts), traps


@property_settings(300)
@given(data=st.data(), language=st.sampled_from(["en", "pt"]), profile=st.sampled_from(["fast", "cinematic", SMALL]))
def test_the_first_chunk_never_ends_right_after_an_initial_an_abbreviation_or_a_list_marker(data, language,
                                                                                             profile) -> None:
    text, traps = data.draw(trapped_texts(language))
    chunks = split_text(text, profile, language)
    assert chunks[0].end not in traps, (text, chunks[0])
