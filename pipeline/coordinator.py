"""The coordinator process: clients in, chunks to workers, ordered blocks to the sink.

It runs on uvloop and never touches torch. Each socket has one reading task;
handlers are short and never raise out of their loop, so one bad request or
one dead worker fails only what it must.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import zmq
import zmq.asyncio

from . import protocol as p
from .codec import DecodeError, decode, encode
from .outbox import ClientOutbox
from .requests import RequestError, StreamRequests
from .runpaths import RunPaths, unlink_ipc
from .security import apply_server_security
from .settings import Settings
from .streams import StreamState
from .worker_pool import WorkerHandle, WorkerPool

log = logging.getLogger("xtts_stream.coordinator")


class Coordinator:
    def __init__(self, settings: Settings, run: RunPaths):
        self.settings = settings
        self.run = run
        self.ctx = zmq.asyncio.Context()
        self.clients = self._socket(zmq.ROUTER)
        self.clients.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.clients.setsockopt(zmq.MAXMSGSIZE, settings.service.max_message_bytes)
        self.clients.setsockopt(zmq.SNDHWM, settings.service.max_queued_messages_per_client)
        self.worker_sock = self._socket(zmq.ROUTER)
        self.sink_push = self._socket(zmq.PUSH)
        self.sink_pull = self._socket(zmq.PULL)
        self.ctl = self._socket(zmq.PULL)
        self.streams: dict[str, StreamState] = {}
        self.backlog: list[p.SynthChunk] = []
        self.pool = WorkerPool(self.worker_sock, settings.service.heartbeat_timeout_s,
                               on_dead=self._worker_dead, on_ready=self._worker_ready)
        self.requests = StreamRequests(self)
        self.engine_info: dict[str, object] = {}
        self.sample_rate = 0
        self.health: dict[str, object] = {"healthy": True}
        self.slow_client_drops = 0
        self._outboxes: dict[bytes, ClientOutbox] = {}
        self._sink_pid: int | None = None
        self._greeted: set[bytes] = set()
        self._stop = asyncio.Event()
        self._serving = asyncio.Event()
        self._bound: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._auth = None

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    # -- lifecycle -----------------------------------------------------------

    async def serve(self) -> None:
        for sock, endpoint in ((self.worker_sock, self.run.workers), (self.sink_push, self.run.sink_in),
                               (self.sink_pull, self.run.sink_out), (self.ctl, self.run.ctl("coordinator"))):
            sock.bind(endpoint)
            self._bound.append(endpoint)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._auth = apply_server_security(self.clients, self.settings.service.client_endpoint,
                                           self.settings.service.curve_keys_dir)
        self.clients.bind(self.settings.service.client_endpoint)
        self._bound.append(self.settings.service.client_endpoint)
        log.info("listening for clients on %s", self.settings.service.client_endpoint)
        self._tasks = [asyncio.create_task(coro) for coro in (
            self._worker_loop(), self._sink_loop(), self._ctl_loop(), self._housekeeping(), self._client_loop())]
        await self._stop.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        for st in list(self.streams.values()):
            await self.requests.fail(st, "shutting_down", "the service is shutting down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.clients.close(linger=500)  # the shutting_down errors just queued must reach their clients
        self.ctx.destroy(linger=0)
        for endpoint in self._bound:
            unlink_ipc(endpoint)
        log.info("coordinator stopped")

    # -- clients -------------------------------------------------------------

    async def _client_loop(self) -> None:
        while True:
            frames = await self.clients.recv_multipart(copy=False)
            identity = frames[0].bytes
            try:
                msg = decode(frames[1:])
                await self.requests.handle(identity, msg)
            except DecodeError as exc:
                log.warning("bad request from client %s: %s", identity.hex(), exc)
                await self.reply(identity, p.Error(code=exc.code, message=str(exc)))
            except RequestError as exc:
                await self.reply(identity, p.Error(code=exc.code, message=str(exc), stream=exc.stream))
            except Exception as exc:  # a bug must fail the request, never the service
                log.exception("request from client %s failed", identity.hex())
                await self.reply(identity, p.Error(code="internal", message=f"internal error: {exc}"))

    async def reply(self, identity: bytes, msg: p.Message) -> bool:
        """Send to a client without ever waiting on it: False when the message had to be dropped."""
        frames = [identity, *encode(msg)]
        box = self._outboxes.get(identity)
        if box is None:  # nothing waiting for this client: straight to ZeroMQ
            try:
                await self.clients.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:  # its ZeroMQ queue is full: later replies wait in order behind this one
                box = self._open_outbox(identity)
            except zmq.ZMQError as exc:  # the client went away (ROUTER_MANDATORY)
                log.info("client %s unreachable (%s); dropping its streams", identity.hex(), exc.strerror)
                await self._client_gone(identity)
                return False
        if box.offer(msg, frames):
            return True
        if isinstance(msg, p.AudioBlock):
            self.slow_client_drops += 1
        return False

    def _open_outbox(self, identity: bytes) -> ClientOutbox:
        box = ClientOutbox(self.clients, identity, self.settings.service.max_client_backlog_s, 30.0,
                           self._client_gone)
        self._outboxes[identity] = box
        task = asyncio.get_running_loop().create_task(box.drain())
        task.add_done_callback(lambda _: self._outboxes.pop(identity, None))
        return box

    async def _client_gone(self, identity: bytes) -> None:
        for st in [s for s in self.streams.values() if s.client == identity]:
            await self.requests.abandon(st)

    # -- workers -------------------------------------------------------------

    async def _worker_loop(self) -> None:
        while True:
            frames = await self.worker_sock.recv_multipart(copy=False)
            identity = frames[0].bytes
            try:
                msg = decode(frames[1:])
            except DecodeError as exc:
                log.error("undecodable message from worker %r: %s", identity, exc)
                continue
            try:
                await self._on_worker_message(identity, msg)
            except Exception:
                log.exception("handling %s from worker %r failed", type(msg).__name__, identity)

    async def _on_worker_message(self, identity: bytes, msg: p.Message) -> None:
        if isinstance(msg, p.Ready):
            self.pool.ready(identity, msg)
            return
        worker = self.pool.beat(identity)
        if worker is None:
            if isinstance(msg, p.Heartbeat) and identity not in self._greeted:
                # A worker that outlived a previous coordinator: ask for its handshake.
                self._greeted.add(identity)
                await self.worker_sock.send_multipart([identity, *encode(p.Hello(coordinator_pid=os.getpid()))])
            log.debug("dropping %s from unknown or dead worker %r", type(msg).__name__, identity)
            return
        if isinstance(msg, p.AudioPiece):
            if msg.final:
                self.pool.settle(worker, (msg.stream, msg.epoch, msg.chunk_index))
            await self.requests.on_piece(msg)
        elif isinstance(msg, p.ChunkFailed):
            self.pool.settle(worker, (msg.stream, msg.epoch, msg.chunk_index))
            await self.requests.on_chunk_failed(msg)
        elif isinstance(msg, p.Dead):
            self.pool.mark_dead(worker, f"reported: {msg.reason}")

    def _worker_ready(self, worker: WorkerHandle) -> None:
        r = worker.ready
        self.engine_info = {"engine": r.engine, "model": r.model, "dtype": r.dtype, "device": r.device}
        self.sample_rate = r.sample_rate
        if not self._serving.is_set():
            log.info("serving: the first worker is ready")
        self._serving.set()
        backlog, self.backlog = self.backlog, []
        for chunk in backlog:
            self._spawn(self.requests.send_chunk_by_sid(chunk))

    def _worker_dead(self, worker: WorkerHandle, reason: str) -> None:
        self._spawn(self.requests.redispatch(worker, reason))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- sink ----------------------------------------------------------------

    async def send_sink(self, msg: p.Message) -> None:
        await self.sink_push.send_multipart(encode(msg), copy=False)

    async def _sink_loop(self) -> None:
        while True:
            frames = await self.sink_pull.recv_multipart(copy=False)
            try:
                msg = decode(frames)
                if isinstance(msg, p.AudioBlock):
                    await self.requests.deliver_block(msg)
                elif isinstance(msg, p.SinkDone):
                    await self.requests.on_sink_done(msg)
            except Exception:
                log.exception("handling a sink message failed")

    # -- control and housekeeping -------------------------------------------

    async def _ctl_loop(self) -> None:
        while True:
            frames = await self.ctl.recv_multipart()
            try:
                msg = decode(frames)
            except DecodeError as exc:
                log.warning("bad control message: %s", exc)
                continue
            if isinstance(msg, p.Shutdown):
                log.info("shutdown requested: %s", msg.reason or "no reason given")
                self._stop.set()
            elif isinstance(msg, p.StatusReply):  # the supervisor's view of process health
                self.health = {"healthy": msg.healthy, **msg.state}
                await self._check_sink(msg.state)

    async def _check_sink(self, state: dict) -> None:
        """A new sink process knows none of the streams the old one held: they cannot finish."""
        pid = state.get("processes", {}).get("sink", {}).get("pid")
        if self._sink_pid is not None and pid != self._sink_pid:
            for st in list(self.streams.values()):
                await self.requests.fail(st, "sink_restarted", "the audio sink died and was restarted; "
                                         "this stream's audio cannot be completed, send it again")
        self._sink_pid = pid

    async def _housekeeping(self) -> None:
        interval = max(0.05, self.settings.service.heartbeat_interval_s)
        while True:
            await asyncio.sleep(interval)
            self.pool.check_heartbeats()
            await self.requests.expire_backlog()
            await self.requests.expire_idle()

    @property
    def serving(self) -> bool:
        """A worker has been ready once: the sample rate is known and streams can be accepted."""
        return self._serving.is_set()

    def status(self) -> dict[str, object]:
        return {
            "serving": self._serving.is_set(),
            "streams": len(self.streams),
            "backlog": len(self.backlog),
            "workers": [{"name": w.name, "pid": w.ready.pid, "engine": w.ready.engine, "inflight": len(w.inflight),
                         "silent_s": round(time.monotonic() - w.last_beat, 3)} for w in self.pool.workers.values()],
            "worker_deaths": self.pool.deaths,
            "blocks_dropped_slow_client": self.slow_client_drops,
            "clients_waiting": len(self._outboxes),
            "last_worker_death": self.pool.last_death,
            "engine": self.engine_info,
            "sample_rate": self.sample_rate,
            "supervisor": self.health,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.coordinator")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s coordinator %(levelname)s %(name)s: %(message)s")
    run = RunPaths(args.run_dir)
    settings = run.read_settings()
    try:
        import uvloop
        run_loop = uvloop.run
    except ImportError:
        log.info("uvloop not installed; using the default asyncio loop")
        run_loop = asyncio.run
    run_loop(Coordinator(settings, run).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
