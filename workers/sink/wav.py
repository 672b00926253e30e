"""A WAV file written as the audio arrives, valid at every moment.

The header's sizes are patched after every append and the file is flushed, so a
sink killed mid-stream leaves a playable file holding everything it received.
The stdlib `wave` writer patches its header whenever the data length changes
(its seeks already push buffered bytes to the OS); the explicit flush keeps that
true whatever the writer does internally.
"""

from __future__ import annotations

import logging
import os
import wave
from typing import BinaryIO

from pipeline.wire.protocol import BYTES_PER_SAMPLE

log = logging.getLogger("xtts_stream.sink")


class WavOutError(RuntimeError):
    """The file could not be opened or written; the message names the path and the cause."""


class WavOut:
    def __init__(self, path: str, sample_rate: int):
        self.path = path
        self.samples = 0
        self._file: BinaryIO | None = None
        self._wave: wave.Wave_write | None = None
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            self._file = open(path, "wb")
            self._wave = wave.open(self._file, "wb")
            self._wave.setnchannels(1)
            self._wave.setsampwidth(BYTES_PER_SAMPLE)
            self._wave.setframerate(sample_rate)
            self._wave.writeframes(b"")  # writes the header now: an empty stream is still a valid file
            self._file.flush()
        except (OSError, wave.Error, ValueError, RecursionError) as exc:  # a path the OS refuses in any way
            self._abandon()
            raise WavOutError(f"cannot write WAV file '{path[:200]}': {type(exc).__name__}: {str(exc)[:200]}") from None

    def write(self, pcm: bytes | memoryview) -> None:
        if self._wave is None or self._file is None:
            raise WavOutError(f"WAV file '{self.path}' is already closed")
        try:
            self._wave.writeframes(pcm)
            self._file.flush()
        except (OSError, wave.Error) as exc:
            self._abandon()
            raise WavOutError(f"writing WAV file '{self.path}' failed: {exc}") from None
        self.samples += len(pcm) // BYTES_PER_SAMPLE

    def close(self) -> None:
        if self._wave is None or self._file is None:
            return
        try:
            self._wave.close()
            self._file.close()
        except OSError as exc:
            raise WavOutError(f"closing WAV file '{self.path}' failed: {exc}") from None
        finally:
            self._wave = None
            self._file = None

    def _abandon(self) -> None:
        """Close what is open after a failure; the file keeps what was written so far."""
        for closer in (self._wave, self._file):
            if closer is None:
                continue
            try:
                closer.close()
            except Exception as exc:  # best effort: the original error is the one reported
                log.debug("closing '%s' after an error: %s", self.path, exc)
        self._wave = None
        self._file = None
