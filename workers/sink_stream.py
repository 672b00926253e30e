"""One stream held by the sink: its playback clock and where its audio goes.

A delivery that fails (a WAV path that cannot be written, no audio device)
never fails the sink: the stream keeps being measured and its SinkDone
metrics carry the reason in ``error``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.protocol import AudioBlock, SinkOpen
from workers.playback import PlaybackClock
from workers.speakers import SpeakersError, SpeakersOut
from workers.wav_out import WavOut, WavOutError

log = logging.getLogger("xtts_stream.sink")

DELIVERY_MODES = ("client", "wav:PATH", "speakers", "none")
# How long past the end of its audio a speakers stream may take to play out.
SPEAKERS_GRACE_S = 2.0


def parse_deliver(deliver: str) -> tuple[str, str]:
    """``"wav:/a/b.wav"`` -> ``("wav", "/a/b.wav")``; ValueError names the valid forms."""
    if deliver in ("client", "speakers", "none"):
        return deliver, ""
    if deliver.startswith("wav:") and deliver[4:]:
        return "wav", deliver[4:]
    raise ValueError(f"unknown delivery '{deliver}'; valid: {', '.join(DELIVERY_MODES)}")


class SinkStream:
    def __init__(self, open_msg: SinkOpen):
        self.open = open_msg
        self.error = ""
        self.cancelled = False
        self.rate_mismatches = 0
        self.wav: WavOut | None = None
        self.speakers: SpeakersOut | None = None
        self._wav_path = ""
        self._deadline = 0.0
        self.clock: PlaybackClock | None = None
        try:
            self.clock = PlaybackClock(open_msg.sample_rate, open_msg.prebuffer_ms, open_msg.t_accept)
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
            self.error = str(exc)
            log.error("stream '%s': %s", self.open.stream, exc)

    def take(self, block: AudioBlock, arrival: float) -> bool:
        """Measure and deliver one block; False when it was dropped."""
        if self.clock is None:
            return False
        if block.sample_rate != self.open.sample_rate:
            self.rate_mismatches += 1
            log.warning("stream '%s': dropping block %d at %d Hz; the stream is %d Hz", self.open.stream,
                        block.seq, block.sample_rate, self.open.sample_rate)
            return False
        if not self.clock.accept(block.epoch, block.seq, block.sample_count, arrival):
            log.warning("stream '%s': dropping out-of-order block epoch %d seq %d", self.open.stream,
                        block.epoch, block.seq)
            return False
        if self.wav is not None:
            try:
                self.wav.write(block.pcm)
            except WavOutError as exc:
                self._fail(str(exc))
                self.wav = None
        if self.speakers is not None:
            self.speakers.write(block.pcm)
        return True

    def close(self, when: float, cancelled: bool) -> None:
        self.cancelled = cancelled
        if self.clock is not None:
            self.clock.close(when)
        self._close_wav()
        if self.speakers is not None:
            self.speakers.end()
            audio_s = self.clock.samples / self.clock.sample_rate if self.clock else 0.0
            self._deadline = time.monotonic() + audio_s + SPEAKERS_GRACE_S

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
            self._fail(str(exc))
        self.wav = None

    def _fail(self, message: str) -> None:
        log.error("stream '%s': %s", self.open.stream, message)
        self.error = self.error or message

    def metrics(self, note: str = "") -> dict[str, Any]:
        out: dict[str, Any] = dict(self.clock.metrics()) if self.clock else {}
        out.update(deliver=self.mode, cancelled=self.cancelled, error=self.error,
                   sink_rate_mismatches=self.rate_mismatches)
        if self.mode == "wav":
            out["wav_path"] = self._wav_path
        if self.speakers is not None:
            out["speaker_underruns"] = self.speakers.underruns
            out["speaker_dropped_samples"] = self.speakers.dropped_samples
        if note:
            out["note"] = note
        return out
