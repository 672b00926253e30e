"""The engine seam: what the worker's synthesis loop needs from any TTS engine.

An engine is fed jobs (one text chunk each) and advanced with `step()`, which
does a bounded amount of work and returns what it produced. A step-shaped
interface lets a batching engine advance many jobs at once while a simple one
finishes one job per step; the worker loop stays the same for both.

This module imports neither torch nor coqui-tts, so the coordinator side and the
tests can name these types cheaply.
"""

from __future__ import annotations

import time
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
    # The chunk's index in its stream: 0 is a first chunk, the one a listener waits for.
    priority: int = 0
    # Set by the benchmark's length policy only: force this many audio tokens.
    forced_tokens: int | None = None
    # time.monotonic() by which the stream's playback needs this job's first audio: earliest
    # deadline first. 0 = unknown (ordered by priority, then arrival).
    deadline: float = 0.0
    t_received: float = 0.0  # when the worker took the job
    t_started: float | None = None  # when the engine began synthesising it (set by the engine)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.stream, self.epoch, self.chunk_index)

    @property
    def order(self) -> tuple[float, int]:
        """Sort key: the most urgent job first."""
        return (self.deadline, self.priority)

    def started(self) -> None:
        if self.t_started is None:
            self.t_started = time.monotonic()


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
    engine: str  # "piper", "xtts-fast", "xtts-stock", "null"
    model: str
    sample_rate: int
    dtype: str
    device: str
    char_limits: dict[str, int] = field(default_factory=dict)
    voices: list[str] = field(default_factory=list)  # speaker names a request may pick
    capacity: int = 1  # jobs advanced together
    streaming: bool = True  # audio comes while a chunk is synthesised, not only at its end
    chars_per_s: float = 0.0  # characters synthesised per second, if the engine measured it


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

    # Optional: `next_ready_in() -> float | None`, seconds until step() will have something
    # (an engine that paces itself); `memory_bytes() -> int`, memory held on its device;
    # `sampling_bounds`, the sampling values it takes when they differ from a profile's
    # (`pipeline.settings.SAMPLING_BOUNDS`), checked by the worker before a job reaches it.


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to little-endian int16, clipping rather than wrapping."""
    if samples.dtype == np.int16:
        return samples.astype("<i2", copy=False)
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2")
