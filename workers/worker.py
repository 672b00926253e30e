"""The GPU worker process: IO thread <-> queues <-> synthesis loop.

    python -m workers.worker --run-dir DIR --name w0 [--device cuda:1]
        [--connect tcp://HOST:5556 --keys DIR [--key-name client-1]] [--ready-file PATH]

The synthesis loop (main thread) never touches a socket: the IO thread
(`worker_io.py`) owns the DEALER to the coordinator and the control socket.
Control messages (cancel, shutdown) are applied before new work, so a barge-in
takes effect at the next step. Heartbeats come from the synthesis loop itself:
a loop stuck in the engine stops beating and is declared hung. SIGTERM drains:
the worker tells the coordinator (which sends it nothing new), finishes what it
holds (at most `drain_timeout_s`), then exits.

A worker of `serve` reaches its coordinator through the run directory; one on
another host (`xtts-stream worker --connect`) over TCP with CURVE keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import socket
import sys
import time
from pathlib import Path

import zmq

from pipeline.processes.lifeline import die_with_parent
from pipeline.settings import SAMPLING_BOUNDS, out_of_bounds
from pipeline.wire import protocol as p
from pipeline.wire.runpaths import RunPaths

from .engines.base import Engine, JobFailed, PieceOut, SynthJob
from .faults import Faults
from .worker_io import Link, WorkerIO

log = logging.getLogger("xtts_stream.worker")

MAX_CANCEL_MARKS = 10_000  # streams whose cancel watermark is remembered (oldest forgotten first)


class SynthesisLoop:
    def __init__(self, engine: Engine, io: WorkerIO, name: str, heartbeat_s: float, faults: Faults,
                 ready: p.Ready, ready_file: str = ""):
        self.engine = engine
        self.ready = ready
        self.io = io
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.faults = faults
        self.ready_file = Path(ready_file) if ready_file else None
        self.stop_requested = False
        self.drain_until: float | None = None
        self.chunks_seen = 0
        self._last_beat = 0.0
        self._sent: dict[tuple, list[p.AudioPiece]] = {}
        self._cancelled_below: dict[str, int] = {}
        self._jobs: dict[tuple, SynthJob] = {}  # accepted and not finished: the load reported
        self.chars_per_s = engine.info.chars_per_s
        self._idle_for = 0.0  # an engine that paces itself has nothing before this many seconds

    def drain(self, deadline_s: float) -> None:
        """Finish what is held (at most ``deadline_s``), then stop; the coordinator sends nothing new."""
        if self.drain_until is None:
            log.info("draining: finishing what this worker holds (at most %.0f s)", deadline_s)
            self.drain_until = time.monotonic() + deadline_s
            self._last_beat = 0.0  # tell the coordinator now

    def run(self) -> None:
        while not self.stop_requested:
            self._take_messages(wait=self._wait_s())
            if self.drain_until is not None and (not self.engine.has_work() or time.monotonic() > self.drain_until):
                log.info("drained")
                self.stop_requested = True
            if self.stop_requested:
                break
            if self.engine.has_work():
                results = self.engine.step()
                for out in results:
                    self._send_result(out)
                ready_in = getattr(self.engine, "next_ready_in", None)
                self._idle_for = (ready_in() or 0.0) if ready_in is not None and not results else 0.0
            else:
                self._jobs.clear()
            self._beat()

    def _wait_s(self) -> float:
        """How long to wait for messages: until the next heartbeat when idle, not at all when busy."""
        if not self.engine.has_work():
            return self.heartbeat_s
        return min(self._idle_for, self.heartbeat_s)

    def _take_messages(self, wait: float) -> None:
        try:
            msgs = [self.io.inbound.get(timeout=wait) if wait > 0 else self.io.inbound.get_nowait()]
        except queue.Empty:
            return
        while True:
            try:
                msgs.append(self.io.inbound.get_nowait())
            except queue.Empty:
                break
        # Control first: a cancel must not wait behind the chunks that arrived with it.
        for msg in sorted(msgs, key=lambda m: not isinstance(m, (p.CancelStream, p.Shutdown, p.Hello))):
            self._apply(msg)

    def _apply(self, msg: p.Message) -> None:
        if isinstance(msg, p.SynthChunk):
            self._accept_chunk(msg)
        elif isinstance(msg, p.CancelStream):
            self._remember_cancel(msg.stream, msg.below_epoch)
            for key in [k for k in self._jobs if k[0] == msg.stream and k[1] < msg.below_epoch]:
                del self._jobs[key]
            dropped = self.engine.cancel(msg.stream, msg.below_epoch)
            log.debug("cancelled stream %s below epoch %d: %d job(s) dropped", msg.stream, msg.below_epoch, dropped)
        elif isinstance(msg, p.Hello):
            # The new coordinator owns none of the old one's streams: their audio would go nowhere.
            streams = {key[0] for key in self._jobs}
            for stream in streams:
                self.engine.cancel(stream)
            self._jobs.clear()
            log.info("a new coordinator (pid %d) asks for the handshake; %d old stream(s) dropped",
                     msg.coordinator_pid, len(streams))
            self.io.send(self.ready)
        elif isinstance(msg, p.Shutdown):
            if self.faults.ignore_shutdown:
                log.warning("ignoring shutdown request (fault injection)")
                return
            log.info("shutdown requested: %s", msg.reason or "no reason given")
            self.stop_requested = True
        else:
            log.warning("unexpected %s from the coordinator; ignored", type(msg).__name__)

    def _remember_cancel(self, stream: str, below_epoch: int) -> None:
        """Control is applied before the chunks that arrived with it, so a chunk of a
        cancelled epoch can come after its cancel: the watermark drops it then."""
        self._cancelled_below[stream] = max(below_epoch, self._cancelled_below.get(stream, 0))
        while len(self._cancelled_below) > MAX_CANCEL_MARKS:
            del self._cancelled_below[next(iter(self._cancelled_below))]

    def _accept_chunk(self, msg: p.SynthChunk) -> None:
        if msg.epoch < self._cancelled_below.get(msg.stream, 0):
            log.debug("dropping chunk %d of stream %s: its epoch %d was cancelled", msg.chunk_index, msg.stream,
                      msg.epoch)
            return
        self.chunks_seen += 1
        if self.faults.exit_after and self.chunks_seen > self.faults.exit_after:
            log.error("exiting abruptly (fault injection)")
            self.faults.fire()
            os._exit(3)
        if self.faults.hang_after and self.chunks_seen > self.faults.hang_after:
            log.error("hanging (fault injection)")
            self.faults.fire()
            while True:
                time.sleep(3600)
        now = time.monotonic()
        job = SynthJob(stream=msg.stream, epoch=msg.epoch, chunk_index=msg.chunk_index, text=msg.text,
                       language=msg.language, voice=msg.voice, sampling=dict(msg.sampling), priority=msg.priority,
                       forced_tokens=msg.forced_tokens or None, deadline=now + max(0.0, msg.due_ms) / 1000,
                       t_received=now)
        problem = out_of_bounds(job.sampling, getattr(self.engine, "sampling_bounds", SAMPLING_BOUNDS))
        if problem:  # whoever sent it, no engine is handed sampling values a profile may not hold
            self._send_result(JobFailed(job, f"bad sampling settings: {problem}"))
            return
        self._jobs[job.key] = job
        self.engine.add(job)

    def _send_result(self, out: PieceOut | JobFailed) -> None:
        job = out.job
        if isinstance(out, JobFailed):
            self._jobs.pop(job.key, None)
            self.io.send(p.ChunkFailed(stream=job.stream, epoch=job.epoch, chunk_index=job.chunk_index,
                                       message=out.message))
            return
        pcm = out.samples.astype("<i2", copy=False).tobytes()
        piece = p.AudioPiece(stream=job.stream, epoch=job.epoch, chunk_index=job.chunk_index,
                             piece_index=out.piece_index, sample_offset=out.sample_offset,
                             sample_count=len(pcm) // 2, sample_rate=self.engine.info.sample_rate,
                             final=out.final, pcm=pcm)
        if out.piece_index == 0:
            piece.queued_ms, piece.engine_ms = _stage_ms(job, time.monotonic())
        if out.final:
            self._jobs.pop(job.key, None)
            self._learn_speed(job)
        self.io.send(piece)
        if self.faults.duplicate_chunks:
            # Replay the whole chunk after its last piece: a reassembler that let
            # copies through would make the listener hear the phrase twice.
            sent = self._sent.setdefault(job.key, [])
            sent.append(piece)
            if out.final:
                for again in self._sent.pop(job.key):
                    self.io.send(again)

    def _learn_speed(self, job: SynthJob) -> None:
        """Characters per second of synthesis, smoothed: the chunker sizes chunks for a non-streaming engine by it."""
        if job.t_started is None or self.engine.info.streaming or job.stream.startswith("__"):
            return
        measured = len(job.text) / max(1e-6, time.monotonic() - job.t_started)
        self.chars_per_s = measured if not self.chars_per_s else 0.8 * self.chars_per_s + 0.2 * measured

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            memory = getattr(self.engine, "memory_bytes", None)
            self.io.send(p.Heartbeat(worker=self.name, load=len(self._jobs), chars_per_s=round(self.chars_per_s, 3),
                                     gpu_memory_bytes=memory() if memory is not None else 0,
                                     draining=self.drain_until is not None))
        if self.ready_file is not None:
            self._mark_ready()

    def _mark_ready(self) -> None:
        """The ready file exists while the worker is warmed up and connected (a container's probe reads it)."""
        connected = self.io.connected.is_set()
        if connected and not self.ready_file.exists():
            self.ready_file.touch()
        elif not connected and self.ready_file.exists():
            self.ready_file.unlink()


def _stage_ms(job: SynthJob, now: float) -> tuple[float, float]:
    """(waiting in the worker, synthesising) before a job's first piece, in ms."""
    started = job.t_started if job.t_started is not None else job.t_received
    return round((started - job.t_received) * 1000, 3), round((now - started) * 1000, 3)


def serve(run: RunPaths, name: str, link: Link | None = None, device: str = "", ready_file: str = "") -> int:
    # Ctrl-C reaches the whole process group; the supervisor stops workers in
    # order, so the worker itself leaves SIGINT to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = run.read_settings()
    if device:
        settings = settings.with_service(device=device)
    faults = Faults.from_env()
    if faults.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = zmq.Context()
    host = socket.gethostname()
    remote = link is not None
    identity = (f"{name}@{host}-{os.getpid()}" if remote else f"{name}-{os.getpid()}").encode()
    io = WorkerIO(ctx, identity, link or Link(run.workers), run.ctl(name), queue.Queue())
    io.start()
    try:
        engine = _start_engine(settings, faults)
    except Exception as exc:
        log.exception("worker %s could not start its engine", name)
        io.send(p.Dead(worker=name, reason=f"engine failed to start: {exc}"))
        io.flush_and_close()
        ctx.term()
        io.remove_ctl_file()
        return 2
    info = engine.info
    ready = p.Ready(worker=name, engine=info.engine, model=info.model, sample_rate=info.sample_rate,
                    dtype=info.dtype, device=info.device, pid=os.getpid(), char_limits=dict(info.char_limits),
                    voices=list(info.voices)[:1000], capacity=info.capacity, streaming=info.streaming,
                    chars_per_s=round(info.chars_per_s, 3), host=host)
    io.send(ready)
    loop = SynthesisLoop(engine, io, name, settings.service.heartbeat_interval_s, faults, ready, ready_file)
    if not faults.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: loop.drain(settings.service.drain_timeout_s))
    code = 0
    try:
        loop.run()
    except Exception as exc:  # the engine itself broke: say so in band, then die
        log.exception("synthesis loop failed")
        io.send(p.Dead(worker=name, reason=f"{type(exc).__name__}: {exc}"))
        code = 1
    if ready_file:
        Path(ready_file).unlink(missing_ok=True)
    engine.close()
    io.flush_and_close()
    ctx.term()
    io.remove_ctl_file()
    log.info("worker %s stopped", name)
    return code


