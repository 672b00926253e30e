"""The coordinator's worker pool (pipeline/coordinator/workers.py): who is ready, who gets the next
chunk, who is silent too long, and what a dead or draining worker leaves to dispatch again."""

from __future__ import annotations

import pytest

from pipeline.coordinator.workers import WorkerRegistry
from pipeline.wire.protocol import Heartbeat, Ready, SynthChunk

TIMEOUT_S = 3.0


def ready(name: str, capacity: int = 1, chars_per_s: float = 0.0, pid: int = 0) -> Ready:
    return Ready(worker=name, engine="null", model="tone", sample_rate=24000, dtype="float32", device="cpu",
                 pid=pid or 1000 + int(name[1:]), capacity=capacity, chars_per_s=chars_per_s, host="here")


def chunk(stream: str, index: int, epoch: int = 0) -> SynthChunk:
    return SynthChunk(stream=stream, epoch=epoch, chunk_index=index, text=f"chunk {index}", language="en")


def pool(*specs: tuple[str, int], now: float = 0.0) -> tuple[WorkerRegistry, dict]:
    registry = WorkerRegistry(TIMEOUT_S)
    handles = {name: registry.ready(name.encode(), ready(name, capacity), now) for name, capacity in specs}
    return registry, handles


# -- the handshake -------------------------------------------------------------------------------

def test_a_ready_worker_is_registered_with_its_handshake():
    registry = WorkerRegistry(TIMEOUT_S)
    worker = registry.ready(b"w0", ready("w0", capacity=4, chars_per_s=120.0), now=10.0)
    assert registry.workers == {b"w0": worker}
    assert (worker.name, worker.alive, worker.draining, worker.free_slots) == ("w0", True, False, 4)
    assert worker.chars_per_s == 120.0
    info = worker.describe(now=10.5)
    assert info["name"] == "w0" and info["capacity"] == 4 and info["free_slots"] == 4 and info["inflight"] == 0
    assert info["silent_s"] == 0.5 and info["engine"] == "null" and info["host"] == "here"


def test_a_repeated_handshake_keeps_what_the_worker_holds():
    registry, w = pool(("w0", 2))
    registry.dispatch(w["w0"], chunk("s", 0))
    again = registry.ready(b"w0", ready("w0", capacity=2), now=5.0)  # after a hello from a new coordinator
    assert again is w["w0"] and len(registry.workers) == 1
    assert list(again.inflight) == [("s", 0, 0)] and again.free_slots == 1
    assert again.last_beat == 5.0


# -- choosing a worker ----------------------------------------------------------------------------

def test_no_worker_no_pick():
    assert WorkerRegistry(TIMEOUT_S).pick() is None


def test_the_worker_with_the_most_free_slots_is_picked():
    registry, w = pool(("w0", 1), ("w1", 4))
    assert registry.pick() is w["w1"]
    for i in range(3):
        registry.dispatch(w["w1"], chunk("s", i))
    assert w["w1"].free_slots == 1
    assert registry.pick() is w["w0"], "equal free slots: the one holding fewer chunks"
    registry.dispatch(w["w0"], chunk("t", 0))
    assert registry.pick() is w["w1"], "w0 is full, w1 still has a slot"


def test_equal_workers_take_turns():
    registry, w = pool(("w0", 2), ("w1", 2), ("w2", 2))
    picks = [registry.pick().name for _ in range(7)]
    assert sorted(picks[:3]) == ["w0", "w1", "w2"], "each once before any twice"
    assert picks[3:6] == picks[:3] and picks[6] == picks[0], "the one picked longest ago goes next"


def test_a_full_pool_still_names_a_worker_to_queue_on():
    registry, w = pool(("w0", 1), ("w1", 1))
    registry.dispatch(w["w0"], chunk("s", 0))
    registry.dispatch(w["w1"], chunk("s", 1))
    registry.dispatch(w["w1"], chunk("s", 2))
    assert w["w1"].free_slots == -1
    assert registry.pick() is w["w0"], "the least overloaded"


def test_a_draining_worker_gets_nothing_new_while_another_is_left():
    registry, w = pool(("w0", 8), ("w1", 1))
    registry.beat(b"w0", 1.0, Heartbeat(worker="w0", draining=True))
    assert w["w0"].draining
    registry.dispatch(w["w1"], chunk("s", 0))
    assert all(registry.pick() is w["w1"] for _ in range(3)), "even full, w1 beats a draining worker"
    registry.remove(w["w1"], "exited", 2.0)
    assert registry.pick() is w["w0"], "the draining worker, when it is the only one left"
    registry.beat(b"w0", 3.0, Heartbeat(worker="w0", draining=False))
    assert not w["w0"].draining


# -- heartbeats and silence -------------------------------------------------------------------------

