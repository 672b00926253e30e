"""`POST /v1/audio/speech`, compatible with OpenAI's: the audio streams from the first block.

The status line and headers wait for the stream's first block, so every
refusal before it (a bad voice, text too long, no worker) is an ordinary HTTP
error naming the field; no byte of audio waits for more than that. A failure
after the first block cannot change the status any more: an audio response is
cut off (its chunked body never completes, which HTTP clients report as a
truncated body), an SSE response gets an ``error`` event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .encoders import CONTENT_TYPES, FORMATS, encoder
from .errors import ApiError, field_error, from_service
from .options import StreamOptions, check_known, optional_str, stream_options
from .relay import Item, Relay

log = logging.getLogger("xtts_stream.gateway")

FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format", "instructions", "profile",
          "language", "overrides")


@dataclass
class SpeechRequest:
    text: str
    options: StreamOptions
    response_format: str
    sse: bool


def parse_speech(body: dict[str, Any], settings) -> SpeechRequest:
    check_known(body, FIELDS)
    text = body.get("input")
    if not isinstance(text, str):
        raise field_error("input", "input is required: the text to speak, a string")
    limit = settings.service.max_text_chars
    if len(text) > limit:
        raise field_error("input", f"input has {len(text)} characters; the limit is {limit}", "text_too_long")
    if not text.strip():
        raise field_error("input", "input is empty", "nothing_to_speak")
    fmt = optional_str(body, "response_format") or "mp3"
    if fmt not in FORMATS:
        raise field_error("response_format", f"response_format must be one of {', '.join(FORMATS)}")
    stream_format = optional_str(body, "stream_format") or "audio"
    if stream_format not in ("audio", "sse"):
        raise field_error("stream_format", "stream_format must be audio or sse")
    optional_str(body, "instructions", max_chars=4096)  # accepted for compatibility; this engine cannot follow them
    return SpeechRequest(text, stream_options(body, settings), fmt, stream_format == "sse")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, never reading more than ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deep enough to exhaust the parser
        raise ApiError(400, "invalid_json", "the request body is not valid JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return data


async def create_speech(request: Request) -> Response:
    gateway = request.app.state.gateway
    req = parse_speech(await read_json(request, gateway.max_body_bytes), gateway.settings)
    utt = gateway.backend.client(request.scope[gateway.caller_key]).speak(req.text, **req.options.kwargs())
    relay = Relay(utt, gateway.max_backlog_s).start()
    try:
        first: list[Item] = []
        while not any(i.kind in DECISIVE for i in first):  # the status waits for audio, done or an error
            first += await relay.next()
        _raise_before_audio(first, req)
    except BaseException:
        await relay.close()
        raise
    return SpeechStream(relay, first, req, relay.sample_rate(first))


DECISIVE = ("audio", "done", "error")


def _raise_before_audio(items: list[Item], req: SpeechRequest) -> None:
    head = next(i for i in items if i.kind in DECISIVE)
    if head.kind == "error":
        raise from_service(head.error.code, head.error.message)
    if head.kind == "done" and not any(i.kind == "audio" for i in items):
        # Every chunk failed (the service goes on past a failed chunk, so this
        # ends with done); for XTTS an unknown speaker name does this.
        raise ApiError(502, "chunk_failed", "the service made no audio for this input: every chunk failed"
                       + (f" (is '{req.options.voice}' a speaker of this model?)" if req.options.voice else ""),
                       "voice" if req.options.voice else None)


class SpeechStream(Response):
    """A chunked audio (or SSE) body fed from a relay; the stream is cancelled at the service if the peer leaves."""

    def __init__(self, relay: Relay, first: list[Item], req: SpeechRequest, sample_rate: int):
        self.relay = relay
        self.first = first
        self.sse = req.sse
        self.input_chars = len(req.text)
        self.encoder = encoder(req.response_format, sample_rate)
        self.status_code = 200
        media = "text/event-stream" if req.sse else CONTENT_TYPES[req.response_format]
        self.init_headers({"content-type": media, "cache-control": "no-store", "x-sample-rate": str(sample_rate),
                           "x-audio-format": req.response_format})
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        body = asyncio.ensure_future(self._body(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait([body, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (body, gone):
                task.cancel()
            await asyncio.gather(body, gone, return_exceptions=True)
            if body.done() and not body.cancelled() and body.exception() is not None:
                log.error("speech stream %s failed", self.relay.utt.stream, exc_info=body.exception())
            await self.relay.close()
            if hasattr(self.encoder, "close"):
                self.encoder.close()

    async def _body(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await self._write(send, self.encoder.start())
        items = self.first
        while True:
            for item in items:
                if item.kind == "audio":
                    await self._write(send, self.encoder.feed(item.pcm))
                elif item.kind == "done":
                    await self._write(send, self.encoder.finish())
                    if self.sse:
                        await self._event(send, {"type": "speech.audio.done", "usage": _usage(self.input_chars, item.metrics),
                                                 "metrics": item.metrics})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                elif item.kind == "error":
                    await self._fail(send, item)
                    return
            items = await self.relay.next()

    async def _write(self, send, data: bytes) -> None:
        if not data:
            return
        if self.sse:
            await self._event(send, {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        else:
            await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _event(self, send, event: dict[str, Any]) -> None:
        data = json.dumps(event, default=str, separators=(",", ":"))
        await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})

    async def _fail(self, send, item: Item) -> None:
        exc = item.error
        log.warning("speech stream %s failed after its audio began: %s", self.relay.utt.stream, exc)
        if self.sse:
            await self._event(send, {"type": "error", **from_service(exc.code, exc.message).body()})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # An audio body is left incomplete: the server closes the connection
        # without the final chunk, and the client sees a truncated response.


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _usage(chars: int, metrics: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI's usage fields. This service counts no tokens: characters in, audio blocks out."""
    blocks = int((metrics or {}).get("blocks") or 0)
    return {"input_tokens": chars, "output_tokens": blocks, "total_tokens": chars + blocks}
