"""Every message that crosses a process boundary, in one place.

A message travels as ZeroMQ frames: ``[kind, header, *pcm]``. ``kind`` is the
ASCII message name (routing needs no decode), ``header`` a msgpack map holding
the fields below plus ``v`` (the protocol version), and audio messages carry one
extra frame of raw little-endian PCM described by their ``format``,
``sample_rate`` and ``sample_count`` fields. Nothing is pickled.

`docs/protocol.md` describes the same messages for writers of other clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
PCM_FORMAT = "s16le"  # signed 16-bit little-endian mono
BYTES_PER_SAMPLE = 2


@dataclass
class Message:
    KIND: ClassVar[bytes] = b""
    # Messages that carry a PCM frame name the bytes field here.
    PCM_FIELD: ClassVar[str | None] = None


# --- client -> coordinator ---------------------------------------------------

@dataclass
class Speak(Message):
    """Speak a whole text. ``stream`` is chosen by the client, unique per connection."""
    KIND: ClassVar[bytes] = b"speak"
    stream: str
    text: str
    profile: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    language: str = ""
    voice: str = ""
    # "client" (audio comes back), or "wav:/path/file.wav" (the sink writes it).
    deliver: str = "client"


@dataclass
class Open(Message):
    """Open a stream whose text arrives later as deltas (an LLM writing)."""
    KIND: ClassVar[bytes] = b"open"
    stream: str
    profile: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    language: str = ""
    voice: str = ""
    deliver: str = "client"


@dataclass
class Append(Message):
    KIND: ClassVar[bytes] = b"append"
    stream: str
    text: str


@dataclass
class End(Message):
    """No more text for this stream: flush the chunker and finish."""
    KIND: ClassVar[bytes] = b"end"
    stream: str


@dataclass
class Cancel(Message):
    """Barge-in: no audio of this stream after the next block."""
    KIND: ClassVar[bytes] = b"cancel"
    stream: str


@dataclass
class Status(Message):
    KIND: ClassVar[bytes] = b"status"
    request: str = ""


# --- coordinator -> client ---------------------------------------------------

@dataclass
class Accepted(Message):
    KIND: ClassVar[bytes] = b"accepted"
    stream: str
    profile: str
    sample_rate: int
    format: str = PCM_FORMAT
    block_samples: int = 0


@dataclass
class AudioBlock(Message):
    """One fixed-size block of a stream's audio, in order (the last may be shorter)."""
    KIND: ClassVar[bytes] = b"block"
    PCM_FIELD: ClassVar[str | None] = "pcm"
    stream: str
    epoch: int
    seq: int
    sample_offset: int
    sample_count: int
    sample_rate: int
    format: str = PCM_FORMAT
    pcm: bytes = b""


@dataclass
class Done(Message):
    KIND: ClassVar[bytes] = b"done"
    stream: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Error(Message):
    """A request failed; ``stream`` is empty when the request named none."""
    KIND: ClassVar[bytes] = b"error"
    code: str
    message: str
    stream: str = ""


@dataclass
class StatusReply(Message):
    KIND: ClassVar[bytes] = b"status_reply"
    request: str
    healthy: bool
    state: dict[str, Any] = field(default_factory=dict)


# --- coordinator <-> worker --------------------------------------------------

@dataclass
class Ready(Message):
    """The worker's handshake: it has loaded and warmed up its engine."""
    KIND: ClassVar[bytes] = b"ready"
    worker: str
    engine: str
    model: str
    sample_rate: int
    dtype: str
    device: str
    pid: int
    char_limits: dict[str, int] = field(default_factory=dict)
    format: str = PCM_FORMAT


@dataclass
class SynthChunk(Message):
    KIND: ClassVar[bytes] = b"synth"
    stream: str
    epoch: int
    chunk_index: int
    text: str
    language: str
    voice: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    forced_tokens: int = 0  # > 0 only under the benchmark's length policy


@dataclass
class CancelStream(Message):
    """Drop a stream's queued and running chunks of epochs below ``below_epoch``."""
    KIND: ClassVar[bytes] = b"cancel_stream"
    stream: str
    below_epoch: int


@dataclass
class AudioPiece(Message):
    """Audio for one chunk; offsets count from the chunk's start, pieces contiguous."""
    KIND: ClassVar[bytes] = b"piece"
    PCM_FIELD: ClassVar[str | None] = "pcm"
    stream: str
    epoch: int
    chunk_index: int
    piece_index: int
    sample_offset: int
    sample_count: int
    sample_rate: int
    final: bool
    format: str = PCM_FORMAT
    pcm: bytes = b""


@dataclass
class ChunkFailed(Message):
    KIND: ClassVar[bytes] = b"chunk_failed"
    stream: str
    epoch: int
    chunk_index: int
    message: str


@dataclass
class Heartbeat(Message):
    KIND: ClassVar[bytes] = b"heartbeat"
    worker: str
    queued: int = 0


@dataclass
class Dead(Message):
    """Sent by a dying process when it still can (the in-band death notice)."""
    KIND: ClassVar[bytes] = b"dead"
    worker: str
    reason: str


@dataclass
class Hello(Message):
    """A (restarted) coordinator meets a worker it has no handshake from: send ``ready`` again."""
    KIND: ClassVar[bytes] = b"hello"
    coordinator_pid: int = 0


@dataclass
class Shutdown(Message):
    """Ask a process to finish what it holds and exit."""
    KIND: ClassVar[bytes] = b"shutdown"
    reason: str = ""


# --- coordinator <-> sink ----------------------------------------------------

@dataclass
class SinkOpen(Message):
    KIND: ClassVar[bytes] = b"sink_open"
    stream: str
    sample_rate: int
    prebuffer_ms: int
    block_ms: int
    deliver: str = "client"
    t_accept: float = 0.0  # time.monotonic() when the coordinator accepted the text


@dataclass
class SinkClose(Message):
    """All blocks of the stream were sent; ``cancelled`` when it was cut short."""
    KIND: ClassVar[bytes] = b"sink_close"
    stream: str
    cancelled: bool = False
    error: str = ""


@dataclass
class SinkDone(Message):
    """The sink delivered a stream: its playback metrics."""
    KIND: ClassVar[bytes] = b"sink_done"
    stream: str
    metrics: dict[str, Any] = field(default_factory=dict)


ALL_MESSAGES: tuple[type[Message], ...] = (
    Speak, Open, Append, End, Cancel, Status,
    Accepted, AudioBlock, Done, Error, StatusReply,
    Ready, SynthChunk, CancelStream, AudioPiece, ChunkFailed, Heartbeat, Dead, Hello, Shutdown,
    SinkOpen, SinkClose, SinkDone,
)
BY_KIND: dict[bytes, type[Message]] = {m.KIND: m for m in ALL_MESSAGES}
CLIENT_REQUESTS: tuple[type[Message], ...] = (Speak, Open, Append, End, Cancel, Status)
