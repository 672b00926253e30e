"""Queued jobs of a one-job-at-a-time engine: earliest deadline first, then priority, then arrival."""

from __future__ import annotations

import heapq
import itertools

from .base import SynthJob


def is_cancelled(job: SynthJob, stream: str, below_epoch: int | None) -> bool:
    """Whether `cancel(stream, below_epoch)` covers this job."""
    return job.stream == stream and (below_epoch is None or job.epoch < below_epoch)


class JobQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[tuple[float, int], int, SynthJob]] = []
        self._order = itertools.count()

    def push(self, job: SynthJob) -> None:
        heapq.heappush(self._heap, (job.order, next(self._order), job))

    def pop(self) -> SynthJob | None:
        return heapq.heappop(self._heap)[2] if self._heap else None

    def drop(self, stream: str, below_epoch: int | None = None) -> int:
        """Remove the stream's jobs (all, or those of an older epoch); returns how many."""
        kept = [entry for entry in self._heap if not is_cancelled(entry[2], stream, below_epoch)]
        dropped = len(self._heap) - len(kept)
        heapq.heapify(kept)
        self._heap = kept
        return dropped

    def clear(self) -> None:
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)
