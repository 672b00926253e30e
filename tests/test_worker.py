"""The worker process as the coordinator sees it: a real `python -m workers.worker` (null engine) on a real
ROUTER in a run directory, spoken to in protocol messages only."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import zmq

from pipeline.settings import load_settings
from pipeline.wire import protocol as p
from pipeline.wire.codec import decode, encode
from pipeline.wire.runpaths import RunPaths

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 10.0
SAMPLING = {"speed": 1.0}


class WorkerHarness:
    """A run directory, the coordinator's ROUTER bound in it, and one worker connected to it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="xtts-worker-"))
        self.run = RunPaths(self.dir)
        settings = load_settings(env={}).with_service(engine="null", heartbeat_interval_s=0.1)
        self.run.write_settings(settings)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.run.workers)
        self.log_path = self.dir / "worker.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "workers.worker", "--run-dir", str(self.dir),
                                          "--name", "w0"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.identity = b""
        self.ready = self.expect(p.Ready)

    def recv(self) -> p.Message:
        if not self.router.poll(WAIT_S * 1000):
            raise AssertionError(f"nothing from the worker in {WAIT_S} s; its log:\n{self.log()}")
        identity, *frames = self.router.recv_multipart()
        self.identity = identity
        return decode(frames)

    def expect(self, kind: type, skip: tuple[type, ...] = (p.Heartbeat,)) -> p.Message:
        """The next message that is not one of ``skip``; it must be a ``kind``."""
        while isinstance(msg := self.recv(), skip):
            pass
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg}"
        return msg

    def send(self, msg: p.Message) -> None:
        self.router.send_multipart([self.identity, *encode(msg)])

    def chunk(self, stream: str, text: str, epoch: int = 0, index: int = 0, **sampling) -> None:
        self.send(p.SynthChunk(stream=stream, epoch=epoch, chunk_index=index, text=text, language="en",
                               sampling={**SAMPLING, **sampling}))

    def pieces(self, stream: str, index: int = 0) -> list[p.AudioPiece]:
        """Every piece of one chunk, up to its final one."""
        out: list[p.AudioPiece] = []
        while not (out and out[-1].final):
            piece = self.expect(p.AudioPiece)
            assert (piece.stream, piece.chunk_index) == (stream, index), f"a piece of another chunk: {piece}"
            out.append(piece)
        return out

    def tell(self, msg: p.Message) -> None:
        ctl = self.ctx.socket(zmq.PUSH)
        ctl.setsockopt(zmq.LINGER, 1000)
        ctl.connect(self.run.ctl("w0"))
        ctl.send_multipart(encode(msg))
        ctl.close()

    def wait_exit(self) -> int:
        return self.proc.wait(WAIT_S)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "WorkerHarness":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        self.router.close()
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def worker():
    with WorkerHarness() as harness:
        yield harness


def test_the_handshake_names_the_engine_and_its_pid(worker):
    ready = worker.ready
    assert (ready.worker, ready.engine, ready.pid) == ("w0", "null", worker.proc.pid)
    assert ready.sample_rate > 0 and ready.capacity > 0 and ready.char_limits
    assert worker.identity == f"w0-{worker.proc.pid}".encode(), "the identity carries the PID"


def test_a_chunk_comes_back_as_contiguous_pieces_ending_in_a_final_one(worker):
    worker.chunk("s", "Hello there, this is a test.")
    pieces = worker.pieces("s")
    assert [x.piece_index for x in pieces] == list(range(len(pieces)))
    offset = 0
    for piece in pieces:
        assert piece.sample_offset == offset and piece.sample_count * 2 == len(piece.pcm) > 0
        assert piece.sample_rate == worker.ready.sample_rate
        offset += piece.sample_count
    assert pieces[0].queued_ms >= 0 and pieces[0].engine_ms >= 0


def test_sampling_values_beyond_the_bounds_fail_only_their_chunk(worker):
    worker.chunk("bad", "Too fast to hear.", speed=400.0)
    failed = worker.expect(p.ChunkFailed)
    assert failed.stream == "bad" and "speed must be between" in failed.message
    worker.chunk("good", "Still serving.")
    assert worker.pieces("good")[-1].final


def test_a_cancelled_epoch_is_never_spoken(worker):
    worker.send(p.CancelStream(stream="s", below_epoch=1))
    worker.chunk("s", "From before the cancel.", epoch=0)
    worker.chunk("s", "After the cancel.", epoch=1, index=1)
    pieces = worker.pieces("s", index=1)
    assert all(x.epoch == 1 for x in pieces)


def test_heartbeats_say_the_worker_is_alive_and_idle(worker):
    beat = worker.expect(p.Heartbeat, skip=())
    assert beat.worker == "w0" and beat.load == 0 and not beat.draining


def test_a_shutdown_on_the_control_socket_ends_it_with_exit_0(worker):
    worker.tell(p.Shutdown(reason="test"))
    assert worker.wait_exit() == 0, worker.log()


def test_sigterm_drains_what_it_holds_then_exits_0(worker):
    worker.chunk("s", "A last sentence that is still spoken whole, " * 5)  # ~14 s of audio, ~0.3 s to make
    first = worker.expect(p.AudioPiece)
    assert not first.final
    worker.proc.send_signal(signal.SIGTERM)
    pieces, draining = [first], False
    while not (pieces[-1].final and draining):
        msg = worker.recv()
        if isinstance(msg, p.AudioPiece):
            pieces.append(msg)
        elif isinstance(msg, p.Heartbeat):
            draining |= msg.draining  # it tells the coordinator to send it nothing new
    assert [x.piece_index for x in pieces] == list(range(len(pieces))), "the chunk it held is finished whole"
    assert worker.wait_exit() == 0, worker.log()
