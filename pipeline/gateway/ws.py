"""`WS /v1/audio/stream`: text deltas in (as an LLM writes them), PCM out as it is spoken.

One stream at a time per connection, any number one after another. JSON text
messages in: ``open``, ``append``, ``end``, ``cancel``. Out: binary frames of
s16le mono PCM (any size, in order, contiguous) and JSON events: ``accepted``
(just before the first audio), ``chunk`` (where each chunk's audio starts),
``done`` (with the service's metrics) and ``error`` (the ZeroMQ protocol's
codes, the field at fault, and whether it ended the stream or only refused a message). docs/http.md has the details.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import accepted_subprotocol
from .errors import ApiError, from_service
from .options import check_known, stream_options
from .relay import Item, Relay

log = logging.getLogger("xtts_stream.gateway")

OPEN_FIELDS = ("type", "model", "profile", "voice", "language", "speed", "overrides")


class StreamSession:
    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.gateway = ws.app.state.gateway
        self.client = self.gateway.backend.client(ws.scope[self.gateway.caller_key])
        self.relay: Relay | None = None
        self.sender: asyncio.Task | None = None
        self.ended = False  # the open stream got its end: more text would be refused by the service
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        await self.ws.accept(subprotocol=accepted_subprotocol(self.ws.scope))
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await self._handle(message)
        except WebSocketDisconnect:
            return
        finally:
            await self._stop_stream()

    async def _handle(self, message: dict[str, Any]) -> None:
        try:
            request = self._parse(message)
            await HANDLERS[request["type"]](self, request)
        except ApiError as exc:
            await self.send_json({"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                                  "ends_stream": False})

    def _parse(self, message: dict[str, Any]) -> dict[str, Any]:
        if message.get("text") is None:
            raise ApiError(400, "bad_message", "send JSON text messages; binary frames are not taken")
        try:
            request = json.loads(message["text"])
        except (ValueError, RecursionError):
            raise ApiError(400, "bad_message", "a message must be one JSON object") from None
        if not isinstance(request, dict):
            raise ApiError(400, "bad_message", "a message must be one JSON object")
        if request.get("type") not in HANDLERS:
            raise ApiError(400, "bad_message", f"type must be one of {', '.join(HANDLERS)}", "type")
        return request

    # -- requests ------------------------------------------------------------

    async def _open(self, request: dict[str, Any]) -> None:
        if self.relay is not None and not self._over():
            raise ApiError(409, "stream_open", "a stream is already open on this connection; end or cancel it first")
        check_known(request, OPEN_FIELDS)
        options = stream_options(request, self.gateway.settings)
        await self._stop_stream()
        self.ended = False
        utt = self.client.open_stream(**options.kwargs())
        self.relay = Relay(utt, self.gateway.max_backlog_s).start()
        self.sender = asyncio.get_running_loop().create_task(self._forward(self.relay))

    async def _append(self, request: dict[str, Any]) -> None:
        check_known(request, ("type", "text"))
        text = request.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "invalid_field", "text must be a string", "text")
        self._check_open()
        if text:
            await self.relay.utt.send(text)

    async def _end(self, request: dict[str, Any]) -> None:
        check_known(request, ("type",))
        self._check_open()
        self.ended = True
        await self.relay.utt.end()

    async def _cancel(self, request: dict[str, Any]) -> None:
        check_known(request, ("type",))
        if not self._over():
            await self.relay.cancel()  # the stream's done (cancelled: true) follows

    def _check_open(self) -> None:
        # Refused here, not sent on: the service's refusal would end the stream still being spoken.
        if self._over():
            raise ApiError(409, "no_stream", "no open stream: send open first")
        if self.ended:
            raise ApiError(409, "stream_ended", "the stream has ended: no more text; open a new one")

    def _over(self) -> bool:
        return self.relay is None or self.sender is None or self.sender.done()

    # -- replies -------------------------------------------------------------

    async def _forward(self, relay: Relay) -> None:
        """The stream's audio and events, in order, until its done or error."""
        sent = 0
        while True:
            for item in await relay.next():
                if item.kind == "accepted":
                    await self.send_json(_accepted(relay))
                elif item.kind == "audio":
                    await self._send_bytes(item.pcm)
                    sent += len(item.pcm) // 2
                elif item.kind == "chunk":
                    await self.send_json({"type": "chunk", **item.chunk})
                elif item.kind == "done":
                    await self.send_json({"type": "done", "samples": sent, "metrics": item.metrics or {}})
                    return
                else:
                    await self.send_json(_error(item))
                    return

    async def _stop_stream(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
            await asyncio.gather(self.sender, return_exceptions=True)
        if self.relay is not None:
            await self.relay.close()

    async def send_json(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(event, default=str, separators=(",", ":")))

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(data)


HANDLERS = {"open": StreamSession._open, "append": StreamSession._append, "end": StreamSession._end,
            "cancel": StreamSession._cancel}


def _accepted(relay: Relay) -> dict[str, Any]:
    acc = relay.utt.accepted
    return {"type": "accepted", "stream": relay.utt.stream, "profile": acc.profile, "sample_rate": acc.sample_rate,
            "format": "s16le", "channels": 1, "block_samples": acc.block_samples, "max_lead_ms": acc.max_lead_ms}


def _error(item: Item) -> dict[str, Any]:
    err = from_service(item.error.code, item.error.message)
    return {"type": "error", "code": err.code, "message": err.message, "param": err.param, "ends_stream": True}


async def stream_socket(ws: WebSocket) -> None:
    await StreamSession(ws).run()
