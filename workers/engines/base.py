"""The engine seam: what the worker's synthesis loop needs from any TTS engine.

An engine is fed jobs (one text chunk each) and advanced with `step()`, which
does a bounded amount of work and returns what it produced. A step-shaped
interface lets a batching engine advance many jobs at once while a simple one
finishes one job per step; the worker loop stays the same for both.

This module imports neither torch nor coqui-tts, so the coordinator side and the
tests can name these types cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class SynthJob:
    """One chunk of one stream to synthesize."""

    stream: str
    epoch: int
    chunk_index: int
    text: str
    language: str = "en"
    voice: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    # Lower runs first: a stream's first chunk beats chunks far ahead of playback.
    priority: int = 0
    # Set by the benchmark's length policy only: force this many audio tokens.
    forced_tokens: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.stream, self.epoch, self.chunk_index)


@dataclass
class PieceOut:
    """Audio the engine produced for a job: int16 mono PCM at the engine's rate.

    `sample_offset` counts from the start of the job's chunk; pieces of one job
    come in order, contiguous, and the last one has `final=True`.
    """

    job: SynthJob
    piece_index: int
    sample_offset: int
    samples: np.ndarray
    final: bool


@dataclass
class JobFailed:
    """A job that cannot be synthesized; the engine stays usable for others."""

    job: SynthJob
    message: str


class EngineError(RuntimeError):
    """The engine cannot start or cannot go on at all (not one bad job)."""


@dataclass
class EngineInfo:
    engine: str  # "piper", "xtts-fast", "xtts-stock"
    model: str
    sample_rate: int
    dtype: str
    device: str
    char_limits: dict[str, int] = field(default_factory=dict)


class Engine(Protocol):
    info: EngineInfo

    def warm_up(self) -> None:
        """Run a first-chunk-sized synthesis so the first request pays no warm-up."""

    def add(self, job: SynthJob) -> None:
        """Queue a job; it is started by a later `step()`."""

    def cancel(self, stream: str, below_epoch: int | None = None) -> int:
        """Drop queued and running jobs of a stream (all, or those of an older epoch)."""

    def has_work(self) -> bool:
        ...

    def step(self) -> list[PieceOut | JobFailed]:
        """Do a bounded amount of work (one piece's worth per running job)."""

    def close(self) -> None:
        ...


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to little-endian int16, clipping rather than wrapping."""
    if samples.dtype == np.int16:
        return samples.astype("<i2", copy=False)
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2")
