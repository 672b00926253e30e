"""The null engine: a tone at a set speed, no model, so the data path can be measured on any machine.

It behaves like a batching streaming engine with unlimited slots: every job
runs at once, its first piece is ready the moment it arrives (so time to first
audio is the pipeline's alone), and each later piece is ready once a synthesis
``speed`` times faster than real time has covered the audio before it. A chunk lasts as
long as speech would (``chars_per_second`` characters a second, divided by the
job's speed setting). Its language table is XTTS's, so chunks are cut as for
XTTS. The tone's phase runs on across pieces, so seams are continuous.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

import numpy as np

from pipeline.text.limits import DEFAULT_CHAR_LIMIT, xtts_char_limits

from .base import EngineInfo, JobFailed, PieceOut, SynthJob

TONE_HZ = 200
AMPLITUDE = 0.2
CAPACITY = 1_000_000  # jobs at once: no engine limit, the data path is what is measured


@dataclass
class _Running:
    job: SynthJob
    total: int  # samples the job makes
    done: int = 0  # samples handed out
    piece: int = 0


class NullEngine:
    def __init__(self, sample_rate: int = 24000, speed: float = 50.0, piece_ms: int = 250,
                 chars_per_second: float = 14.0):
        if speed <= 0 or piece_ms <= 0 or sample_rate <= 0:
            raise ValueError(f"null engine needs speed, piece_ms and sample_rate > 0; got {speed}, {piece_ms}, "
                             f"{sample_rate}")
        self.speed = speed
        self.piece_samples = max(1, sample_rate * piece_ms // 1000)
        self.chars_per_second = chars_per_second
        limits = dict(xtts_char_limits()) or {"en": DEFAULT_CHAR_LIMIT}
        self.info = EngineInfo(engine="null", model=f"tone-{TONE_HZ}hz-{speed:g}x", sample_rate=sample_rate,
                               dtype="int16", device="cpu", char_limits=limits, capacity=CAPACITY,
                               streaming=True, chars_per_s=speed * chars_per_second)
        period = sample_rate // TONE_HZ
        t = np.arange(self.piece_samples + period) * (2 * np.pi * TONE_HZ / sample_rate)
        self._table = (np.sin(t) * AMPLITUDE * 32767).astype("<i2")
        self._period = period
        self._due: list[tuple[float, int, _Running]] = []  # (when the next piece is ready, order, job)
        self._order = itertools.count()

    def warm_up(self) -> None:
        """Nothing to load or compile."""

    def add(self, job: SynthJob) -> None:
        job.started()
        seconds = len(job.text) / self.chars_per_second / float(job.sampling.get("speed", 1.0) or 1.0)
        total = max(1, round(seconds * self.info.sample_rate))
        heapq.heappush(self._due, (time.monotonic(), next(self._order), _Running(job, total)))

    def cancel(self, stream: str, below_epoch: int | None = None) -> int:
        kept = [e for e in self._due if not (e[2].job.stream == stream
                                             and (below_epoch is None or e[2].job.epoch < below_epoch))]
        dropped = len(self._due) - len(kept)
        heapq.heapify(kept)
        self._due = kept
        return dropped

    def has_work(self) -> bool:
        return bool(self._due)

    def next_ready_in(self) -> float | None:
        return max(0.0, self._due[0][0] - time.monotonic()) if self._due else None

    def step(self) -> list[PieceOut | JobFailed]:
        now = time.monotonic()
        out: list[PieceOut | JobFailed] = []
        while self._due and self._due[0][0] <= now:
            _, _, run = heapq.heappop(self._due)
            out.append(self._piece(run))
            if run.done < run.total:
                ready = run.job.t_started + run.done / self.info.sample_rate / self.speed
                heapq.heappush(self._due, (ready, next(self._order), run))
        return out

    def _piece(self, run: _Running) -> PieceOut:
        count = min(self.piece_samples, run.total - run.done)
        start = run.done % self._period
        piece = PieceOut(run.job, run.piece, run.done, self._table[start:start + count], run.done + count >= run.total)
        run.done += count
        run.piece += 1
        return piece

    def close(self) -> None:
        self._due.clear()


def build_null(service) -> NullEngine:
    return NullEngine(speed=service.null_speed, piece_ms=service.null_piece_ms)
