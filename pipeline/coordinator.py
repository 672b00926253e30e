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
from .service_metrics import ServiceMetrics
from .settings import Settings
from .streams import StreamState
from .worker_pool import WorkerHandle, WorkerPool

log = logging.getLogger("xtts_stream.coordinator")

CLIENT_PATIENCE_S = 30.0  # a client that takes no reply for this long is given up
SINK_HWM = 100_000  # blocks queued for the sink: bursts of many streams, not a stalled sink, reach it


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
        self.sink_push.setsockopt(zmq.SNDHWM, SINK_HWM)
        self.sink_pull = self._socket(zmq.PULL)
        self.ctl = self._socket(zmq.PULL)
        self.streams: dict[str, StreamState] = {}
        self.backlog: list[tuple[float, p.SynthChunk]] = []  # (when queued, chunk) while no worker is ready
        self.pool = WorkerPool(self.worker_sock, settings.service.heartbeat_timeout_s,
                               on_dead=self._worker_dead, on_ready=self._worker_ready)
        self.requests = StreamRequests(self)
        self.engine_info: dict[str, object] = {}
        self.sample_rate = 0
        self.health: dict[str, object] = {"healthy": True}
        self.slow_client_drops = 0
        self.metrics = ServiceMetrics()
        self._outboxes: dict[bytes, ClientOutbox] = {}
        self._sink_pid: int | None = None
        self.exit_code = 0
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
        loops = [self._loop("clients", self.clients, self._on_client),
                 self._loop("workers", self.worker_sock, self._on_worker),
                 self._loop("sink", self.sink_pull, self._on_sink),
                 self._loop("control", self.ctl, self._on_ctl), self._housekeeping()]
        self._tasks = [asyncio.create_task(coro) for coro in loops]
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        if stop not in done:  # a loop ended: this coordinator is half deaf, let the supervisor replace it
            log.critical("a coordinator loop ended unexpectedly: %s", [t.exception() for t in done])
            self.exit_code = 1
        await self._shutdown()

    async def _loop(self, name: str, sock: zmq.asyncio.Socket, handle) -> None:
        """Read one socket forever; a message that fails is logged, never fatal to the loop."""
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                await handle(frames)
            except Exception:
                log.exception("%s: handling a message failed", name)

    async def _shutdown(self) -> None:
        async def fail_all() -> None:
            for st in list(self.streams.values()):
                await self.requests.fail(st, "shutting_down", "the service is shutting down")
        try:
            await asyncio.wait_for(fail_all(), self.settings.service.stop_grace_s / 2)
        except asyncio.TimeoutError:
            log.warning("not every client could be told of the shutdown in time")
        for task in self._tasks + [box.task for box in self._outboxes.values() if box.task]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.clients.close(linger=500)  # the shutting_down errors just queued must reach their clients
        self.ctx.destroy(linger=0)
        for endpoint in self._bound:
            unlink_ipc(endpoint)
        log.info("coordinator stopped")

    # -- clients -------------------------------------------------------------

    async def _on_client(self, frames) -> None:
        identity = frames[0].bytes
        msg = None
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
            await self.reply(identity, p.Error(code="internal", message=f"internal error: {exc}",
                                               stream=str(getattr(msg, "stream", ""))))

    async def reply(self, identity: bytes, msg: p.Message) -> bool:
        """Send to a client without ever waiting on it: False when the message had to be dropped."""
        if isinstance(msg, p.Done):
            self.metrics.observe_done(msg.metrics)
        elif isinstance(msg, p.Error):
            self.metrics.observe_error(msg.code, ends_stream=bool(msg.stream))
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
        # The box leaves the map in the same step its queue empties, so no reply
        # can be queued into a box nobody drains any more.
        box = ClientOutbox(self.clients, identity, self.settings.service.max_client_backlog_s, CLIENT_PATIENCE_S,
                           self._client_gone, on_empty=lambda: self._outboxes.pop(identity, None))
        self._outboxes[identity] = box
        box.task = asyncio.get_running_loop().create_task(box.drain())
        return box

    async def _client_gone(self, identity: bytes) -> None:
        for st in [s for s in self.streams.values() if s.client == identity]:
            await self.requests.abandon(st)

    # -- workers -------------------------------------------------------------

    async def _on_worker(self, frames) -> None:
        identity = frames[0].bytes
        try:
            msg = decode(frames[1:])
        except DecodeError as exc:
            log.error("undecodable message from worker %r: %s", identity, exc)
            return
        if isinstance(msg, p.Ready):
            self._greeted.discard(identity)
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
        for _, chunk in backlog:
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

    async def send_sink(self, msg: p.Message, patience_s: float = 0.0) -> bool:
        """False when no sink is connected (it is restarting) within ``patience_s``: the caller
        fails what depends on it. Never blocks the loop on a missing sink."""
        frames = encode(msg)
        deadline = time.monotonic() + patience_s
        while True:
            try:
                await self.sink_push.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.05)

    async def _on_sink(self, frames) -> None:
        msg = decode(frames)
        if isinstance(msg, p.AudioBlock):
            await self.requests.deliver_block(msg)
        elif isinstance(msg, p.SinkDone):
            await self.requests.on_sink_done(msg)

    # -- control and housekeeping -------------------------------------------

    async def _on_ctl(self, frames) -> None:
        msg = decode(frames)
        if isinstance(msg, p.Shutdown):
            log.info("shutdown requested: %s", msg.reason or "no reason given")
            self._stop.set()
        elif isinstance(msg, p.StatusReply):  # the supervisor's view of process health
            self.health = {"healthy": msg.healthy, **msg.state}
            await self._check_sink(msg.state)

    async def _check_sink(self, state: dict) -> None:
        """A new sink process knows none of the streams the old one held: they cannot finish."""
        sink = state.get("processes", {}).get("sink", {})
        pid = sink.get("pid") if isinstance(sink, dict) else None
        if self._sink_pid is not None and pid != self._sink_pid:
            for st in list(self.streams.values()):
                await self.requests.fail(st, "sink_restarted", "the audio sink died and was restarted; "
                                         "this stream's audio cannot be completed, send it again")
        self._sink_pid = pid

    async def _housekeeping(self) -> None:
        interval = max(0.05, self.settings.service.heartbeat_interval_s)
        while True:
            await asyncio.sleep(interval)
            try:
                self.pool.check_heartbeats()
                await self.requests.expire_backlog()
                await self.requests.expire_idle()
            except Exception:
                log.exception("housekeeping failed")

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
            "metrics": self.metrics.snapshot(
                gauges={"open_streams": len(self.streams),
                        "queue_depth": len(self.backlog) + sum(len(w.inflight) for w in self.pool.workers.values())},
                totals={"worker_deaths": self.pool.deaths,
                        "worker_restarts": sum(proc.get("restarts", 0) for name, proc in
                                               self.health.get("processes", {}).items() if name.startswith("w"))}),
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
    coordinator = Coordinator(settings, run)
    run_loop(coordinator.serve())
    return coordinator.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
