"""Paced delivery: a stream's audio leaves at most ``max_lead`` ahead of its real-time listener.

A barge-in can only recall audio that has not left the service, so the lead
bounds what a listener may still hear after a cancel. The listener is the
stream's `PlaybackClock` (the same model that counts underruns): before playback
starts the pacer sends up to the full lead (the pre-buffer must fill); after, it
waits until the lead has fallen to ``max_lead - refill`` and then tops it up, so a
steadily playing stream gets one message per ``refill`` of audio rather than one
per block. ``max_lead == 0`` sends everything at once (offline users).
"""

from __future__ import annotations

from collections import deque

from ..playback import PlaybackClock
from ..protocol import BYTES_PER_SAMPLE
from ..reassembler import Span


SLACK_SAMPLES = 8


class Pacer:
    def __init__(self, clock: PlaybackClock, max_lead_samples: int, block_samples: int):
        self.clock = clock
        self.max_lead = max(0, max_lead_samples)
        self.block = max(1, block_samples)
        # Top up by half the lead, in whole blocks (at least one).
        self.refill = max(self.block, (self.max_lead // 2) // self.block * self.block)
        self.held: deque[Span] = deque()
        self.held_samples = 0

    @property
    def paced(self) -> bool:
        return self.max_lead > 0

    def push(self, span: Span) -> None:
        self.held.append(span)
        self.held_samples += span.sample_count

    def clear(self) -> None:
        self.held.clear()
        self.held_samples = 0

    def take(self, now: float) -> list[Span]:
        """The spans that may leave now (in order, contiguous; the last may be a slice)."""
        if not self.held:
            return []
        if not self.paced:
            return self._pop(self.held_samples)
        allowance = self._allowance(now)
        if allowance >= self.held_samples:
            return self._pop(self.held_samples)
        return self._pop(allowance // self.block * self.block)

    def wake_at(self) -> float | None:
        """When held audio may next leave (None: nothing held, or it may leave now)."""
        if not self.held or not self.paced or not self.clock.started:
            return None
        return self.clock.when_played(self.clock.samples - (self.max_lead - self.refill))

    def _allowance(self, now: float) -> int:
        sent = self.clock.samples
        if not self.clock.started:
            return max(0, self.max_lead - sent)
        lead = sent - self.clock.played(now)
        # A few samples of slack: the wake-up time is a float, the samples played an int.
        if lead > self.max_lead - self.refill + SLACK_SAMPLES:
            return 0
        return self.max_lead - lead

    def _pop(self, samples: int) -> list[Span]:
        out: list[Span] = []
        while samples > 0 and self.held:
            span = self.held[0]
            count = span.sample_count
            if count <= samples:
                out.append(self.held.popleft())
                samples -= count
                self.held_samples -= count
                continue
            cut = samples * BYTES_PER_SAMPLE
            view = memoryview(span.pcm)
            out.append(Span(span.sample_offset, view[:cut], span.chunk_start))
            self.held[0] = Span(span.sample_offset + samples, view[cut:], None)
            self.held_samples -= samples
            samples = 0
        return out
