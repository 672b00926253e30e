"""The sink process: plays or writes audio on the service's machine (WAV files, speakers).

    python -m workers.sink --in ENDPOINT --out ENDPOINT --ctl ENDPOINT [--name sink]

It connects a PULL socket to ``--in`` (SinkOpen, Audio spans, SinkClose from
the coordinator: audio flows one way), connects a PUSH socket to ``--out`` (only
SinkDone goes back, when a stream's file is closed or its playback is over) and
binds a PULL socket on ``--ctl`` (Shutdown). Audio for clients never passes
through here. One poller loop in the main thread; signal handlers only set
state. Nothing a message holds can stop the loop: a message that fails fails its
stream, which reports the reason in its SinkDone.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sys
import time
from typing import Any

import zmq

from pipeline.processes.lifeline import die_with_parent
from pipeline.wire.codec import DecodeError, decode, encode
from pipeline.wire.protocol import Audio, Shutdown, SinkClose, SinkDone, SinkOpen
from pipeline.wire.runpaths import bind_claimed

from .stream import SinkStream

log = logging.getLogger("xtts_stream.sink")

POLL_MS = 250  # idle wake-ups: only playing speakers need a look between messages
# Drain of already-queued input on a Shutdown message (SIGTERM skips it).
SHUTDOWN_DRAIN_S = 0.5
QUICK_SEND_TIMEOUT_S = 0.2
# Unknown stream ids we already warned about; bounded so a flood cannot grow it.
MAX_WARNED_STREAMS = 1024
# SinkDone messages held while the coordinator does not read (it is restarting).
MAX_PENDING = 4096


class Sink:
    def __init__(self, ctx: zmq.Context, in_ep: str, out_ep: str, ctl_ep: str, *,
                 name: str = "sink", hwm: int = 4096, send_timeout_s: float = 1.0):
        self.name = name
        self.send_timeout_s = send_timeout_s
        self.streams: dict[str, SinkStream] = {}
        self.draining: dict[str, SinkStream] = {}  # closed, speakers still playing
        self.stop: str | None = None  # None, "shutdown" or "signal"
        self._pending: collections.deque[list[Any]] = collections.deque()
        self._warned: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.inp = ctx.socket(zmq.PULL)
        self.inp.setsockopt(zmq.RCVHWM, hwm)
        self.inp.setsockopt(zmq.LINGER, 0)
        self.inp.connect(in_ep)
        self.out = ctx.socket(zmq.PUSH)
        self.out.setsockopt(zmq.SNDHWM, hwm)
        self.out.setsockopt(zmq.LINGER, int(send_timeout_s * 1000))
        self.out.connect(out_ep)
        self.ctl = ctx.socket(zmq.PULL)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl_file = bind_claimed(self.ctl, ctl_ep)

    # --- the loop -------------------------------------------------------------

    def run(self) -> int:
        log.info("%s: running (pid %d)", self.name, os.getpid())
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        poller.register(self.inp, zmq.POLLIN)
        while self.stop is None:
            events = dict(poller.poll(POLL_MS))
            if self.ctl in events:
                self._on_ctl(self.ctl.recv_multipart(copy=False))
            if self.inp in events and self.stop is None:
                for _ in range(256):  # what has arrived, then the control socket again
                    try:
                        frames = self.inp.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_input(frames)
            self._flush()
            self._reap_draining(time.monotonic())
        self._finish()
        return 0

    def _decoded(self, frames: list[Any], socket_name: str) -> Any:
        """The message, or None (logged) when the frames are not one."""
        try:
            return decode(frames)
        except DecodeError as exc:
            log.warning("%s: dropping an undecodable %s message (%s): %s", self.name, socket_name, exc.code, exc)
            return None

    def _on_ctl(self, frames: list[Any]) -> None:
        msg = self._decoded(frames, "control")
        if msg is None:
            return
        if isinstance(msg, Shutdown):
            log.info("%s: shutdown requested%s", self.name, f" ({msg.reason})" if msg.reason else "")
            self.stop = "shutdown"
        else:
            log.warning("%s: ignoring '%s' on the control socket", self.name, msg.KIND.decode())

    def _on_input(self, frames: list[Any]) -> None:
        msg = self._decoded(frames, "input")
        if msg is None:
            return
        try:
            self._handle(msg)
        except Exception as exc:  # whatever a message holds, it fails its stream, never the sink
            log.exception("%s: handling '%s' failed", self.name, msg.KIND.decode())
            stream = self.streams.get(getattr(msg, "stream", ""))
            if stream is not None:
                stream.fail(f"the sink could not handle '{msg.KIND.decode()}': {type(exc).__name__}: "
                            f"{str(exc)[:200]}")

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, Audio):
            stream = self.streams.get(msg.stream)
            if stream is None:
                self._warn_unknown(msg.stream, f"audio {msg.seq}")
            else:
                stream.take(msg)
        elif isinstance(msg, SinkOpen):
            self._on_open(msg)
        elif isinstance(msg, SinkClose):
            self._on_close(msg)
        else:
            log.warning("%s: ignoring unexpected '%s' on the input socket", self.name, msg.KIND.decode())

    # --- stream messages --------------------------------------------------------

    def _on_open(self, msg: SinkOpen) -> None:
        if msg.stream in self.streams or msg.stream in self.draining:
            log.warning("%s: stream '%s' is already open; ignoring the second SinkOpen", self.name, msg.stream)
            return
        self._drop_orphans(_owner(msg.stream))
        stream = SinkStream(msg)
        self.streams[msg.stream] = stream
        log.info("%s: stream '%s' open (deliver=%s, %d Hz, prebuffer %d ms)%s", self.name, msg.stream,
                 msg.deliver[:120], msg.sample_rate, msg.prebuffer_ms, f": {stream.error}" if stream.error else "")

    def _drop_orphans(self, owner: str | None) -> None:
        """Streams of an earlier coordinator (ids are "<coordinator pid>.<n>") will never
        be closed by anyone: the first stream of a new coordinator releases them."""
        if owner is None:
            return
        for key in [k for k in self.streams if _owner(k) not in (None, owner)]:
            log.warning("%s: releasing stream '%s' of a coordinator that is gone", self.name, key)
            self.streams.pop(key).release()

    def _on_close(self, msg: SinkClose) -> None:
        stream = self.streams.pop(msg.stream, None)
        if stream is None:
            self._warn_unknown(msg.stream, "SinkClose")
            # The coordinator waits for a SinkDone; say why there is no real one.
            self._send(encode(SinkDone(msg.stream, {"error": f"sink has no open stream '{msg.stream[:200]}'"})))
            return
        if msg.error:
            log.info("%s: stream '%s' closed with upstream error: %s", self.name, msg.stream, msg.error)
        stream.close(cancelled=msg.cancelled)
        if stream.playing():
            self.draining[msg.stream] = stream
        else:
            self._done(stream)

    def _done(self, stream: SinkStream) -> None:
        stream.release()
        metrics = stream.metrics()
        log.info("%s: stream '%s' done: %s", self.name, stream.open.stream, metrics)
        self._send(encode(SinkDone(stream.open.stream, metrics)))

    def _reap_draining(self, now: float) -> None:
        for key in [k for k, s in self.draining.items() if not s.playing(now)]:
            self._done(self.draining.pop(key))

    def _warn_unknown(self, stream: str, what: str) -> None:
        if stream in self._warned:
            return
        self._warned[stream] = None
        if len(self._warned) > MAX_WARNED_STREAMS:
            self._warned.popitem(last=False)
        log.warning("%s: dropping %s for stream '%s' that has no SinkOpen (further drops not logged)",
                    self.name, what, stream[:200])

    # --- output -----------------------------------------------------------------

    def _send(self, frames: list[Any]) -> None:
        self._pending.append(frames)
        while len(self._pending) > MAX_PENDING:  # nobody reads: the oldest news is the least useful
            self._pending.popleft()
        self._flush()

    def _flush(self) -> bool:
        """Send what waits, without blocking; True when nothing is left."""
        while self._pending:
            try:
                self.out.send_multipart(self._pending[0], copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                return False
            self._pending.popleft()
        return True

    # --- shutdown ---------------------------------------------------------------

    def _finish(self) -> None:
        if self.stop == "shutdown":
            self._drain_input(time.monotonic() + SHUTDOWN_DRAIN_S)
        for stream in self.draining.values():
            stream.release()
            self._send(encode(SinkDone(stream.open.stream, stream.metrics(
                note="playback cut short by sink shutdown"))))
        self.draining.clear()
        for key, stream in self.streams.items():
            stream.release()
            log.warning("%s: stream '%s' had no SinkClose at shutdown; outputs closed, no SinkDone", self.name, key)
        self.streams.clear()
        timeout = self.send_timeout_s if self.stop == "shutdown" else QUICK_SEND_TIMEOUT_S
        if not self._flush_until(time.monotonic() + timeout):
            log.warning("%s: output not read; dropping %d unsent message(s)", self.name, len(self._pending))
        log.info("%s: stopped (%s)", self.name, self.stop)

    def _drain_input(self, deadline: float) -> None:
        """Handle input already queued when the Shutdown came, so closed streams get their SinkDone."""
        while time.monotonic() < deadline:
            if self._pending and not self._flush_until(deadline):
                return
            try:
                frames = self.inp.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._on_input(frames)

    def _flush_until(self, deadline: float) -> bool:
        while not self._flush():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.out.poll(min(left, 0.05) * 1000, zmq.POLLOUT)
        return True

    def close(self) -> None:
        self.inp.close()
        # Whatever could not be sent is dropped: the sink must not hang on exit.
        if self._pending:
            linger_s = 0.0
        else:
            linger_s = QUICK_SEND_TIMEOUT_S if self.stop == "signal" else self.send_timeout_s
        self.out.close(linger=int(linger_s * 1000))
        self.ctl.close()


def _owner(stream: str) -> str | None:
    return stream.split(".", 1)[0] if "." in stream else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workers.sink", description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="in_ep", required=True, help="coordinator's PUSH endpoint to connect to")
    p.add_argument("--out", dest="out_ep", required=True, help="coordinator's PULL endpoint to connect to")
    p.add_argument("--ctl", dest="ctl_ep", required=True, help="endpoint to bind for control (Shutdown)")
    p.add_argument("--name", default="sink", help="name used in log lines")
    p.add_argument("--hwm", type=int, default=4096, help="high-water mark (messages) of the sockets")
    p.add_argument("--send-timeout", type=float, default=1.0,
                   help="seconds to wait at shutdown for the coordinator to read what is left")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = zmq.Context()
    try:
        sink = Sink(ctx, args.in_ep, args.out_ep, args.ctl_ep, name=args.name, hwm=args.hwm,
                    send_timeout_s=args.send_timeout)
    except zmq.ZMQError as exc:
        log.error("%s: cannot set up sockets: %s", args.name, exc)
        ctx.destroy(linger=0)  # closes the sockets made before the failing one
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: %s, stopping", args.name, signal.Signals(signum).name)
        sink.stop = "signal"

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return sink.run()
    finally:
        sink.close()
        ctx.term()  # the control socket's listener is closed once this returns
        if sink.ctl_file is not None:
            sink.ctl_file.remove()

