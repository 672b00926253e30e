"""The client library: embed xtts-stream as a backend stage of another program.

    async with Client("tcp://127.0.0.1:5555") as client:
        async for block in client.speak("Hello there."):
            play(block.pcm)

    stream = client.open_stream(profile="fast")
    await stream.send("Hello, ")        # deltas, as an LLM writes them
    await stream.end()
    async for block in stream: ...

One DEALER socket per client carries any number of concurrent streams; a
reader task routes replies to each stream's queue. The service sends audio in
spans of any length; iterating an utterance re-cuts them into the profile's
blocks (`spans()` gives them as they came, `messages()` with the chunk events).
Every call, sends included, gives up after ``timeout_s`` with a clear error.
Imports neither torch nor coqui-tts. `SyncClient` wraps the same for blocking code.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import zmq
import zmq.asyncio

from pipeline.wire.codec import DecodeError, decode, encode

from .wire import protocol as p


class ServiceError(RuntimeError):
    """The service refused or failed a request; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, stream: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stream = stream


class ServiceUnavailable(ServiceError):
    pass


_END = object()


async def within(awaitable: Any, timeout_s: float) -> Any:
    """Await with a deadline (TimeoutError past it). Python 3.11's asyncio.wait_for can swallow a
    cancellation that arrives as the awaited thing completes, leaving the caller's task unkillable;
    asyncio.timeout does not."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout_s):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout_s)  # Python 3.10


@dataclass(slots=True)
class Block:
    """A fixed-size piece of a stream's audio (the profile's ``block_ms``; the last may be shorter)."""

    stream: str
    epoch: int
    seq: int
    sample_offset: int
    sample_count: int
    sample_rate: int
    pcm: Any  # bytes-like s16le mono


@dataclass
class Utterance:
    """One stream's replies: iterate for blocks (or `spans()` for the audio as it came); `metrics` is set once done."""

    client: "Client"
    stream: str
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    accepted: p.Accepted | None = None
    metrics: dict[str, Any] | None = None
    t_sent: float = field(default_factory=time.monotonic)
    t_first_block: float | None = None
    cancelled: bool = False
    dropped_after_cancel: int = 0
    chunks: list[p.ChunkInfo] = field(default_factory=list)  # which text each stretch of audio speaks
    on_chunk: Callable[[p.ChunkInfo], Any] | None = None
    _finished: bool = False
    _cut: deque = field(default_factory=deque)  # blocks cut from spans, not yet yielded
    _carry: bytes = b""  # the part of a block still waiting for the next span
    _seq: int = 0
    _offset: int = 0
    _rate: int = 0
    _epoch: int = 0

    async def send(self, delta: str) -> None:
        await self.client._send(p.Append(stream=self.stream, text=delta))

    async def end(self) -> None:
        await self.client._send(p.End(stream=self.stream))

    async def cancel(self) -> None:
        """Barge-in. Audio already on its way is dropped here, so none is yielded after this."""
        self.cancelled = True
        await self.client._send(p.Cancel(stream=self.stream))

    @property
    def client_ttfa_ms(self) -> float | None:
        return (self.t_first_block - self.t_sent) * 1000 if self.t_first_block else None

    def __aiter__(self) -> AsyncIterator[Block]:
        return self._blocks()

    async def messages(self) -> AsyncIterator[p.Accepted | p.Audio | p.ChunkInfo]:
        """The stream's acceptance, audio spans and chunk events in the order they arrived, until done
        (an error is raised)."""
        while (item := await self._next_item()) is not None:
            yield item

    async def spans(self) -> AsyncIterator[p.Audio]:
        """The audio as the service sent it: contiguous spans of any length."""
        while (span := await self._next_span()) is not None:
            yield span

    async def _next_item(self) -> p.Accepted | p.Audio | p.ChunkInfo | None:
        """The next reply, None once done; an error is raised. Nothing is returned after cancel()."""
        while not self._finished:
            item = await self.client._next(self)
            if item is _END:
                self._finished = True
                return None
            if isinstance(item, Exception):
                self._finished = True
                raise item
            if self.cancelled:
                self.dropped_after_cancel += isinstance(item, p.Audio)
                continue
            return item
        return None

    async def _next_span(self) -> p.Audio | None:
        while (item := await self._next_item()) is not None:
            if isinstance(item, p.Audio):
                return item
        return None

    async def _blocks(self) -> AsyncIterator[Block]:
        """Spans re-cut into the profile's blocks. The cutting state lives on the utterance, so an
        iteration that stops early and a later one together see every block once."""
        while True:
            while self._cut:
                if self.cancelled:  # blocks already cut: nothing after cancel()
                    self._cut.clear()
                    break
                yield self._cut.popleft()
            if self._finished:
                return
            span = await self._next_span()
            if span is None:
                if self._carry and not self.cancelled:
                    count = len(self._carry) // p.BYTES_PER_SAMPLE
                    self._cut.append(Block(self.stream, self._epoch, self._seq, self._offset, count,
                                           self._rate, self._carry))
                    self._carry = b""
                    continue
                return
            self._cut_span(span)

    def _cut_span(self, span: p.Audio) -> None:
        size = (self.accepted.block_samples if self.accepted else 0) or span.sample_count
        self._rate, self._epoch = span.sample_rate, span.epoch
        data = memoryview(self._carry + bytes(span.pcm)) if self._carry else memoryview(span.pcm)
        step = size * p.BYTES_PER_SAMPLE
        whole = len(data) // step * step
        for start in range(0, whole, step):
            self._cut.append(Block(self.stream, self._epoch, self._seq, self._offset, size, self._rate,
                                   data[start:start + step]))
            self._seq += 1
            self._offset += size
        self._carry = bytes(data[whole:])

    async def collect(self) -> bytes:
        """All the audio as one PCM byte string (s16le at ``accepted.sample_rate``)."""
        return b"".join([bytes(span.pcm) async for span in self.spans()])


