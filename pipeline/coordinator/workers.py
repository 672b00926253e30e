"""The coordinator's view of its workers: who is ready, alive, holding what, and how loaded.

Pure bookkeeping: the shell watches processes and sockets and tells the core,
which asks this registry. A worker is dead when it says so (DEAD), when its
process exits (the shell's pidfd sentinel), or when it stays silent longer than
the heartbeat timeout (alive but hung: the core has it killed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.wire.protocol import Heartbeat, Ready, SynthChunk

log = logging.getLogger("xtts_stream.workers")

ChunkKey = tuple[str, int, int]  # stream, epoch, chunk index


@dataclass
class WorkerHandle:
    identity: bytes
    ready: Ready
    last_beat: float
    inflight: dict[ChunkKey, SynthChunk] = field(default_factory=dict)
    alive: bool = True
    draining: bool = False  # finishing what it holds: it gets nothing new
    load: int = 0  # jobs it reported holding
    chars_per_s: float = 0.0
    gpu_memory_bytes: int = 0
    picked: int = 0  # when it was last picked, in picks

    @property
    def name(self) -> str:
        return self.ready.worker

    @property
    def free_slots(self) -> int:
        return self.ready.capacity - len(self.inflight)

    def describe(self, now: float) -> dict[str, object]:
        r = self.ready
        return {"name": r.worker, "pid": r.pid, "host": r.host, "engine": r.engine, "device": r.device,
                "capacity": r.capacity, "free_slots": self.free_slots, "inflight": len(self.inflight),
                "load": self.load, "draining": self.draining, "chars_per_s": round(self.chars_per_s, 1),
                "gpu_memory_bytes": self.gpu_memory_bytes, "silent_s": round(now - self.last_beat, 3)}


class WorkerRegistry:
    def __init__(self, heartbeat_timeout_s: float):
        self.timeout = heartbeat_timeout_s
        self.workers: dict[bytes, WorkerHandle] = {}
        self.deaths = 0
        self.last_death: dict[str, object] = {}
        self._picks = 0

    def ready(self, identity: bytes, msg: Ready, now: float) -> WorkerHandle:
        """Register a handshake (a repeated one, after a hello, keeps what the worker holds: identities
        carry the process's PID, so the same identity is the same process)."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_beat = now
            return worker
        worker = self.workers[identity] = WorkerHandle(identity, msg, now, chars_per_s=msg.chars_per_s)
        log.info("worker %s ready: engine=%s model=%s dtype=%s device=%s rate=%d pid=%d capacity=%d", msg.worker,
                 msg.engine, msg.model, msg.dtype, msg.device, msg.sample_rate, msg.pid, msg.capacity)
        return worker

    def beat(self, identity: bytes, now: float, msg: Heartbeat | None = None) -> WorkerHandle | None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_beat = now
            if msg is not None:
                worker.load = msg.load
                worker.chars_per_s = msg.chars_per_s or worker.chars_per_s
                worker.gpu_memory_bytes = msg.gpu_memory_bytes
                if msg.draining and not worker.draining:
                    log.info("worker %s is draining: it gets no new chunks", worker.name)
                worker.draining = msg.draining
        return worker

    def pick(self) -> WorkerHandle | None:
        """The worker with the most free batch slots (then the fewest chunks held, then the one picked
        longest ago); a draining worker only when no other is left."""
        live = [w for w in self.workers.values() if not w.draining] or list(self.workers.values())
        best = max(live, key=lambda w: (w.free_slots, -len(w.inflight), -w.picked), default=None)
        if best is not None:
            self._picks += 1
            best.picked = self._picks
        return best

    def remove(self, worker: WorkerHandle, reason: str, now_wall: float) -> bool:
        """Declare a worker dead; False when it already was."""
        if not worker.alive:
            return False
        worker.alive = False
        self.deaths += 1
        self.last_death = {"worker": worker.name, "pid": worker.ready.pid, "reason": reason, "at": now_wall}
        if self.workers.get(worker.identity) is worker:
            del self.workers[worker.identity]
        log.error("worker %s (pid %d) is dead: %s; %d chunk(s) to dispatch again", worker.name,
                  worker.ready.pid, reason, len(worker.inflight))
        return True

    def hung(self, now: float) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if now - w.last_beat > self.timeout]

    def dispatch(self, worker: WorkerHandle, chunk: SynthChunk) -> None:
        worker.inflight[(chunk.stream, chunk.epoch, chunk.chunk_index)] = chunk

    def settle(self, worker: WorkerHandle, key: ChunkKey) -> None:
        worker.inflight.pop(key, None)

    def holding(self, stream: str, below_epoch: int) -> list[WorkerHandle]:
        """Workers that hold chunks of ``stream`` older than ``below_epoch`` (forgotten here as of now)."""
        out = []
        for worker in self.workers.values():
            keys = [k for k in worker.inflight if k[0] == stream and k[1] < below_epoch]
            for key in keys:
                del worker.inflight[key]
            if keys:
                out.append(worker)
        return out