def test_a_heartbeat_updates_load_speed_and_memory():
    registry = WorkerRegistry(TIMEOUT_S)
    worker = registry.ready(b"w0", ready("w0", chars_per_s=100.0), now=0.0)
    assert registry.beat(b"w0", 1.0, Heartbeat(worker="w0", load=3, chars_per_s=150.0, gpu_memory_bytes=1 << 30)) \
        is worker
    assert (worker.last_beat, worker.load, worker.chars_per_s, worker.gpu_memory_bytes) == (1.0, 3, 150.0, 1 << 30)
    registry.beat(b"w0", 2.0, Heartbeat(worker="w0", load=0))
    assert worker.chars_per_s == 150.0, "an unmeasured speed (0) keeps the last one known"
    assert worker.load == 0 and worker.gpu_memory_bytes == 0
    registry.beat(b"w0", 2.5)  # any message from it counts as a sign of life
    assert worker.last_beat == 2.5 and worker.load == 0


def test_a_heartbeat_from_an_unknown_worker_registers_nothing():
    registry = WorkerRegistry(TIMEOUT_S)
    assert registry.beat(b"stranger", 1.0, Heartbeat(worker="stranger")) is None
    assert registry.workers == {}


def test_a_worker_silent_past_the_timeout_is_hung():
    registry, w = pool(("w0", 1), ("w1", 1), now=0.0)
    registry.beat(b"w1", 2.0)
    assert registry.hung(TIMEOUT_S) == [], "exactly the timeout: not yet"
    assert registry.hung(TIMEOUT_S + 0.1) == [w["w0"]]
    assert registry.hung(2.0 + TIMEOUT_S + 0.1) == [w["w0"], w["w1"]]
    registry.beat(b"w0", 10.0)
    assert registry.hung(10.0) == [w["w1"]], "a heartbeat clears only its own worker"


# -- chunks held, and death ------------------------------------------------------------------------

def test_dispatched_chunks_are_held_until_settled():
    registry, w = pool(("w0", 2))
    a, b = chunk("s", 0), chunk("s", 1)
    registry.dispatch(w["w0"], a)
    registry.dispatch(w["w0"], b)
    assert w["w0"].inflight == {("s", 0, 0): a, ("s", 0, 1): b} and w["w0"].free_slots == 0
    registry.settle(w["w0"], ("s", 0, 0))
    registry.settle(w["w0"], ("s", 0, 0))  # twice (a late final piece): harmless
    assert w["w0"].inflight == {("s", 0, 1): b} and w["w0"].free_slots == 1


def test_a_dead_worker_leaves_the_pool_with_its_chunks_to_dispatch_again():
    registry, w = pool(("w0", 2), ("w1", 2))
    held = [chunk("s", 0), chunk("t", 3, epoch=1)]
    for c in held:
        registry.dispatch(w["w0"], c)
    assert registry.remove(w["w0"], "exited with code -9", now_wall=1234.5) is True
    assert list(registry.workers) == [b"w1"] and not w["w0"].alive
    assert list(w["w0"].inflight.values()) == held, "what it held, in order, for the core to send elsewhere"
    assert registry.deaths == 1
    assert registry.last_death == {"worker": "w0", "pid": 1000, "reason": "exited with code -9", "at": 1234.5}
    assert all(registry.pick() is w["w1"] for _ in range(3))
    assert registry.hung(100.0) == [w["w1"]], "a dead worker is no longer watched"


def test_a_death_is_counted_once():
    registry, w = pool(("w0", 1))
    assert registry.remove(w["w0"], "no heartbeat for 3.0 s", 1.0) is True
    assert registry.remove(w["w0"], "exited", 2.0) is False, "the pidfd and the heartbeat both tell"
    assert registry.deaths == 1 and registry.last_death["reason"] == "no heartbeat for 3.0 s"


def test_the_death_of_an_old_handle_does_not_remove_its_successor():
    registry, w = pool(("w0", 1))
    old = w["w0"]
    registry.remove(old, "exited", 1.0)
    new = registry.ready(b"w0", ready("w0", pid=2000), 2.0)  # same identity, a new registration
    assert new is not old
    assert registry.remove(old, "exited", 3.0) is False
    assert registry.workers == {b"w0": new} and new.alive


@pytest.mark.parametrize("below_epoch, left", [(0, 3), (1, 2), (2, 1), (5, 1)])
def test_holding_forgets_a_streams_chunks_of_older_epochs(below_epoch, left):
    registry, w = pool(("w0", 4), ("w1", 4))
    registry.dispatch(w["w0"], chunk("s", 0, epoch=0))
    registry.dispatch(w["w0"], chunk("s", 1, epoch=1))
    registry.dispatch(w["w0"], chunk("other", 0, epoch=0))
    registry.dispatch(w["w1"], chunk("other", 1, epoch=0))
    holders = registry.holding("s", below_epoch)
    assert holders == ([w["w0"]] if left < 3 else [])
    assert len(w["w0"].inflight) == left
    assert ("other", 0, 0) in w["w0"].inflight and list(w["w1"].inflight) == [("other", 0, 1)]
    assert registry.holding("s", below_epoch) == [], "forgotten: asked again, nobody holds them"
