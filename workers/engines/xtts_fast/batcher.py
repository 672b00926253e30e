"""Continuous batching: which jobs wait, which run in which cache slot, who goes first.

A job joins the running batch at the next step (after its prefill) and leaves as
soon as it stops; running jobs always occupy slots 0..n-1, so a decode step is
one batched call over the first n cache rows (and a captured graph per batch
size stays valid). Waiting jobs are admitted by (priority, arrival): a stream's
first chunk has priority 0 and beats chunks generated ahead of playback.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Callable

from workers.engines.base import SynthJob


@dataclass
class Running:
    """Host-side state of one running job."""

    job: SynthJob
    slot: int
    prefix_len: int
    max_latents: int
    forced: bool
    state: object  # the vocoder stream
    count: int = 0  # latents produced
    next_piece_at: int = 0
    piece_index: int = 0
    finished: bool = False
    cancelled: bool = False
    first_piece_tokens: int = 4
    piece_tokens: int = 16

    @property
    def cache_pos(self) -> int:
        """Cache position of the newest token (the one the next decode step feeds)."""
        return self.prefix_len - 1 + self.count


@dataclass(order=True)
class _Waiting:
    priority: int
    seq: int
    job: SynthJob = field(compare=False)


class Batcher:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: list[Running] = []  # index == slot
        self._waiting: list[_Waiting] = []
        self._seq = itertools.count()

    def add(self, job: SynthJob) -> None:
        heapq.heappush(self._waiting, _Waiting(job.priority, next(self._seq), job))

    def waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._waiting or self.running)

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def next_waiting(self) -> SynthJob | None:
        return heapq.heappop(self._waiting).job if self._waiting else None

    def place(self, make: Callable[[int], Running]) -> Running:
        """Put a new running job in the next free slot."""
        run = make(len(self.running))
        self.running.append(run)
        return run

    def cancel(self, stream: str, below_epoch: int | None) -> tuple[int, list[Running]]:
        """Drop waiting jobs of the stream; return (how many, the running ones to stop)."""
        def hit(job: SynthJob) -> bool:
            return job.stream == stream and (below_epoch is None or job.epoch < below_epoch)

        kept = [w for w in self._waiting if not hit(w.job)]
        dropped = len(self._waiting) - len(kept)
        heapq.heapify(kept)
        self._waiting = kept
        return dropped, [r for r in self.running if hit(r.job) and not r.finished]

    def compact(self, move: Callable[[int, int, Running], None]) -> list[Running]:
        """Remove finished jobs, filling each hole with the last running job; returns the removed."""
        removed = []
        i = 0
        while i < len(self.running):
            run = self.running[i]
            if not run.finished:
                i += 1
                continue
            removed.append(run)
            last = self.running.pop()
            if last is run:
                continue
            move(last.slot, i, last)
            last.slot = i
            self.running[i] = last  # look at slot i again: the moved job may be finished too
        return removed
