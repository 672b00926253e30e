"""Listen to the seams: real speech through the whole service, transcribed by Whisper.

The worker is told to replay every chunk's pieces after the chunk ends (the
`duplicate_chunks` fault); only the reassembler stands between that and the
listener hearing each phrase twice.
"""

from __future__ import annotations

import numpy as np
import pytest

from hearing import in_order_matches, load_whisper, repeats, transcribe, words
from pipeline.demo import SAMPLE
from pipeline.processes.service_process import ServiceProcess
from pipeline.text.chunker import split_text
from service_support import run, speak

pytestmark = pytest.mark.slow

LONGER = ("We walked down to the harbour at dawn, when the water was still and grey. A fisherman was mending "
          "his nets beside a blue boat, and he told us that the storm had passed in the night. The gulls were "
          "loud, the bread was warm, and nobody wanted to leave the little town by the sea.")


@pytest.fixture(scope="module")
def whisper():
    return load_whisper()


@pytest.fixture(scope="module")
def duplicating_service():
    svc = ServiceProcess("--engine", "piper", env={"XTTS_STREAM_FAULTS": "duplicate_chunks"}).start()
    yield svc
    svc.stop()


def test_no_word_is_heard_twice_at_a_seam(duplicating_service, whisper):
    said_all, heard_all = [], []
    for text in (SAMPLE, LONGER):
        assert len(split_text(text)) >= 2, "the text must cross chunk seams"
        out = run(speak(duplicating_service.endpoint, text))
        assert out.error is None
        out.assert_in_order()
        assert out.metrics["violations"].get("duplicate", 0) > 0, "the fault must have sent copies"
        heard = words(transcribe(whisper, out.pcm, out.sample_rate))
        said = words(text)
        assert repeats(heard, said) == [], f"heard a repeat in: {' '.join(heard)}"
        said_all += said
        heard_all += heard
    recall = in_order_matches(said_all, heard_all) / len(said_all)
    assert recall >= 0.9, f"only {recall:.0%} of the words came back in order: {' '.join(heard_all)}"


def test_the_check_hears_a_chunk_played_twice(duplicating_service, whisper):
    """What a reassembler that let the copies through would produce is caught."""
    first = split_text(SAMPLE)[0]
    once = run(speak(duplicating_service.endpoint, first.text))
    whole = run(speak(duplicating_service.endpoint, SAMPLE))
    doubled = np.concatenate([once.pcm, whole.pcm])
    heard = words(transcribe(whisper, doubled, whole.sample_rate))
    assert repeats(heard, words(SAMPLE)), f"a doubled first chunk went unheard: {' '.join(heard)}"