def _start_engine(settings, faults: Faults) -> Engine:
    if faults.slow_start:
        time.sleep(faults.slow_start)
    if faults.fail_start:
        faults.fire()
        raise RuntimeError("failing at start (fault injection)")
    from .engine_choice import build_engine
    engine = build_engine(settings.service)
    t0 = time.monotonic()
    engine.warm_up()
    log.info("engine %s warmed up in %.2f s", engine.info.engine, time.monotonic() - t0)
    return engine


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m workers.worker")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--name", default="w0")
    parser.add_argument("--device", default="", help="the device this worker's engine runs on (overrides `device`)")
    parser.add_argument("--connect", default="", help="a coordinator's worker endpoint on another host")
    parser.add_argument("--keys", default="", help="CURVE keys directory (from `xtts-stream keys`)")
    parser.add_argument("--key-name", default="client-1", help="this worker's key pair in --keys")
    parser.add_argument("--ready-file", default="", help="a file that exists while the worker serves")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s worker[{args.name}] %(levelname)s %(name)s: %(message)s")
    link = None
    if args.connect:
        from pipeline.wire.security import client_keys
        link = Link(args.connect, client_keys(args.keys, args.key_name) if args.keys else None)
    return serve(RunPaths(args.run_dir), args.name, link, args.device, args.ready_file)


if __name__ == "__main__":
    raise SystemExit(main())
