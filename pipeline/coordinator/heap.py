"""Handing freed heap back to the system once the coordinator goes quiet.

glibc keeps what a burst freed - thousands of audio buffers, megabytes a slow
client's requests queued - in its arenas, so a coordinator that once served a
greedy client would hold tens of megabytes for good. When nothing is open,
`HeapTrimmer.idle` asks glibc to return its free pages (``malloc_trim``), at
most once per ``min_interval_s`` and only after work was done since the last
time. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Callable

log = logging.getLogger("xtts_stream.coordinator")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # no find_library: it runs ldconfig (or gcc) at start
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    def __init__(self, min_interval_s: float = 5.0) -> None:
        self.min_interval_s = min_interval_s
        self.trims = 0
        self._trim = _malloc_trim()
        self._last = float("-inf")
        self._worked = False

    def worked(self) -> None:
        """Something was served: the heap may hold freed buffers."""
        self._worked = True

    def idle(self, now: float) -> bool:
        """Nothing is open now: trim if work was done since the last trim and it is time. True if trimmed."""
        if self._trim is None or not self._worked or now - self._last < self.min_interval_s:
            return False
        self._trim(0)
        self._last, self._worked = now, False
        self.trims += 1
        return True
