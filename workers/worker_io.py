"""The worker's IO thread: moves frames between its sockets and the synthesis loop.

The synthesis loop never touches a socket: this thread owns the DEALER to the
coordinator and the control socket, decodes what arrives onto the loop's
inbound queue, and sends what the loop puts on an inproc pipe. A worker on
another host reaches its coordinator over TCP with CURVE; the thread also
watches that connection, so the worker can say when it is actually joined.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import parse_monitor_message

from pipeline.wire import protocol as p
from pipeline.wire.codec import DecodeError, decode, encode
from pipeline.wire.frames import recv_frames, send_frames
from pipeline.wire.runpaths import bind_claimed

log = logging.getLogger("xtts_stream.worker")

OUTBOUND_HWM = 100_000  # messages queued for the coordinator (the engine's load bounds what is in flight)


@dataclass(frozen=True)
class Link:
    """How the worker reaches its coordinator."""

    endpoint: str
    curve: tuple[bytes, tuple[bytes, bytes]] | None = None  # server public key, (our public, our secret)


class WorkerIO(threading.Thread):
    """Moves frames between sockets and the synthesis loop's queues."""

    def __init__(self, ctx: zmq.Context, identity: bytes, link: Link, ctl_endpoint: str, inbound: queue.Queue):
        super().__init__(name="worker-io", daemon=True)
        self.inbound = inbound
        self.ctl_endpoint = ctl_endpoint
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.IDENTITY, identity)
        self.dealer.setsockopt(zmq.LINGER, 2000)
        # Pieces wait here while the coordinator is busy; dropping one would leave its stream a gap.
        self.dealer.setsockopt(zmq.SNDHWM, OUTBOUND_HWM)
        if link.curve is not None:
            self.dealer.curve_serverkey = link.curve[0]
            self.dealer.curve_publickey, self.dealer.curve_secretkey = link.curve[1]
            self.dealer.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            self.dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        self.monitor = self.dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.connected = threading.Event()  # the coordinator took our connection (and our keys)
        self.dealer.connect(link.endpoint)
        self.ctl = ctx.socket(zmq.PULL)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl_file = bind_claimed(self.ctl, ctl_endpoint)
        self.pipe_in = ctx.socket(zmq.PULL)
        self.pipe_in.bind(f"inproc://out-{id(self)}")
        self.pipe_out = ctx.socket(zmq.PUSH)  # used by the synthesis thread only
        self.pipe_out.connect(f"inproc://out-{id(self)}")
        self.stopped = threading.Event()
        self.dropped = 0

    def send(self, msg: p.Message) -> None:
        """Called from the synthesis thread."""
        send_frames(self.pipe_out, encode(msg), flags=0)

    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.dealer, self.ctl, self.pipe_in, self.monitor):
            poller.register(sock, zmq.POLLIN)
        while not self.stopped.is_set():
            for sock, _ in poller.poll(100):
                if sock is self.monitor:
                    self._connection_event()
                    continue
                frames = recv_frames(sock, zero_copy_from=99, flags=0)
                if sock is self.pipe_in:
                    self._to_coordinator(frames)
                    continue
                try:
                    self.inbound.put(decode(frames))
                except DecodeError as exc:
                    log.error("undecodable message on %s: %s", "control" if sock is self.ctl else "dealer", exc)

    def _to_coordinator(self, frames: list) -> None:
        """Never blocks: with no coordinator to take it (none connected, or our keys refused), a message
        is dropped - a coordinator that comes back cancels the old streams anyway (hello)."""
        try:
            send_frames(self.dealer, frames)
        except zmq.Again:
            self.dropped += 1
            if self.dropped in (1, 10, 100, 1000):
                log.warning("no coordinator takes our messages; %d dropped so far", self.dropped)

    def _connection_event(self) -> None:
        event = parse_monitor_message(self.monitor.recv_multipart())["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected.set()
        elif event == zmq.EVENT_DISCONNECTED:
            self.connected.clear()
            log.warning("lost the connection to the coordinator; reconnecting")

    def flush_and_close(self) -> None:
        """Send what the loop queued, then close; called after the loop has stopped."""
        self.stopped.set()
        self.join(timeout=2)
        while self.pipe_in.poll(0):
            self._to_coordinator(recv_frames(self.pipe_in, zero_copy_from=99, flags=0))
        # Last words (a DEAD notice, final pieces) get a moment to leave; a
        # coordinator that is already gone must not hold the exit for long.
        self.dealer.setsockopt(zmq.LINGER, 200)
        self.dealer.disable_monitor()
        for sock in (self.monitor, self.pipe_out, self.pipe_in, self.ctl, self.dealer):
            sock.close()

    def remove_ctl_file(self) -> None:
        """Once the context is terminated (the control socket no longer listens)."""
        if self.ctl_file is not None:
            self.ctl_file.remove()
