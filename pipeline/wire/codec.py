"""The one codec: protocol messages <-> ZeroMQ frames.

``encode`` returns ``[kind, header, *pcm]``; PCM bytes are passed through as a
separate frame, never packed into the header (`frames.send_frames` sends
them). ``decode``
checks the version, every field's type and bound, and the PCM frame's length
against the header, and raises `DecodeError` with a message fit to send back to
a client. Bounds are checked before anything else looks at a value, and every
error message quotes at most a few dozen characters of what it refuses, so a
request's cost is linear in its size and its error reply is small.
"""

from __future__ import annotations

import dataclasses
import threading
from functools import lru_cache
from typing import Any, Sequence

import msgpack

from .protocol import BY_KIND, BYTES_PER_SAMPLE, MAX_ID_CHARS, PCM_FORMAT, PROTOCOL_VERSION, Message

# msgpack's own limits while unpacking: no header needs more, so a hostile one costs nothing to refuse.
_UNPACK_LIMITS = dict(max_map_len=4096, max_array_len=4096, max_ext_len=0)
_SHOWN = 40  # characters of a refused value quoted in an error


class DecodeError(ValueError):
    """Frames that are not a valid message; ``code`` is a stable machine-readable name, ``stream``
    the stream the message named when it could be read."""

    def __init__(self, code: str, message: str, stream: str = ""):
        super().__init__(message)
        self.code = code
        self.stream = stream


# Exact types: msgpack gives plain ones, and a bool (an int subclass) is not an integer here.
def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_scalar(v: Any) -> bool:
    return type(v) in (str, int, float, bool) and v == v  # NaN is not a value


_CHECKS = {
    "str": lambda v: type(v) is str,
    "int": _is_int,
    "float": lambda v: type(v) is float or type(v) is int,
    "bool": lambda v: type(v) is bool,
    "bytes": lambda v: isinstance(v, (bytes, bytearray, memoryview)),
    "dict[str, Any]": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "dict[str, int]": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) for k, x in v.items()),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
               "dict[str, Any]": "a map with string keys", "dict[str, int]": "a map of string to integer",
               "list[str]": "a list of strings"}


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    type: str
    required: bool
    limit: int | None  # characters (str) or entries (map, list)
    key_limit: int | None
    scalar_limit: int | None  # set: map values must be scalars, strings at most this long

    @property
    def bounded(self) -> bool:
        return self.limit is not None or self.key_limit is not None or self.scalar_limit is not None


@lru_cache(maxsize=None)
def _schema(cls: type[Message]) -> tuple[_Field, ...]:
    """The header fields; the PCM field travels as a frame."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name == cls.PCM_FIELD:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        meta = f.metadata
        out.append(_Field(f.name, str(f.type), required, meta.get("max"), meta.get("key_max"),
                          meta.get("scalar_max")))
    return tuple(out)


@lru_cache(maxsize=None)
def _plan(cls: type[Message]) -> tuple[tuple, frozenset]:
    """What decoding checks per field, worked out once per message type: (field, check, float?, bounded?)
    for each, and the known names."""
    fields = _schema(cls)
    return (tuple((f, _CHECKS[f.type], f.type == "float", f.bounded) for f in fields),
            frozenset(["v", *(f.name for f in fields)]))


_local = threading.local()


def _packer() -> msgpack.Packer:
    """One packer per thread: msgpack.packb builds a new one per call, a fifth of a small message's cost."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def encode(msg: Message) -> list[Any]:
    header: dict[str, Any] = {"v": PROTOCOL_VERSION}
    for f in _schema(type(msg)):
        header[f.name] = getattr(msg, f.name)
    frames: list[Any] = [msg.KIND, _packer().pack(header)]
    if msg.PCM_FIELD:
        frames.append(getattr(msg, msg.PCM_FIELD))
    return frames


def decode(frames: Sequence[Any]) -> Message:
    if len(frames) < 2:
        raise DecodeError("bad_frames", f"expected [kind, header, ...] frames, got {len(frames)} frame(s)")
    kind = bytes(frames[0]) if len(frames[0]) <= 64 else b"?" * 65
    cls = BY_KIND.get(kind)
    if cls is None:
        shown = kind[:_SHOWN].decode("ascii", "replace")
        raise DecodeError("unknown_kind", f"unknown message kind '{shown}'; valid: "
                          + ", ".join(sorted(k.decode() for k in BY_KIND)))
    header = _unpack_header(frames[1].buffer if hasattr(frames[1], "buffer") else frames[1])
    stream = _stream_of(header)
    try:
        _check_version(header)
        values = _checked_values(cls, header)
        if cls.PCM_FIELD:
            values[cls.PCM_FIELD] = _checked_pcm(cls, header, frames)
        elif len(frames) != 2:
            raise DecodeError("bad_frames", f"'{kind.decode()}' takes no extra frames, got {len(frames) - 2}")
    except DecodeError as exc:
        exc.stream = stream
        raise
    return cls(**values)


