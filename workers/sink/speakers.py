"""Real-time playback through `sounddevice` (the optional ``speakers`` extra).

The sink's loop appends PCM; PortAudio's callback thread takes it at the
sample rate. The device starts once the pre-buffer is full (or at the end of
a stream shorter than it), like the virtual clock in `pipeline.playback`; when
the callback finds too little audio it plays silence and counts an underrun.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

from pipeline.wire.protocol import BYTES_PER_SAMPLE

# Audio can arrive much faster than real time; beyond this much unplayed audio
# the sink drops blocks rather than grow without bound.
MAX_BUFFER_S = 600.0


class SpeakersError(RuntimeError):
    """No usable audio output; the message says why and what to install."""


def load_sounddevice() -> ModuleType:
    try:
        import sounddevice  # type: ignore[import-not-found]
    except ImportError:
        raise SpeakersError("speakers delivery needs sounddevice: pip install 'xtts-stream[speakers]'") from None
    except OSError as exc:  # the module is there but the PortAudio library is not
        raise SpeakersError(f"sounddevice cannot load PortAudio: {exc}") from None
    return sounddevice


class SpeakersOut:
    def __init__(self, sample_rate: int, prebuffer_ms: int):
        self._sd = load_sounddevice()
        self._prebuffer_bytes = round(prebuffer_ms * sample_rate / 1000) * BYTES_PER_SAMPLE
        self._max_bytes = int(MAX_BUFFER_S * sample_rate) * BYTES_PER_SAMPLE
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._ended = False
        self._started = False
        self.underruns = 0
        self.dropped_samples = 0
        try:
            self._stream = self._sd.RawOutputStream(
                samplerate=sample_rate, channels=1, dtype="int16", latency="low", callback=self._callback)
        except Exception as exc:  # PortAudio reports a missing device in many ways
            raise SpeakersError(f"cannot open the audio output: {exc}") from None

    def write(self, pcm: bytes | memoryview) -> None:
        with self._lock:
            if len(self._buffer) + len(pcm) > self._max_bytes:
                self.dropped_samples += len(pcm) // BYTES_PER_SAMPLE
                return
            self._buffer += pcm
            ready = len(self._buffer) >= self._prebuffer_bytes
        if ready:
            self._start()

    def end(self) -> None:
        """No more audio: play out what is buffered, then stop."""
        with self._lock:
            self._ended = True
        self._start()

    def finished(self) -> bool:
        return self._started and not self._stream.active

    def close(self) -> None:
        """Stop at once, dropping what is unplayed; safe to call more than once."""
        if self._stream.closed:
            return
        try:
            self._stream.abort()
        finally:
            self._stream.close()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._stream.start()

    def _callback(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        wanted = frames * BYTES_PER_SAMPLE
        with self._lock:
            chunk = bytes(self._buffer[:wanted])
            del self._buffer[:wanted]
            ended = self._ended
        if len(chunk) < wanted:
            if not ended:
                self.underruns += 1
            chunk += bytes(wanted - len(chunk))
        outdata[:] = chunk
        if ended and not self._buffer:
            raise self._sd.CallbackStop
