"""One stream held by the sink: where its audio goes on the service's machine.

A delivery that fails (a WAV path that cannot be written, no audio device)
never fails the sink: the stream keeps taking audio and its SinkDone metrics
carry the reason in ``error``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.wire.protocol import DELIVER_SPEAKERS, WAV_PREFIX, Audio, SinkOpen

from .speakers import SpeakersError, SpeakersOut
from .wav import WavOut, WavOutError

log = logging.getLogger("xtts_stream.sink")

# How long past the end of its audio a speakers stream may take to play out.
SPEAKERS_GRACE_S = 2.0


def parse_deliver(deliver: str) -> tuple[str, str]:
    """``"wav:/a/b.wav"`` -> ``("wav", "/a/b.wav")``; ValueError names the valid forms."""
    if deliver == DELIVER_SPEAKERS:
        return deliver, ""
    if deliver.startswith(WAV_PREFIX) and deliver[len(WAV_PREFIX):]:
        return "wav", deliver[len(WAV_PREFIX):]
    raise ValueError(f"unknown delivery '{deliver[:80]}'; valid: {WAV_PREFIX}PATH, {DELIVER_SPEAKERS}")


class SinkStream:
    def __init__(self, open_msg: SinkOpen):
        self.open = open_msg
        self.error = ""
        self.cancelled = False
        self.samples = 0
        self.order_violations = 0
        self.rate_mismatches = 0
        self.wav: WavOut | None = None
        self.speakers: SpeakersOut | None = None
        self._wav_path = ""
        self._deadline = 0.0
        self._next_offset = 0
        self._last_seq = -1
        try:
            self.mode, self._wav_path = parse_deliver(open_msg.deliver)
        except ValueError as exc:
            self.mode = "none"
            self.error = str(exc)
            return
        self._open_output()

    def _open_output(self) -> None:
        try:
            if self.mode == "wav":
                self.wav = WavOut(self._wav_path, self.open.sample_rate)
            elif self.mode == "speakers":
                self.speakers = SpeakersOut(self.open.sample_rate, self.open.prebuffer_ms)
        except (WavOutError, SpeakersError) as exc:
            self.fail(str(exc))

    def take(self, span: Audio) -> bool:
        """Deliver one span; False when it was dropped (a second line of defence behind the reassembler)."""
        if span.sample_rate != self.open.sample_rate:
            self.rate_mismatches += 1
            return False
        if span.seq <= self._last_seq or span.sample_offset != self._next_offset:
            self.order_violations += 1
            log.warning("stream '%s': dropping span seq %d at %d, expected after seq %d at %d", self.open.stream,
                        span.seq, span.sample_offset, self._last_seq, self._next_offset)
            return False
        self._last_seq = span.seq
        self._next_offset += span.sample_count
        self.samples += span.sample_count
        if self.wav is not None:
            try:
                self.wav.write(span.pcm)
            except WavOutError as exc:
                self.fail(str(exc))
                self.wav = None
        if self.speakers is not None:
            self.speakers.write(span.pcm)
        return True

    def close(self, cancelled: bool) -> None:
        self.cancelled = cancelled
        self._close_wav()
        if self.speakers is not None:
            self.speakers.end()
            self._deadline = time.monotonic() + self.samples / self.open.sample_rate + SPEAKERS_GRACE_S

    def playing(self, now: float | None = None) -> bool:
        """True while the speakers still play this stream's audio (bounded by a deadline)."""
        if self.speakers is None or self.speakers.finished():
            return False
        return (time.monotonic() if now is None else now) < self._deadline

    def release(self) -> None:
        """Close every output now; safe to call more than once."""
        self._close_wav()
        if self.speakers is not None:
            try:
                self.speakers.close()
            except Exception as exc:  # PortAudio errors must not stop the sink
                log.warning("stream '%s': closing the audio output: %s", self.open.stream, exc)

    def _close_wav(self) -> None:
        if self.wav is None:
            return
        try:
            self.wav.close()
        except WavOutError as exc:
            self.fail(str(exc))
        self.wav = None

    def fail(self, message: str) -> None:
        log.error("stream '%s': %s", self.open.stream, message)
        self.error = self.error or message

    def metrics(self, note: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "deliver": self.mode, "cancelled": self.cancelled, "error": self.error,
            "sink_audio_s": round(self.samples / self.open.sample_rate, 6),
            "sink_order_violations": self.order_violations, "sink_rate_mismatches": self.rate_mismatches,
        }
        if self.mode == "wav":
            out["wav_path"] = self._wav_path
        if self.speakers is not None:
            out["speaker_underruns"] = self.speakers.underruns
            out["speaker_dropped_samples"] = self.speakers.dropped_samples
        if note:
            out["note"] = note
        return out
