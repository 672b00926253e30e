"""Paced delivery: a stream's audio leaves at most ``max_lead`` ahead of its listener.

A barge-in can only recall audio that has not left the service, so the lead
bounds what a listener may still hear after a cancel. The listener is the
stream's `PlaybackClock` (the same model that counts underruns). Before playback
starts the pacer sends up to the full lead (the pre-buffer must fill). After, it
tops the lead up on a clock-wide grid whose step is the room between the
pre-buffer and the full lead: at each grid point a playing stream is topped up
to ``max_lead`` - one message per step, never below the pre-buffer in between -
and every stream of a profile shares the same grid points, so one wake-up of the
coordinator serves them all (each sparse wake-up costs far more CPU than the send
it makes). Audio that arrives between grid points leaves at once only when the
lead would otherwise fall under the pre-buffer before the next one (a starved
stream). ``max_lead == 0`` sends everything at once (offline users).
"""

from __future__ import annotations

import math
from collections import deque

from pipeline.playback import PlaybackClock
from pipeline.wire.protocol import BYTES_PER_SAMPLE

from .reassembler import Span

SLACK_SAMPLES = 8
# A tick that fires this much before a grid point counts as on it (timers fire a little early or late).
EARLY_S = 0.002


class Pacer:
    def __init__(self, clock: PlaybackClock, max_lead_samples: int, block_samples: int):
        self.clock = clock
        self.max_lead = max(0, max_lead_samples)
        self.block = max(1, block_samples)
        # The grid step: the room above the pre-buffer, in whole blocks (at least one).
        room = self.max_lead - clock.prebuffer_samples
        self.step = max(self.block, room // self.block * self.block)
        self.step_s = self.step / clock.sample_rate
        self.floor = self.max_lead - self.step  # the lead a playing stream keeps (the pre-buffer, or more)
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

    def wake_at(self, now: float) -> float | None:
        """When held audio may next leave (None: nothing held, or it leaves when more arrives): the next
        grid point."""
        if not self.held or not self.paced or not self.clock.started:
            return None
        return self._next_grid_point(now)

    def _next_grid_point(self, now: float) -> float:
        return (math.floor((now + EARLY_S) / self.step_s) + 1) * self.step_s

    def _allowance(self, now: float) -> int:
        """Samples that may leave now: enough that the lead is still at the floor at the next grid point
        (all the room up to max_lead at a grid point; between grid points, only what a starved stream
        needs, in whole blocks), none if the lead will hold until then."""
        sent = self.clock.samples
        if not self.clock.started:
            return max(0, self.max_lead - sent)
        lead = sent - self.clock.played(now)
        until_next = round((self._next_grid_point(now) - now) * self.clock.sample_rate)
        need = self.floor + until_next - lead
        if need <= SLACK_SAMPLES:  # the times are floats, the samples played an int
            return 0
        room = self.max_lead - lead
        if room >= self.held_samples:
            return room
        return min(-(-need // self.block) * self.block, room)

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
