"""Every message that crosses a process boundary, in one place.

A message travels as ZeroMQ frames: ``[kind, header, *pcm]``. ``kind`` is the
ASCII message name (routing needs no decode), ``header`` a msgpack map holding
the fields below plus ``v`` (the protocol version), and audio messages carry one
extra frame of raw little-endian PCM described by their ``format``,
``sample_rate`` and ``sample_count`` fields. Nothing is pickled.

Every string, map and list field a client can send has a bound (``bounded``):
the codec refuses a longer one before any other work is done on it.

`docs/protocol.md` describes the same messages for writers of other clients.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

# 2: audio travels in spans of any length (`audio`), chunk events (`chunk`), paced delivery.
PROTOCOL_VERSION = 2
PCM_FORMAT = "s16le"  # signed 16-bit little-endian mono
BYTES_PER_SAMPLE = 2

MAX_ID_CHARS = 200  # stream ids and status request ids
MAX_NAME_CHARS = 64  # profile names, language codes, override keys
MAX_VOICE_CHARS = 256
MAX_DELIVER_CHARS = 512
MAX_OVERRIDES = 32
MAX_OVERRIDE_STR = 256

# Where a stream's audio goes (`deliver`): back over the client's connection, nowhere (metrics only),
# or to the sink process - the service machine's speakers, or a WAV file "wav:NAME.wav" (a relative
# path inside the service's wav_dir, which the coordinator resolves to an absolute one for the sink).
DELIVER_CLIENT, DELIVER_NONE, DELIVER_SPEAKERS, WAV_PREFIX = "client", "none", "speakers", "wav:"
DELIVERIES = (DELIVER_CLIENT, DELIVER_NONE, DELIVER_SPEAKERS)


def bounded(limit: int, default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A field the codec refuses beyond ``limit`` characters (strings) or entries (maps, lists)."""
    if default is dataclasses.MISSING:
        return field(metadata={"max": limit, **meta})
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata={"max": limit, **meta})
    return field(default=default, metadata={"max": limit, **meta})


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
    stream: str = bounded(MAX_ID_CHARS)
    text: str  # bounded by the service's max_text_chars, checked before any chunking
    profile: str = bounded(MAX_NAME_CHARS, "")
    # Profile fields to override: scalar values only.
    overrides: dict[str, Any] = bounded(MAX_OVERRIDES, {}, key_max=MAX_NAME_CHARS, scalar_max=MAX_OVERRIDE_STR)
    language: str = bounded(MAX_NAME_CHARS, "")
    voice: str = bounded(MAX_VOICE_CHARS, "")
    deliver: str = bounded(MAX_DELIVER_CHARS, DELIVER_CLIENT)  # see DELIVERIES


@dataclass
class Open(Message):
    """Open a stream whose text arrives later as deltas (an LLM writing)."""
    KIND: ClassVar[bytes] = b"open"
    stream: str = bounded(MAX_ID_CHARS)
    profile: str = bounded(MAX_NAME_CHARS, "")
    overrides: dict[str, Any] = bounded(MAX_OVERRIDES, {}, key_max=MAX_NAME_CHARS, scalar_max=MAX_OVERRIDE_STR)
    language: str = bounded(MAX_NAME_CHARS, "")
    voice: str = bounded(MAX_VOICE_CHARS, "")
    deliver: str = bounded(MAX_DELIVER_CHARS, "client")


@dataclass
class Append(Message):
    KIND: ClassVar[bytes] = b"append"
    stream: str = bounded(MAX_ID_CHARS)
    text: str


@dataclass
class End(Message):
    """No more text for this stream: flush the chunker and finish."""
    KIND: ClassVar[bytes] = b"end"
    stream: str = bounded(MAX_ID_CHARS)


@dataclass
class Cancel(Message):
    """Barge-in: no audio of this stream leaves the service after the confirming ``done``."""
    KIND: ClassVar[bytes] = b"cancel"
    stream: str = bounded(MAX_ID_CHARS)


@dataclass
class Status(Message):
    KIND: ClassVar[bytes] = b"status"
    request: str = bounded(MAX_ID_CHARS, "")


# --- coordinator -> client ---------------------------------------------------

