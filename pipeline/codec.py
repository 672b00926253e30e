"""The one codec: protocol messages <-> ZeroMQ frames.

``encode`` returns ``[kind, header, *pcm]``; PCM bytes are passed through as a
separate frame (zero-copy with ``send_multipart(copy=False)``). ``decode``
checks the version, every field's type and the PCM frame's length against the
header, and raises `DecodeError` with a message fit to send back to a client.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Sequence

import msgpack

from .protocol import BY_KIND, BYTES_PER_SAMPLE, PCM_FORMAT, PROTOCOL_VERSION, Message


class DecodeError(ValueError):
    """Frames that are not a valid message; ``code`` is a stable machine-readable name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


_CHECKS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "bytes": lambda v: isinstance(v, (bytes, bytearray, memoryview)),
    "dict[str, Any]": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "dict[str, int]": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, int) for k, x in v.items()),
}
_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
               "dict[str, Any]": "a map with string keys", "dict[str, int]": "a map of string to integer"}


@lru_cache(maxsize=None)
def _schema(cls: type[Message]) -> tuple[tuple[str, str, bool], ...]:
    """(name, type, required) per header field; the PCM field travels as a frame."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name == cls.PCM_FIELD:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, str(f.type), required))
    return tuple(out)


def encode(msg: Message) -> list[Any]:
    header: dict[str, Any] = {"v": PROTOCOL_VERSION}
    for name, _, _ in _schema(type(msg)):
        header[name] = getattr(msg, name)
    frames: list[Any] = [msg.KIND, msgpack.packb(header, use_bin_type=True)]
    if msg.PCM_FIELD:
        frames.append(getattr(msg, msg.PCM_FIELD))
    return frames


def decode(frames: Sequence[Any]) -> Message:
    if len(frames) < 2:
        raise DecodeError("bad_frames", f"expected [kind, header, ...] frames, got {len(frames)} frame(s)")
    kind = bytes(frames[0])
    cls = BY_KIND.get(kind)
    if cls is None:
        shown = kind[:40].decode("ascii", "replace")
        raise DecodeError("unknown_kind", f"unknown message kind '{shown}'; valid: "
                          + ", ".join(sorted(k.decode() for k in BY_KIND)))
    header = _unpack_header(bytes(frames[1]))
    values = _checked_values(cls, header)
    if cls.PCM_FIELD:
        values[cls.PCM_FIELD] = _checked_pcm(cls, header, frames)
    elif len(frames) != 2:
        raise DecodeError("bad_frames", f"'{kind.decode()}' takes no extra frames, got {len(frames) - 2}")
    return cls(**values)


def _unpack_header(raw: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except UnicodeDecodeError:
        raise DecodeError("bad_utf8", "a string in the header is not valid UTF-8") from None
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError("bad_header", f"header is not a msgpack map: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", f"header must be a msgpack map, got {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise DecodeError("bad_version", f"protocol version {version!r} is not supported; this service speaks {PROTOCOL_VERSION}")
    return header


def _checked_values(cls: type[Message], header: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known = {"v"}
    for name, type_name, required in _schema(cls):
        known.add(name)
        if name not in header:
            if required:
                raise DecodeError("missing_field", f"'{cls.KIND.decode()}' needs field '{name}'")
            continue
        value = header[name]
        if not _CHECKS[type_name](value):
            raise DecodeError("bad_type", f"field '{name}' of '{cls.KIND.decode()}' must be "
                              f"{_TYPE_NAMES.get(type_name, type_name)}, got {type(value).__name__}")
        values[name] = float(value) if type_name == "float" else value
    unknown = set(header) - known
    if unknown:
        raise DecodeError("unknown_field", f"unknown field(s) {sorted(map(str, unknown))} in '{cls.KIND.decode()}'")
    return values


def _checked_pcm(cls: type[Message], header: dict[str, Any], frames: Sequence[Any]) -> Any:
    if len(frames) != 3:
        raise DecodeError("bad_frames", f"'{cls.KIND.decode()}' needs exactly one PCM frame")
    if header.get("format", PCM_FORMAT) != PCM_FORMAT:
        raise DecodeError("bad_format", f"audio format {header.get('format')!r} is not {PCM_FORMAT}")
    pcm = frames[2]
    size = len(pcm.buffer if hasattr(pcm, "buffer") else pcm)
    if size != header["sample_count"] * BYTES_PER_SAMPLE:
        raise DecodeError("bad_pcm", f"PCM frame has {size} bytes, header says {header['sample_count']} samples")
    return pcm.buffer if hasattr(pcm, "buffer") else pcm
