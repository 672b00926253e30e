"""The coordinator's view of its GPU workers: who is ready, alive and holding what.

A worker is declared dead three ways, whichever comes first: its in-band DEAD
message, its process sentinel (a pidfd that becomes readable when the process
exits), or silence longer than the heartbeat timeout (alive but hung; it is
then killed so the supervisor restarts it). The chunks it held are handed back
to the coordinator to dispatch again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from .codec import encode
from .protocol import CancelStream, Message, Ready, SynthChunk

log = logging.getLogger("xtts_stream.workers")

ChunkKey = tuple[str, int, int]  # stream, epoch, chunk index


@dataclass
class WorkerHandle:
    identity: bytes
    ready: Ready
    last_beat: float
    inflight: dict[ChunkKey, SynthChunk] = field(default_factory=dict)
    pidfd: int | None = None
    alive: bool = True

    @property
    def name(self) -> str:
        return self.ready.worker


class WorkerPool:
    def __init__(self, sock, heartbeat_timeout_s: float,
                 on_dead: Callable[[WorkerHandle, str], None], on_ready: Callable[[WorkerHandle], None]):
        self._sock = sock
        self._timeout = heartbeat_timeout_s
        self._on_dead = on_dead
        self._on_ready = on_ready
        self.workers: dict[bytes, WorkerHandle] = {}
        self.deaths = 0
        self.last_death: dict[str, object] = {}

    # -- membership ----------------------------------------------------------

    def ready(self, identity: bytes, msg: Ready) -> None:
        old = self.workers.get(identity)
        if old is not None and old.ready.pid == msg.pid:  # a repeated handshake: same process, same work
            old.last_beat = time.monotonic()
            return
        if old is not None:
            self.mark_dead(old, "replaced by a new process with the same name")
        worker = WorkerHandle(identity, msg, time.monotonic())
        self.workers[identity] = worker
        self._watch_process(worker)
        log.info("worker %s ready: engine=%s model=%s dtype=%s device=%s rate=%d pid=%d", msg.worker, msg.engine,
                 msg.model, msg.dtype, msg.device, msg.sample_rate, msg.pid)
        self._on_ready(worker)

    def beat(self, identity: bytes) -> WorkerHandle | None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_beat = time.monotonic()
        return worker

    def any_ready(self) -> WorkerHandle | None:
        return next(iter(self.workers.values()), None)

    def pick(self) -> WorkerHandle | None:
        """The least-loaded live worker."""
        return min(self.workers.values(), key=lambda w: len(w.inflight), default=None)

    def mark_dead(self, worker: WorkerHandle, reason: str) -> None:
        if not worker.alive:
            return
        worker.alive = False
        self.deaths += 1
        self.last_death = {"worker": worker.name, "pid": worker.ready.pid, "reason": reason, "at": time.time()}
        if self.workers.get(worker.identity) is worker:
            del self.workers[worker.identity]
        self._unwatch(worker)
        log.error("worker %s (pid %d) is dead: %s; %d chunk(s) to dispatch again", worker.name,
                  worker.ready.pid, reason, len(worker.inflight))
        self._on_dead(worker, reason)

    def check_heartbeats(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            silent = now - worker.last_beat
            if silent > self._timeout:
                self._kill(worker)
                self.mark_dead(worker, f"no heartbeat for {silent:.1f} s (hung); killed")

    # -- traffic -------------------------------------------------------------

    async def dispatch(self, worker: WorkerHandle, chunk: SynthChunk) -> None:
        worker.inflight[(chunk.stream, chunk.epoch, chunk.chunk_index)] = chunk
        await self.send(worker, chunk)

    def settle(self, worker: WorkerHandle | None, key: ChunkKey) -> None:
        if worker is not None:
            worker.inflight.pop(key, None)

    async def cancel(self, stream: str, below_epoch: int) -> None:
        for worker in list(self.workers.values()):
            for key in [k for k in worker.inflight if k[0] == stream and k[1] < below_epoch]:
                del worker.inflight[key]
            await self.send(worker, CancelStream(stream=stream, below_epoch=below_epoch))

    async def send(self, worker: WorkerHandle, msg: Message) -> None:
        await self._sock.send_multipart([worker.identity, *encode(msg)], copy=False)

    async def broadcast(self, msg: Message) -> None:
        for worker in list(self.workers.values()):
            await self.send(worker, msg)

    # -- process sentinel ----------------------------------------------------

    def _watch_process(self, worker: WorkerHandle) -> None:
        try:
            worker.pidfd = os.pidfd_open(worker.ready.pid)
        except (AttributeError, OSError) as exc:  # not Linux, or the process is already gone
            log.warning("cannot watch worker %s pid %d: %s", worker.name, worker.ready.pid, exc)
            return
        asyncio.get_running_loop().add_reader(worker.pidfd, self.mark_dead, worker, "process exited")

    def _unwatch(self, worker: WorkerHandle) -> None:
        if worker.pidfd is not None:
            asyncio.get_running_loop().remove_reader(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = None

    @staticmethod
    def _kill(worker: WorkerHandle) -> None:
        try:
            os.kill(worker.ready.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