@dataclass
class Accepted(Message):
    KIND: ClassVar[bytes] = b"accepted"
    stream: str
    profile: str
    sample_rate: int
    format: str = PCM_FORMAT
    block_samples: int = 0  # the profile's block: what the client library re-cuts spans into
    max_lead_ms: int = 0  # audio sent at most this far ahead of real-time playback (0: unpaced)


@dataclass
class Audio(Message):
    """A contiguous span of a stream's audio: ``sample_offset`` is where it starts in the stream."""
    KIND: ClassVar[bytes] = b"audio"
    PCM_FIELD: ClassVar[str | None] = "pcm"
    stream: str
    epoch: int
    seq: int  # counts the stream's audio messages from 0
    sample_offset: int
    sample_count: int
    sample_rate: int
    format: str = PCM_FORMAT
    pcm: bytes = b""


@dataclass
class ChunkInfo(Message):
    """Which text a stream's audio speaks from ``sample_offset`` on (sent with the chunk's first audio)."""
    KIND: ClassVar[bytes] = b"chunk"
    stream: str
    index: int
    text: str
    text_start: int
    text_end: int
    sample_offset: int


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
    voices: list[str] = field(default_factory=list)  # speaker names a request may pick
    capacity: int = 1  # jobs it advances at once (batch slots)
    streaming: bool = False  # pieces come while a chunk is synthesised (not all at its end)
    chars_per_s: float = 0.0  # text characters synthesised per second (measured), 0 = unknown
    host: str = ""  # the worker's machine: its pid means something only there


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
    due_ms: float = 0.0  # the stream's playback needs this chunk's first audio this far from now


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
    queued_ms: float = 0.0  # first piece only: the chunk's wait in the worker before synthesis began
    engine_ms: float = 0.0  # first piece only: from synthesis start to this piece


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
    load: int = 0  # jobs queued or running
    chars_per_s: float = 0.0  # the engine's measured speed, as in Ready
    gpu_memory_bytes: int = 0  # memory the engine holds on its device (0 on the CPU)
    draining: bool = False  # finishing what it holds before it stops: send it nothing new


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
class Drain(Message):
    """Stop taking new streams; let open ones finish for at most ``deadline_s``, then stop."""
    KIND: ClassVar[bytes] = b"drain"
    deadline_s: float = 30.0


@dataclass
class Shutdown(Message):
    """Ask a process to finish what it holds and exit."""
    KIND: ClassVar[bytes] = b"shutdown"
    reason: str = ""


@dataclass
class Health(Message):
    """The supervisor's view of its processes, pushed to the coordinator's control socket: what a
    client's `status` reports, and how the coordinator learns that the sink was restarted."""
    KIND: ClassVar[bytes] = b"health"
    healthy: bool
    state: dict[str, Any] = field(default_factory=dict)


# --- coordinator -> sink (audio flows one way; only SinkDone comes back) ------

@dataclass
class SinkOpen(Message):
    KIND: ClassVar[bytes] = b"sink_open"
    stream: str
    sample_rate: int
    prebuffer_ms: int
    deliver: str  # DELIVER_SPEAKERS or WAV_PREFIX + an absolute path


@dataclass
class SinkClose(Message):
    """All audio of the stream was sent; ``cancelled`` when it was cut short."""
    KIND: ClassVar[bytes] = b"sink_close"
    stream: str
    cancelled: bool = False
    error: str = ""


@dataclass
class SinkDone(Message):
    """The sink finished a stream (file closed, speakers played out): what it did, and any error."""
    KIND: ClassVar[bytes] = b"sink_done"
    stream: str
    metrics: dict[str, Any] = field(default_factory=dict)


ALL_MESSAGES: tuple[type[Message], ...] = (
    Speak, Open, Append, End, Cancel, Status,
    Accepted, Audio, ChunkInfo, Done, Error, StatusReply,
    Ready, SynthChunk, CancelStream, AudioPiece, ChunkFailed, Heartbeat, Dead, Hello, Drain, Shutdown, Health,
    SinkOpen, SinkClose, SinkDone,
)
BY_KIND: dict[bytes, type[Message]] = {m.KIND: m for m in ALL_MESSAGES}
CLIENT_REQUESTS: tuple[type[Message], ...] = (Speak, Open, Append, End, Cancel, Status)
