"""The coordinator's shell: sockets, the event loop and the clock around `CoordinatorCore`.

Every socket is read without awaiting per message: its file descriptor wakes
the loop, and everything that has arrived is read in one go (at most ``BATCH``
per socket per round, so no socket starves the others), handed to the core, and
what the core decided is sent before the next round. Timers drive the pacing
wake-ups, housekeeping and the slicing of long texts; a probe measures how long
the loop ever stalls.

Clients that vanish are noticed three ways: a send to them fails
(ROUTER_MANDATORY), ZeroMQ's heartbeat times their connection out, or the
socket monitor reports their connection closed; messages carry the file
descriptor they came from (ZMQ_SRCFD), so a closed connection names the clients
it carried and their streams are freed at once, not at their next send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from typing import Any, Callable

import zmq

from pipeline.settings import Settings
from pipeline.wire import protocol as p
from pipeline.wire.codec import decode, encode
from pipeline.wire.frames import readable, recv_frames, send_frames
from pipeline.wire.runpaths import RunPaths, unlink_ipc
from pipeline.wire.security import apply_server_security

from .connections import Connections
from .core import CLIENT, KILL, SINK, WORKER, CoordinatorCore
from .heap import HeapTrimmer
from .outbox import ClientOutbox

log = logging.getLogger("xtts_stream.coordinator")

BATCH = 256  # messages read from one socket per round
CLIENT_PATIENCE_S = 30.0  # a client that takes no reply for this long is given up
CLIENT_RCVHWM = 16  # requests queued per client connection before ZeroMQ stops reading it
SINK_HWM = 100_000
WORKER_HWM = 100_000
LAG_WINDOW_S = 10.0  # "recent" loop stalls: the longest in this window
TICK_S = 0.01  # paced sends are batched into ticks at most this often
SINK_PATIENCE_S = 2.0  # how long what goes to the sink waits for one to connect (it is starting or restarting)


class Once:
    """A callback queued on the running loop at most once until it runs (a wake-up never doubles it);
    after `close` it never runs again (the sockets it would read are gone)."""

    __slots__ = ("fn", "queued", "closed")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.queued = False
        self.closed = False

    def __call__(self) -> None:
        if not self.queued and not self.closed:
            self.queued = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self.queued = False
        if not self.closed:
            self.fn()

    def close(self) -> None:
        self.closed = True


class CoordinatorShell:
    def __init__(self, settings: Settings, run: RunPaths):
        self.settings = settings
        svc = settings.service
        self.run = run
        self.core = CoordinatorCore(settings, boot_id=f"{os.getpid():x}", pid=os.getpid())
        self.ctx = zmq.Context()
        self.clients = self._socket(zmq.ROUTER)
        self.clients.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.clients.setsockopt(zmq.MAXMSGSIZE, svc.max_message_bytes)
        self.clients.setsockopt(zmq.SNDHWM, svc.max_queued_messages_per_client)
        self.clients.setsockopt(zmq.RCVHWM, CLIENT_RCVHWM)
        # ZeroMQ heartbeats close a TCP connection whose peer vanished without a word.
        self.clients.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self.clients.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self.workers = self._socket(zmq.ROUTER)
        self.workers.setsockopt(zmq.SNDHWM, WORKER_HWM)
        self.workers.setsockopt(zmq.RCVHWM, WORKER_HWM)
        # Workers on other hosts join on their own socket (TCP, CURVE): the local ones need no keys.
        self.remote_workers = self._socket(zmq.ROUTER) if svc.worker_endpoint else None
        if self.remote_workers is not None:
            self.remote_workers.setsockopt(zmq.SNDHWM, WORKER_HWM)
            self.remote_workers.setsockopt(zmq.RCVHWM, WORKER_HWM)
            self.remote_workers.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            self.remote_workers.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        self.sink_push = self._socket(zmq.PUSH)
        self.sink_push.setsockopt(zmq.SNDHWM, SINK_HWM)
        self.sink_pull = self._socket(zmq.PULL)
        self.ctl = self._socket(zmq.PULL)
        self.client_conns: Connections | None = None
        self.worker_conns: Connections | None = None
        self.worker_endpoint = ""
        self.exit_code = 0
        # (socket, handler, first frame received without a copy): clients' identity frames carry the
        # connection's file descriptor; workers' PCM frames are handed on as they are.
        # Workers first: audio for listeners already playing is more urgent than a new request.
        self._inputs = [(self.workers, self._on_local_worker, 3), (self.clients, self._on_client, 0),
                        (self.sink_pull, self._on_sink, 99), (self.ctl, self._on_ctl, 99)]
        if self.remote_workers is not None:
            self._inputs.insert(1, (self.remote_workers, self._on_remote_worker, 0))
        self._worker_sock: dict[bytes, zmq.Socket] = {}  # the socket each worker came on
        self._outboxes: dict[bytes, ClientOutbox] = {}
        self.heap = HeapTrimmer()
        self._sink_waiting: deque[tuple[float, p.Message]] = deque()
        self._retries: set[str] = set()
        self._pidfds: dict[bytes, int] = {}
        self._bound: list[str] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._service_soon = Once(self._service)
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._last_tick = 0.0
        self._pump_soon = Once(self._pump)
        self._auth = None
        self.lag_max_ms = 0.0  # the longest any of our callbacks held the loop
        self.lag_recent_ms = 0.0
        self._lag_window_start = 0.0
        self.internal_errors = 0

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    # -- lifecycle -----------------------------------------------------------

    async def serve(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sock, endpoint in ((self.workers, self.run.workers), (self.sink_push, self.run.sink_in),
                               (self.sink_pull, self.run.sink_out), (self.ctl, self.run.ctl("coordinator"))):
            sock.bind(endpoint)
            self._bound.append(endpoint)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        svc = self.settings.service
        self._auth = apply_server_security(self.clients, svc.client_endpoint, svc.curve_keys_dir)
        self.client_conns = Connections(self.clients, self._client_gone, "client")
        self.clients.bind(svc.client_endpoint)
        self._bound.append(svc.client_endpoint)
        log.info("listening for clients on %s", svc.client_endpoint)
        if self.remote_workers is not None:
            self._auth = apply_server_security(self.remote_workers, svc.worker_endpoint, svc.curve_keys_dir,
                                               self._auth)
            self.worker_conns = Connections(self.remote_workers, self._remote_worker_gone, "worker")
            self.remote_workers.bind(svc.worker_endpoint)
            self.worker_endpoint = self.remote_workers.getsockopt(zmq.LAST_ENDPOINT).decode()
            log.info("workers on other hosts join on %s", self.worker_endpoint)
        for sock in self._watched():
            loop.add_reader(sock.getsockopt(zmq.FD), self._service_soon)
        tasks = [asyncio.create_task(self._housekeeping())]
        self._service_soon()
        stop = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if stop not in done:  # a loop ended: this coordinator is half deaf, let the supervisor replace it
            log.critical("a coordinator task ended unexpectedly: %s", [t.exception() for t in done])
            self.exit_code = 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._shutdown()

    def _shutdown(self) -> None:
        self.core.shutdown()
        self._flush()
        # Nothing queued on the loop may touch the sockets once they are closed below.
        self._service_soon.close()
        self._pump_soon.close()
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        for sock in self._watched():
            self._loop.remove_reader(sock.getsockopt(zmq.FD))
        for pidfd in self._pidfds.values():
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        for conns in (self.client_conns, self.worker_conns):
            if conns is not None:
                conns.close()
        self.clients.close(linger=500)  # the shutting_down errors just queued must reach their clients
        self.ctx.destroy(linger=0)
        for endpoint in self._bound:
            unlink_ipc(endpoint)
        log.info("coordinator stopped")

    def _watched(self) -> list[zmq.Socket]:
        monitors = [c.monitor for c in (self.client_conns, self.worker_conns) if c is not None]
        return [s for s, _, _ in self._inputs] + monitors

    # -- the service round ---------------------------------------------------

    def _service(self) -> None:
        """Read what has arrived on every socket, let the core decide, send what it decided."""
        started = time.monotonic()
        more = False
        for sock, handle, zero_copy_from in self._inputs:
            self._tick_if_due()  # paced audio first: a long round must not starve a playing listener
            count = 0
            while count < BATCH and readable(sock):
                frames = recv_frames(sock, zero_copy_from)
                count += 1
                self._safely(handle, frames)
            more |= count == BATCH
            if count:
                self.heap.worked()
        self._read_connections()
        self._flush()
        self._drain_sink()
        self._drain_outboxes()
        self._arm_wake()
        if more or any(readable(s) for s, _, _ in self._inputs):
            self._service_soon()  # the rest next round: other callbacks run first
        self._timed(started)

    def _safely(self, handle, frames) -> None:
        try:
            handle(frames)
        except Exception:  # a bug must fail one message, never the coordinator
            self.internal_errors += 1
            log.exception("handling a message failed")

    def _on_client(self, frames: list) -> None:
        identity = frames[0].bytes
        connected = self.client_conns.seen(identity, frames[0])
        try:
            self.core.client_frames(identity, frames[1:], time.monotonic())
        except Exception as exc:
            self.internal_errors += 1
            log.exception("request from client %s failed", identity.hex())
            self.core.reply(identity, p.Error(code="internal", message=f"internal error: {type(exc).__name__}"))
        if not connected:  # it asked and hung up before we read it
            log.info("client %s disconnected", identity.hex())
            self._client_gone(identity)
        if self.core.unchunked:
            self._pump_soon()

    def _on_local_worker(self, frames: list) -> None:
        identity = frames[0]
        self._worker_sock[identity] = self.workers
        self.core.worker_frames(identity, frames[1:], time.monotonic())
        if identity not in self._pidfds and identity in self.core.workers.workers:
            self._watch(identity, self.core.workers.workers[identity].ready.pid)

    def _on_remote_worker(self, frames: list) -> None:
        """A worker on another host: its death is its connection closing (or its silence)."""
        identity = frames[0].bytes
        connected = self.worker_conns.seen(identity, frames[0])
        self._worker_sock[identity] = self.remote_workers
        self.core.worker_frames(identity, [bytes(f) if i < 2 else f for i, f in enumerate(frames[1:])],
                                time.monotonic())
        if not connected:
            self._remote_worker_gone(identity)

    def _remote_worker_gone(self, identity: bytes) -> None:
        self.core.worker_lost(identity, "its connection closed", time.monotonic())

    def _on_sink(self, frames: list) -> None:
        msg = decode(frames)
        if isinstance(msg, p.SinkDone):
            self.core.sink_done(msg, time.monotonic())

    def _on_ctl(self, frames: list) -> None:
        msg = decode(frames)
        if isinstance(msg, p.Drain):
            self.core.drain(msg.deadline_s, time.monotonic())
        elif isinstance(msg, p.Shutdown):
            log.info("shutdown requested: %s", msg.reason or "no reason given")
            self._stop.set()
        elif isinstance(msg, p.Health):
            self.core.supervisor_health(msg)

    # -- what the core decided -----------------------------------------------

    def _flush(self) -> None:
        """Send what the core decided. A send can consume a socket's read signal (ZeroMQ's descriptor is
        edge-triggered): whatever waits unread is then served by a round scheduled here, not left until
        some unrelated message wakes the loop."""
        self._send_decided()
        if not self._service_soon.queued and any(readable(s) for s in self._watched()):
            self._service_soon()

    def _send_decided(self) -> None:
        for dest, address, msg in self.core.take():
            if dest == CLIENT:
                self._to_client(address, msg)
            elif dest == WORKER:
                self._to_worker(address, msg)
            elif dest == SINK:
                self._to_sink(msg)
            elif dest == KILL:
                self._kill(*address, msg)
        if self.core.out:  # a send failure made the core decide more (a stream failed)
            self._send_decided()

    def _to_client(self, identity: bytes, msg: p.Message) -> None:
        if isinstance(msg, p.StatusReply):
            msg.state.update(self._shell_status())
        frames = [identity, *encode(msg)]
        box = self._outboxes.get(identity)
        if box is None:
            try:
                send_frames(self.clients, frames)
                return
            except zmq.Again:  # its ZeroMQ queue is full: later replies wait in order behind this one
                svc = self.settings.service
                box = self._outboxes[identity] = ClientOutbox(identity, svc.max_client_backlog_s,
                                                              svc.max_client_backlog_bytes, CLIENT_PATIENCE_S,
                                                              time.monotonic())
            except zmq.ZMQError as exc:  # the client went away (ROUTER_MANDATORY)
                log.info("client %s unreachable (%s); dropping its streams", identity.hex(), exc.strerror)
                self._client_gone(identity)
                return
        if not box.offer(msg, frames) and isinstance(msg, p.Audio):
            self.core.audio_dropped(identity, msg)

    def _drain_outboxes(self) -> None:
        if not self._outboxes:
            return
        now = time.monotonic()
        for identity, box in list(self._outboxes.items()):
            result = box.drain(self.clients, now)
            if result is None:
                log.warning("client %s took nothing for %.0f s or is unreachable; %d replies dropped, client "
                            "given up", identity.hex(), box.patience_s, len(box.queue))
                del self._outboxes[identity]
                self._client_gone(identity)
            elif result:
                del self._outboxes[identity]
        if self._outboxes:
            self._retry_later("outboxes", 0.005)

    def _retry_later(self, what: str, delay_s: float) -> None:
        """One pending retry per kind (not one more timer per service round)."""
        if what not in self._retries:
            self._retries.add(what)
            self._loop.call_later(delay_s, self._retry_now, what)

    def _retry_now(self, what: str) -> None:
        self._retries.discard(what)
        self._service_soon()

    def _to_worker(self, identity: bytes, msg: p.Message) -> None:
        try:
            send_frames(self._worker_sock.get(identity, self.workers), [identity, *encode(msg)])
        except zmq.ZMQError as exc:  # its queue is full or it is gone: its death is noticed elsewhere
            log.warning("could not send %s to worker %r: %s", type(msg).__name__, identity, exc.strerror)

    def _to_sink(self, msg: p.Message) -> None:
        self._sink_waiting.append((time.monotonic(), msg))
        self._drain_sink()

    def _drain_sink(self) -> None:
        """Send what waits for the sink, in order. A sink that is not connected (it is starting or being
        restarted) gets SINK_PATIENCE_S to come; then what depends on it fails."""
        while self._sink_waiting:
            t, msg = self._sink_waiting[0]
            try:
                send_frames(self.sink_push, encode(msg))
            except zmq.Again:
                if time.monotonic() - t < SINK_PATIENCE_S:
                    self._retry_later("sink", 0.02)
                    return
                waiting, self._sink_waiting = self._sink_waiting, deque()
                for _, lost in waiting:
                    if not isinstance(lost, p.SinkClose):
                        self.core.sink_unreachable(lost)
                return
            self._sink_waiting.popleft()

    def _kill(self, identity: bytes, pid: int, msg: p.Message) -> None:
        """A worker declared dead: killed if it runs here, asked to stop if it runs elsewhere (its own
        supervisor starts it again)."""
        sock = self._worker_sock.pop(identity, self.workers)
        if sock is not self.workers:
            self.worker_conns.forget(identity)
            self._to_worker_on(sock, identity, msg)
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _to_worker_on(self, sock: zmq.Socket, identity: bytes, msg: p.Message) -> None:
        try:
            send_frames(sock, [identity, *encode(msg)])
        except zmq.ZMQError:
            pass

    # -- clients coming and going --------------------------------------------

    def _read_connections(self) -> None:
        for conns in (self.client_conns, self.worker_conns):
            if conns is not None:
                conns.read_events()

    def _client_gone(self, identity: bytes) -> None:
        self._outboxes.pop(identity, None)
        self.client_conns.forget(identity)
        self.core.client_gone(identity, time.monotonic())

    # -- workers' processes --------------------------------------------------

    def _watch(self, identity: bytes, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError) as exc:  # not Linux, or the process is already gone
            log.warning("cannot watch worker %r pid %d: %s", identity, pid, exc)
            return
        old = self._pidfds.pop(identity, None)
        if old is not None:
            self._loop.remove_reader(old)
            os.close(old)
        self._pidfds[identity] = pidfd
        self._loop.add_reader(pidfd, self._worker_exited, identity, pid, pidfd)

    def _worker_exited(self, identity: bytes, pid: int, pidfd: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        if self._pidfds.get(identity) == pidfd:
            del self._pidfds[identity]
        self._service()  # its last words first (a DEAD reason, final pieces): they may be waiting unread
        self.core.worker_exited(identity, pid, time.monotonic())
        self._flush()

    # -- timers ----------------------------------------------------------------

    def _arm_wake(self) -> None:
        """One timer for the earliest paced send, at most one every TICK_S: each tick serves every stream
        due by then (a send up to TICK_S late costs a listener nothing: it holds the pre-buffer)."""
        wake = self.core.next_wake()
        if wake is None or (self._wake_at is not None and self._wake_at <= wake):
            return
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        wake = max(wake, self._last_tick + TICK_S)
        self._wake_at = wake
        self._wake_handle = self._loop.call_later(max(0.0, wake - time.monotonic()), self._on_wake)

    def _tick_if_due(self) -> None:
        if self._wake_at is not None and self._wake_at <= time.monotonic():
            self._wake_handle.cancel()
            self._on_wake()

    def _on_wake(self) -> None:
        self._wake_handle = self._wake_at = None
        self._last_tick = time.monotonic()
        self.core.tick(self._last_tick)
        self._flush()
        self._arm_wake()
        self._timed(self._last_tick)

    def _pump(self) -> None:
        """One slice of long text per turn of the loop: other clients are served in between."""
        started = time.monotonic()
        try:
            more = self.core.pump(time.monotonic())
        except Exception:
            self.internal_errors += 1
            log.exception("chunking failed")
            more = False
        self._flush()
        self._arm_wake()
        if more:
            self._pump_soon()
        self._timed(started)

    async def _housekeeping(self) -> None:
        interval = max(0.05, self.settings.service.heartbeat_interval_s)
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                self.core.housekeeping(started)
            except Exception:
                self.internal_errors += 1
                log.exception("housekeeping failed")
            if self.core.drained(started):
                log.info("drained: %d stream(s) left; stopping", len(self.core.streams))
                self._stop.set()
            self._flush()
            self._drain_outboxes()
            if not self.core.streams and not self._outboxes:
                self.heap.idle(started)
            self._timed(started)

    def _timed(self, started: float) -> None:
        """Record how long a callback held the loop: nothing else ran meanwhile (the loop's stall)."""
        held_ms = (time.monotonic() - started) * 1000
        if held_ms > self.lag_max_ms:
            self.lag_max_ms = held_ms
        now = time.monotonic()
        if now - self._lag_window_start > LAG_WINDOW_S:
            self.lag_recent_ms, self._lag_window_start = held_ms, now
        elif held_ms > self.lag_recent_ms:
            self.lag_recent_ms = held_ms

    def _shell_status(self) -> dict[str, Any]:
        return {"clients_waiting": len(self._outboxes), "connections": len(self.client_conns),
                "worker_endpoint": self.worker_endpoint,
                "loop_stall_ms_max": round(self.lag_max_ms, 3), "loop_stall_ms_recent": round(self.lag_recent_ms, 3),
                "internal_errors": self.internal_errors, "heap_trims": self.heap.trims}
