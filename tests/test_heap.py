"""The coordinator gives freed heap back when it goes quiet, after work and not too often."""

from __future__ import annotations

from pipeline.coordinator.heap import HeapTrimmer


def test_trims_only_after_work_and_at_most_once_per_interval():
    heap = HeapTrimmer(min_interval_s=5.0)
    assert not heap.idle(0.0), "nothing was served: nothing to give back"
    heap.worked()
    assert heap.idle(1.0) and heap.trims == 1
    assert not heap.idle(2.0), "no work since"
    heap.worked()
    assert not heap.idle(3.0), "too soon after the last trim"
    assert heap.idle(6.0) and heap.trims == 2


def test_freed_memory_goes_back_to_the_system():
    def rss_kb() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    heap = HeapTrimmer(min_interval_s=0.0)
    blocks = [bytearray(100_000) for _ in range(2_000)]  # 200 MB of small-enough blocks for the main heap
    keep = blocks[-1]  # the top of the heap stays in use: glibc alone would keep everything below it
    del blocks
    before = rss_kb()
    heap.worked()
    assert heap.idle(0.0)
    assert before - rss_kb() > 100_000, "at least 100 MB handed back"
    del keep
