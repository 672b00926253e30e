"""Reading Wyoming events with bounds, so a client cannot make the server buffer without limit.

The framing is the wyoming package's: a JSON header line, then `data_length`
bytes of JSON merged into its data, then `payload_length` bytes of payload. The
package's own reader trusts both lengths; this one checks them (and the
header's shape) before reading a byte more, and says what was wrong.
"""

from __future__ import annotations

import asyncio
import json

from wyoming.event import Event

# A synthesize event carries text in its data; the service refuses more than its
# max_text_chars anyway, so this only has to stop absurd sizes early.
MAX_DATA_BYTES = 1 << 20
# A TTS server is sent no audio; payloads are read (and dropped with their event) up to this.
MAX_PAYLOAD_BYTES = 1 << 20


class EventError(ValueError):
    """The client sent something that is not a well-formed Wyoming event within the bounds."""


async def read_event(reader: asyncio.StreamReader, max_data: int = MAX_DATA_BYTES,
                     max_payload: int = MAX_PAYLOAD_BYTES) -> Event | None:
    """The next event, or None when the client closed the connection."""
    try:
        line = await reader.readline()
    except ValueError:  # longer than the reader's line limit (64 KiB)
        raise EventError("event header line too long (over 64 KiB)") from None
    if not line:
        return None
    header = _header(line)
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise EventError("event 'data' must be a JSON object")
    data_length = _length(header, "data_length", max_data)
    payload_length = _length(header, "payload_length", max_payload)
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise EventError("event data must be a JSON object")
            data = {**data, **extra}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None  # closed in the middle of an event
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"event data is not valid JSON: {exc}") from None
    return Event(type=header["type"], data=data, payload=payload)


def _header(line: bytes) -> dict:
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"event header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str) or not header["type"]:
        raise EventError("event header must be a JSON object with a 'type' string")
    return header


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EventError(f"'{key}' must be a non-negative integer, got {value!r}")
    if value > limit:
        raise EventError(f"'{key}' {value} exceeds this server's limit of {limit} bytes")
    return value
