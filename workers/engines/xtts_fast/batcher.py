"""Continuous batching: which jobs wait, which run in which cache slot, who goes first.

A job joins the running batch at the next step (after its prefill) and leaves as
soon as it stops; running jobs always occupy slots 0..n-1, so a decode step is
one batched call over the first n cache rows (and a captured graph per batch
size stays valid). Waiting jobs are admitted earliest deadline first (a job's
deadline is when its stream's listener needs its audio; a first chunk's is the
moment it arrived), then by priority and arrival; the engine may hold back later
chunks that are not urgent for a while (`next_waiting`'s ``hold``) so they
neither share a prefill with first chunks nor delay their first pieces.
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
    count: int = 0  # latents produced or being produced by a launched decode step
    confirmed: int = 0  # latents whose decode step has been read back (pieces and ends use these)
    next_piece_at: int = 0
    piece_index: int = 0
    finished: bool = False
    cancelled: bool = False
    first_piece_tokens: int = 4
    piece_tokens: int = 16
    sampling: object = None  # its SamplingParams
    pieces_launched: int = 0  # vocoder pieces planned (piece_index counts those returned)
    final_launched: bool = False
    tokens_launched: int = 0  # latents sent to the vocoder so far

    @property
    def cache_pos(self) -> int:
        """Cache position of the newest token (the one the next decode step feeds)."""
        return self.prefix_len - 1 + self.count

    @property
    def first_chunk(self) -> bool:
        return self.job.priority <= 0

    @property
    def awaits_first_piece(self) -> bool:
        """A first chunk whose first audio has not been sent to the vocoder yet: the listener is waiting."""
        return self.first_chunk and self.pieces_launched == 0 and not self.cancelled

    @property
    def retirable(self) -> bool:
        """Nothing left to do: stopped and its last piece launched (or cancelled)."""
        return self.finished and (self.cancelled or self.final_launched)


@dataclass(order=True)
class _Waiting:
    order: tuple[float, int]
    seq: int
    job: SynthJob = field(compare=False)


class Batcher:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: list[Running] = []  # index == slot
        self._waiting: list[_Waiting] = []
        self._seq = itertools.count()
        self._first_waiting = 0  # first chunks among the waiting

    def add(self, job: SynthJob) -> None:
        heapq.heappush(self._waiting, _Waiting(job.order, next(self._seq), job))
        self._first_waiting += job.priority <= 0

    def has_work(self) -> bool:
        return bool(self._waiting or self.running)

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def next_waiting(self, hold: bool = False, now: float = 0.0,
                     urgent: Callable[[SynthJob, float, float], bool] | None = None) -> SynthJob | None:
        """The most urgent waiting job, or None; while ``hold``, a later chunk only if it is ``urgent``.

        Later chunks that are not urgent have later deadlines than any first chunk
        waiting beside them, so looking at the top of the heap is enough.
        """
        if not self._waiting:
            return None
        top = self._waiting[0].job
        if hold and top.priority > 0 and not (urgent is not None and urgent(top, 0.0, now)):
            return None
        heapq.heappop(self._waiting)
        self._first_waiting -= top.priority <= 0
        return top

    def first_chunks_waiting(self) -> bool:
        return self._first_waiting > 0

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
        self._first_waiting = sum(w.job.priority <= 0 for w in kept)
        return dropped, [r for r in self.running if hit(r.job) and not r.retirable]

    def compact(self, move: Callable[[int, int, Running], None]) -> list[Running]:
        """Remove retirable jobs, filling each hole with the last running job; returns the removed.

        A job that stopped decoding but still owes vocoder pieces keeps its slot (its latents live there).
        """
        removed = []
        i = 0
        while i < len(self.running):
            run = self.running[i]
            if not run.retirable:
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
