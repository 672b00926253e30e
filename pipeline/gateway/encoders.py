"""Response formats: raw PCM, WAV with an open-ended header, and compressed audio through PyAV.

Each encoder takes s16le mono PCM as it comes (any number of bytes, in order)
and returns the bytes to send now, so a response streams from its first block.
PyAV's muxer is told to flush after every packet; what an encoder holds back
is only its own frame (an MP3 frame is 1152 samples, a FLAC block 4608).
"""

from __future__ import annotations

import struct
from typing import Protocol

FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac")
CONTENT_TYPES = {"pcm": "audio/pcm", "wav": "audio/wav", "mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus",
                 "aac": "audio/aac", "flac": "audio/flac"}
# format -> (PyAV container format, codec, output rate or None for the stream's own)
_AV = {"mp3": ("mp3", "libmp3lame", None), "opus": ("ogg", "libopus", 48000), "aac": ("adts", "aac", None),
       "flac": ("flac", "flac", None)}
STREAMING_SIZE = 0xFFFFFFFF  # a WAV size field for "unknown": the stream's length is not known when it starts


class Encoder(Protocol):
    def start(self) -> bytes: ...
    def feed(self, pcm: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class PcmEncoder:
    def start(self) -> bytes:
        return b""

    def feed(self, pcm: bytes) -> bytes:
        return pcm

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    """A RIFF header whose sizes say 'unknown' (as OpenAI's streamed WAV does), then the PCM as it comes."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    def start(self) -> bytes:
        return wav_header(self.sample_rate)


def wav_header(sample_rate: int, data_bytes: int = STREAMING_SIZE) -> bytes:
    riff = STREAMING_SIZE if data_bytes == STREAMING_SIZE else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", data_bytes))


class _Collect:
    """The file PyAV writes into: it keeps what was written until taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class AvEncoder:
    def __init__(self, fmt: str, sample_rate: int):
        import av  # imported here: the PCM and WAV paths do not need it
        container, codec, out_rate = _AV[fmt]
        self._av = av
        self.sample_rate = sample_rate
        self.out = _Collect()
        self.container = av.open(self.out, "w", format=container, options={"flush_packets": "1"})
        self.stream = self.container.add_stream(codec, rate=out_rate or sample_rate, layout="mono")
        self.resampler = av.AudioResampler(format=self.stream.codec_context.format.name, layout="mono",
                                           rate=out_rate or sample_rate)
        self._odd = b""  # half a sample, if a span ever ends inside one
        self._closed = False

    def start(self) -> bytes:
        return b""

    def feed(self, pcm: bytes) -> bytes:
        import numpy as np
        data = self._odd + pcm
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        if cut:
            frame = self._av.AudioFrame.from_ndarray(np.frombuffer(data[:cut], "<i2").reshape(1, -1), format="s16",
                                                     layout="mono")
            frame.sample_rate = self.sample_rate
            self._encode(self.resampler.resample(frame))
        return self.out.take()

    def finish(self) -> bytes:
        self._encode(self.resampler.resample(None))
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.close()
        return self.out.take()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.container.close()

    def _encode(self, frames) -> None:
        for frame in frames:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)


def encoder(fmt: str, sample_rate: int) -> Encoder:
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder(sample_rate)
    return AvEncoder(fmt, sample_rate)
