"""A virtual real-time playback clock: what a listener would have heard, and when.

The coordinator feeds it the time each span of a stream's audio leaves for its
listener (``time.monotonic()``) and its length; it never sleeps and touches no
device, so the same times always give the same metrics. The same clock paces
delivery (`pipeline.coordinator.pacing`) and counts underruns in every
benchmark. The model is a player with a pre-buffer:

* Playback starts when ``prebuffer_ms`` of audio has arrived, at the arrival
  time of the block that completed the pre-buffer; a stream shorter than the
  pre-buffer starts when it is closed.
* From then on audio is consumed at the sample rate. The block that follows
  the buffered audio is *due* when that audio has been played out.
* A block that arrives after it was due is an underrun: the listener heard
  silence from the due time until the arrival. Playback resumes at once with
  that block (no second pre-buffer) - the choice of most low-latency players,
  and the one that keeps a late stream from falling further behind.

Order is checked here too, as a second line of defence behind the reassembler:
a block whose ``(epoch, seq)`` is not after the last accepted one is dropped and
counted; a skipped ``seq`` is counted as a gap but the block is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Arrival times are float seconds; a microsecond absorbs their rounding so a
# block arriving exactly on time is not an underrun.
_ON_TIME_TOLERANCE_S = 1e-6


@dataclass
class _Anchor:
    """Playback runs continuously from `time` onwards, from sample `sample` of the stream."""

    time: float
    sample: int


class PlaybackClock:
    def __init__(self, sample_rate: int, prebuffer_ms: int, t_accept: float = 0.0):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if prebuffer_ms < 0:
            raise ValueError(f"prebuffer_ms must not be negative, got {prebuffer_ms}")
        self.sample_rate = sample_rate
        self.prebuffer_ms = prebuffer_ms
        self.prebuffer_samples = round(prebuffer_ms * sample_rate / 1000)
        self.t_accept = t_accept
        self.samples = 0
        self.blocks = 0
        self.underruns = 0
        self.underrun_s = 0.0
        self.order_violations = 0
        self.seq_gaps = 0
        self.first_arrival: float | None = None
        self.start: float | None = None
        self._anchor: _Anchor | None = None
        self._last: tuple[int, int] | None = None

    def accept(self, epoch: int, seq: int, sample_count: int, arrival: float) -> bool:
        """Record one block; False when it is out of order and must be dropped."""
        key = (epoch, seq)
        if self._last is not None and key <= self._last:
            self.order_violations += 1
            return False
        if self._last is not None and epoch == self._last[0] and seq != self._last[1] + 1:
            self.seq_gaps += 1
        self._last = key
        if self.first_arrival is None:
            self.first_arrival = arrival
        self._play(sample_count, arrival)
        self.blocks += 1
        self.samples += sample_count
        return True

    def close(self, when: float) -> None:
        """The stream ended: a stream shorter than the pre-buffer starts playing now."""
        if self._anchor is None and self.samples > 0:
            self._begin(max(when, self.first_arrival or when))

    def _play(self, sample_count: int, arrival: float) -> None:
        if sample_count == 0:  # nothing to play, so nothing can be late
            return
        if self._anchor is None:
            if self.samples + sample_count >= self.prebuffer_samples:
                self._begin(arrival)
            return
        due = self._due()
        if arrival > due + _ON_TIME_TOLERANCE_S:
            self.underruns += 1
            self.underrun_s += arrival - due
            self._anchor = _Anchor(arrival, self.samples)

    def _begin(self, when: float) -> None:
        self.start = when
        self._anchor = _Anchor(when, 0)

    def _due(self) -> float:
        """When the audio received so far has been played out (the next block's due time)."""
        assert self._anchor is not None
        return self._anchor.time + (self.samples - self._anchor.sample) / self.sample_rate

    def played(self, now: float) -> int:
        """Samples a real-time listener has heard by ``now`` (it never plays what has not arrived)."""
        if self._anchor is None:
            return 0
        elapsed = now - self._anchor.time + _ON_TIME_TOLERANCE_S  # a float time a hair short of a sample
        return min(self.samples, self._anchor.sample + max(0, int(elapsed * self.sample_rate)))

    @property
    def started(self) -> bool:
        return self._anchor is not None

    @property
    def playback_end(self) -> float | None:
        return self._due() if self._anchor is not None else None

    def metrics(self) -> dict[str, Any]:
        """Times in ms from `t_accept`; None where unknown (no audio, or no t_accept given)."""
        return {
            "played_ttfa_ms": self._since_accept(self.start),
            "first_block_ms": self._since_accept(self.first_arrival),
            "playback_end_ms": self._since_accept(self.playback_end),
            "underruns": self.underruns,
            "underrun_ms": round(self.underrun_s * 1000, 3),
            "audio_s": round(self.samples / self.sample_rate, 6),
            "blocks": self.blocks,
            "prebuffer_ms": self.prebuffer_ms,
            "order_violations": self.order_violations,
            "seq_gaps": self.seq_gaps,
        }

    def _since_accept(self, when: float | None) -> float | None:
        if when is None or self.t_accept <= 0:
            return None
        return round((when - self.t_accept) * 1000, 3)