def _unpack_header(raw: Any) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except UnicodeDecodeError:
        raise DecodeError("bad_utf8", "a string in the header is not valid UTF-8") from None
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError("bad_header", f"header is not a msgpack map: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", f"header must be a msgpack map, got {type(header).__name__}")
    return header


def _stream_of(header: dict[str, Any]) -> str:
    """The stream a message names, when it is a plausible id: errors about the message name it too."""
    stream = header.get("stream")
    return stream if isinstance(stream, str) and 0 < len(stream) <= MAX_ID_CHARS else ""


def _check_version(header: dict[str, Any]) -> None:
    version = header.get("v")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        shown = repr(version)[:_SHOWN] if _is_int(version) or isinstance(version, (str, float, bool)) or version is None \
            else f"a {type(version).__name__}"
        hint = " (version 1 sent fixed 25 ms `block` messages; see docs/protocol.md for what changed)" \
            if version == 1 else ""
        raise DecodeError("bad_version", f"protocol version {shown} is not supported; this service speaks "
                          f"{PROTOCOL_VERSION} (an integer){hint}")


def _checked_values(cls: type[Message], header: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    plan, known = _plan(cls)
    for f, check, is_float, bounded in plan:
        if f.name not in header:
            if f.required:
                raise DecodeError("missing_field", f"'{cls.KIND.decode()}' needs field '{f.name}'")
            continue
        value = header[f.name]
        if bounded:
            _check_bounds(f, value, cls.KIND.decode())
        if not check(value):
            raise DecodeError("bad_type", f"field '{f.name}' of '{cls.KIND.decode()}' must be "
                              f"{_TYPE_NAMES.get(f.type, f.type)}, got {type(value).__name__}")
        values[f.name] = float(value) if is_float else value
    if not known.issuperset(header):
        unknown = sorted(str(k)[:_SHOWN] for k in set(header) - known)
        raise DecodeError("unknown_field", f"unknown field(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                          f"in '{cls.KIND.decode()}'")
    return values


def _check_bounds(f: _Field, value: Any, where: str) -> None:
    """Sizes first: nothing longer than its bound is looked at any further."""
    if f.limit is not None and isinstance(value, (str, dict, list)) and len(value) > f.limit:
        unit = "characters" if isinstance(value, str) else "entries"
        raise DecodeError("too_long", f"field '{f.name}' of '{where}' has {len(value)} {unit}; the limit is {f.limit}")
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if f.key_limit is not None and isinstance(key, str) and len(key) > f.key_limit:
            raise DecodeError("too_long", f"a key in '{f.name}' of '{where}' has {len(key)} characters; "
                              f"the limit is {f.key_limit}")
        if f.scalar_limit is None:
            continue
        if not _is_scalar(item):
            raise DecodeError("bad_type", f"'{f.name}.{str(key)[:_SHOWN]}' of '{where}' must be a string, number "
                              f"or boolean, got {type(item).__name__}")
        if isinstance(item, str) and len(item) > f.scalar_limit:
            raise DecodeError("too_long", f"'{f.name}.{str(key)[:_SHOWN]}' of '{where}' has {len(item)} characters; "
                              f"the limit is {f.scalar_limit}")


def _checked_pcm(cls: type[Message], header: dict[str, Any], frames: Sequence[Any]) -> Any:
    if len(frames) != 3:
        raise DecodeError("bad_frames", f"'{cls.KIND.decode()}' needs exactly one PCM frame")
    if header.get("format", PCM_FORMAT) != PCM_FORMAT:
        raise DecodeError("bad_format", f"audio format {str(header.get('format'))[:_SHOWN]!r} is not {PCM_FORMAT}")
    pcm = frames[2]
    buf = pcm.buffer if hasattr(pcm, "buffer") else pcm
    if len(buf) != header["sample_count"] * BYTES_PER_SAMPLE:
        raise DecodeError("bad_pcm", f"PCM frame has {len(buf)} bytes, header says {header['sample_count']} samples")
    return buf