class Client:
    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", timeout_s: float = 60.0,
                 curve_server_key: bytes | None = None, curve_client_keys: tuple[bytes, bytes] | None = None):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # ZeroMQ heartbeats notice a service that vanished without closing the connection.
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if curve_server_key and curve_client_keys:
            self.sock.curve_serverkey = curve_server_key
            self.sock.curve_publickey, self.sock.curve_secretkey = curve_client_keys
        self.sock.connect(endpoint)
        self._streams: dict[str, Utterance] = {}
        self._status: dict[str, asyncio.Future] = {}
        # Errors that name no open stream of ours (e.g. for a malformed request): kept for inspection.
        self.unrouted_errors: deque[ServiceError] = deque(maxlen=100)
        self._ids = itertools.count()
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._reader: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._watchers: set[asyncio.Task] = set()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for task in (self._reader, self._monitor, *self._watchers):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.sock.close()
        self.ctx.term()

    # -- requests ------------------------------------------------------------

    def speak(self, text: str, profile: str = "", overrides: dict[str, Any] | None = None, language: str = "",
              voice: str = "", deliver: str = "client", stream: str | None = None) -> Utterance:
        utt = self._new(stream)
        self._start(utt, p.Speak(stream=utt.stream, text=text, profile=profile, overrides=overrides or {},
                                 language=language, voice=voice, deliver=deliver))
        return utt

    def open_stream(self, profile: str = "", overrides: dict[str, Any] | None = None, language: str = "",
                    voice: str = "", deliver: str = "client", stream: str | None = None) -> Utterance:
        utt = self._new(stream)
        self._start(utt, p.Open(stream=utt.stream, profile=profile, overrides=overrides or {}, language=language,
                                voice=voice, deliver=deliver))
        return utt

    async def status(self, timeout_s: float | None = None) -> p.StatusReply:
        """The service's health and load; every step (the send too) within ``timeout_s``."""
        timeout = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout
        request = f"{self._prefix}-status-{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._status[request] = fut
        self._ensure_reader()
        try:
            await self._send(p.Status(request=request), timeout)
            return await within(fut, max(0.0, deadline - time.monotonic()))
        except (asyncio.TimeoutError, TimeoutError):
            raise ServiceUnavailable("timeout", f"no status reply from {self.endpoint} within {timeout:.1f} s "
                                     "(is the service running and ready?)") from None
        finally:
            self._status.pop(request, None)

    async def wait_ready(self, timeout_s: float = 120.0) -> p.StatusReply:
        """Until the service answers and has a worker ready to speak."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable("timeout", f"service at {self.endpoint} not ready within {timeout_s:.0f} s")
            try:
                reply = await self.status(min(left, 2.0))
            except ServiceUnavailable:
                continue
            if reply.state.get("serving"):
                return reply
            if not reply.healthy:
                raise ServiceUnavailable("unhealthy", f"service at {self.endpoint} is unhealthy: {reply.state}")
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- internals -----------------------------------------------------------

    def _new(self, stream: str | None) -> Utterance:
        sid = stream or f"{self._prefix}-{next(self._ids)}"
        if not 0 < len(sid) <= p.MAX_ID_CHARS:
            raise ValueError(f"a stream id must be 1 to {p.MAX_ID_CHARS} characters")
        if sid in self._streams:
            raise ValueError(f"stream id '{sid}' is already in use on this client")
        utt = Utterance(self, sid)
        self._streams[sid] = utt
        return utt

    def _start(self, utt: Utterance, msg: p.Message) -> None:
        # The send is queued now, so a later awaited send(delta) cannot overtake it
        # (pyzmq keeps sends in call order); a watcher bounds how long it may wait.
        self._ensure_reader()
        sending = self.sock.send_multipart(encode(msg), copy=False)
        watcher = asyncio.get_running_loop().create_task(self._await_start(utt, sending))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _await_start(self, utt: Utterance, sending: asyncio.Future) -> None:
        try:
            await within(sending, self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            self._streams.pop(utt.stream, None)
            utt.queue.put_nowait(self._send_timeout(self.timeout_s))

    async def _send(self, msg: p.Message, timeout_s: float | None = None) -> None:
        timeout = timeout_s or self.timeout_s
        try:
            await within(self.sock.send_multipart(encode(msg), copy=False), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise self._send_timeout(timeout) from None

    def _send_timeout(self, timeout: float) -> ServiceUnavailable:
        return ServiceUnavailable("timeout", f"could not send to {self.endpoint} within {timeout:.1f} s: no "
                                  "connection (is the service running, and are the CURVE keys right?)")

    def _ensure_reader(self) -> None:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = loop.create_task(self._read())
            self._monitor = loop.create_task(self._watch_connection())

    async def _watch_connection(self) -> None:
        """A dropped connection means the service (or its coordinator) died: the
        streams it held cannot finish, so they fail now instead of timing out."""
        from zmq.utils.monitor import parse_monitor_message
        monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            while True:
                parse_monitor_message(await monitor.recv_multipart())
                lost, self._streams = self._streams, {}
                for utt in lost.values():
                    utt.queue.put_nowait(ServiceUnavailable(
                        "connection_lost", f"the connection to {self.endpoint} dropped (the service stopped, or "
                        f"its coordinator is being restarted); stream '{utt.stream}' cannot finish", utt.stream))
        finally:
            self.sock.disable_monitor()
            monitor.close()

    async def _next(self, utt: Utterance):
        try:
            return await within(utt.queue.get(), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            self._streams.pop(utt.stream, None)
            return ServiceUnavailable("timeout", f"no reply for stream '{utt.stream}' within {self.timeout_s:.0f} s")

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            try:
                msg = decode(frames)
            except DecodeError as exc:
                self.unrouted_errors.append(ServiceError(exc.code, f"undecodable reply: {exc}"))
                continue
            self._route(msg)

    def _route(self, msg: p.Message) -> None:
        if isinstance(msg, p.StatusReply):
            fut = self._status.get(msg.request)
            if fut and not fut.done():
                fut.set_result(msg)
            return
        utt = self._streams.get(getattr(msg, "stream", ""))
        if utt is None:
            if isinstance(msg, p.Error):
                self.unrouted_errors.append(ServiceError(msg.code, msg.message, msg.stream))
            return
        if isinstance(msg, p.Audio):
            utt.t_first_block = utt.t_first_block or time.monotonic()
            utt.queue.put_nowait(msg)
        elif isinstance(msg, p.ChunkInfo):
            utt.chunks.append(msg)
            utt.queue.put_nowait(msg)
            if utt.on_chunk is not None:
                try:
                    utt.on_chunk(msg)
                except Exception:  # the caller's bug must not stop the reader every stream shares
                    logging.getLogger("xtts_stream.client").exception("on_chunk callback failed")
        elif isinstance(msg, p.Accepted):
            utt.accepted = msg
            utt.queue.put_nowait(msg)
        elif isinstance(msg, p.Done):
            utt.metrics = msg.metrics
            self._streams.pop(utt.stream, None)
            utt.queue.put_nowait(_END)
        elif isinstance(msg, p.Error):
            if msg.code == "chunk_failed":  # the stream goes on without that chunk
                return
            self._streams.pop(utt.stream, None)
            utt.queue.put_nowait(ServiceError(msg.code, msg.message, msg.stream))


class SyncClient:
    """Blocking wrapper: each call runs the async client on a private event loop."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", timeout_s: float = 60.0, **curve: Any):
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(self._make(endpoint, timeout_s, curve))

    @staticmethod
    async def _make(endpoint: str, timeout_s: float, curve: dict[str, Any]) -> Client:
        return Client(endpoint, timeout_s, **curve)

    def speak(self, text: str, **kwargs: Any) -> tuple[bytes, dict[str, Any], int]:
        """Speak and wait: (PCM s16le, metrics, sample rate)."""
        async def run():
            utt = self._client.speak(text, **kwargs)
            pcm = await utt.collect()
            return pcm, utt.metrics or {}, utt.accepted.sample_rate if utt.accepted else 0
        return self._loop.run_until_complete(run())

    def status(self, timeout_s: float | None = None) -> p.StatusReply:
        return self._loop.run_until_complete(self._client.status(timeout_s))

    def wait_ready(self, timeout_s: float = 120.0) -> p.StatusReply:
        return self._loop.run_until_complete(self._client.wait_ready(timeout_s))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
