"""The sink as a real process on real ipc:// sockets, driven from the coordinator's side."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import zmq

from pipeline.codec import decode, encode
from pipeline.protocol import AudioBlock, Message, Shutdown, SinkClose, SinkDone, SinkOpen

REPO = Path(__file__).resolve().parents[1]
RATE = 24000
BLOCK = 600  # 25 ms at 24 kHz
WAIT_S = 10.0  # generous: other engineers load this machine too


class SinkHarness:
    """The coordinator's side: binds --in and --out, starts the sink, connects to its --ctl."""

    def __init__(self, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (), hwm: int = 1000):
        # ipc paths must stay short (about 100 bytes), so not pytest's tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="sink-", dir="/tmp"))
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.bind(f"ipc://{self.dir}/in")
        self.push.setsockopt(zmq.SNDHWM, hwm)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, hwm)
        self.pull.bind(f"ipc://{self.dir}/out")
        self.ctl_ep = f"ipc://{self.dir}/ctl"
        self.log_path = self.dir / "sink.log"
        extra = dict(extra_env or {})
        # A test's stand-in modules come first, ahead of anything installed.
        paths = [extra.pop("PYTHONPATH", ""), str(REPO), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, **extra, PYTHONPATH=os.pathsep.join(p for p in paths if p))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.sink", "--in", f"ipc://{self.dir}/in",
                 "--out", f"ipc://{self.dir}/out", "--ctl", self.ctl_ep, "--name", "test-sink", *args],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.ctl = self.ctx.socket(zmq.PUSH)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.connect(self.ctl_ep)

    def send(self, msg: Message) -> None:
        self.push.send_multipart(encode(msg))

    def send_raw(self, frames: list[bytes]) -> None:
        self.push.send_multipart(frames)

    def recv(self) -> Message:
        if not self.pull.poll(WAIT_S * 1000):
            raise AssertionError(f"no message from the sink in {WAIT_S} s; its log:\n{self.log()}")
        return decode(self.pull.recv_multipart(copy=False))

    def recv_until_done(self, stream: str) -> tuple[list[AudioBlock], SinkDone]:
        blocks: list[AudioBlock] = []
        while True:
            msg = self.recv()
            if isinstance(msg, SinkDone) and msg.stream == stream:
                return blocks, msg
            assert isinstance(msg, AudioBlock) and msg.stream == stream, f"unexpected {msg}"
            blocks.append(msg)

    def round_trip(self, stream: str = "ping") -> None:
        """Proves the sink is up and has handled everything sent before."""
        self.send(SinkOpen(stream, RATE, 0, 25, "none", time.monotonic()))
        self.send(SinkClose(stream))
        assert self.recv_until_done(stream)[0] == []

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for sock in (self.push, self.pull, self.ctl):
            sock.close()
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sink():
    harness = SinkHarness()
    try:
        yield harness
    finally:
        harness.close()


def make_blocks(stream: str, n: int, seed: int, epoch: int = 0) -> list[AudioBlock]:
    rng = np.random.default_rng(seed)
    out = []
    for seq in range(n):
        count = BLOCK if seq < n - 1 else BLOCK // 3  # the last block is shorter, as upstream cuts it
        pcm = rng.integers(-32768, 32767, count, dtype=np.int16).tobytes()
        out.append(AudioBlock(stream, epoch, seq, seq * BLOCK, count, RATE, pcm=pcm))
    return out


def open_msg(stream: str, deliver: str = "client", prebuffer_ms: int = 200) -> SinkOpen:
    return SinkOpen(stream, RATE, prebuffer_ms, 25, deliver, time.monotonic())


def test_client_delivery_forwards_every_block_in_order_then_done(sink):
    blocks = make_blocks("s1", 12, seed=1)
    sink.send(open_msg("s1"))
    for block in blocks:
        sink.send(block)
    sink.send(SinkClose("s1"))
    got, done = sink.recv_until_done("s1")
    assert [(b.seq, b.sample_offset, bytes(b.pcm)) for b in got] == \
           [(b.seq, b.sample_offset, bytes(b.pcm)) for b in blocks]
    m = done.metrics
    assert m["deliver"] == "client" and m["error"] == "" and m["cancelled"] is False
    assert m["blocks"] == 12 and m["audio_s"] == pytest.approx((11 * BLOCK + BLOCK // 3) / RATE, abs=1e-6)
    assert m["sink_order_violations"] == 0 and isinstance(m["underruns"], int)
    assert m["played_ttfa_ms"] >= m["first_block_ms"] > 0


def test_wav_delivery_writes_exactly_the_samples_sent(sink):
    path = sink.dir / "nested" / "dir" / "out.wav"
    blocks = make_blocks("w", 9, seed=2)
    sink.send(open_msg("w", f"wav:{path}"))
    for block in blocks:
        sink.send(block)
    sink.send(SinkClose("w"))
    got, done = sink.recv_until_done("w")
    assert got == [], "wav delivery must not forward audio to the client"
    assert done.metrics["error"] == "" and done.metrics["wav_path"] == str(path)
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE
    assert np.array_equal(data, np.frombuffer(b"".join(b.pcm for b in blocks), dtype=np.int16))


def test_wav_path_that_cannot_be_opened_is_an_error_and_the_sink_goes_on(sink):
    blocker = sink.dir / "a-file"
    blocker.write_text("not a directory")
    sink.send(open_msg("bad", f"wav:{blocker}/out.wav"))
    for block in make_blocks("bad", 3, seed=3):
        sink.send(block)
    sink.send(SinkClose("bad"))
    _, done = sink.recv_until_done("bad")
    assert str(blocker) in done.metrics["error"] and done.metrics["blocks"] == 3
    sink.round_trip()


@pytest.mark.parametrize("deliver,needle", [("carrier-pigeon", "unknown delivery"), ("wav:", "unknown delivery")])
def test_unknown_delivery_is_an_error_in_the_metrics(sink, deliver, needle):
    sink.send(open_msg("u", deliver))
    sink.send(SinkClose("u"))
    _, done = sink.recv_until_done("u")
    assert needle in done.metrics["error"] and "valid" in done.metrics["error"]


def test_interleaved_streams_stay_separate(sink):
    path = sink.dir / "b.wav"
    a, b, c = make_blocks("a", 8, seed=4), make_blocks("b", 8, seed=5), make_blocks("c", 5, seed=6)
    sink.send(open_msg("a"))
    sink.send(open_msg("b", f"wav:{path}"))
    sink.send(open_msg("c"))
    for x, y, z in zip(a, b, c + [None] * 3):
        sink.send(x)
        sink.send(y)
        if z is not None:
            sink.send(z)
    for name in ("c", "a", "b"):
        sink.send(SinkClose(name))
    per_stream: dict[str, list[AudioBlock]] = {"a": [], "c": []}
    done: dict[str, SinkDone] = {}
    while len(done) < 3:
        msg = sink.recv()
        if isinstance(msg, SinkDone):
            done[msg.stream] = msg
        else:
            assert msg.stream not in done, "a block came after its stream's SinkDone"
            per_stream[msg.stream].append(msg)
    for name, sent in (("a", a), ("c", c)):
        assert [bytes(m.pcm) for m in per_stream[name]] == [bytes(m.pcm) for m in sent]
        assert done[name].metrics["blocks"] == len(sent)
    data, _ = soundfile.read(path, dtype="int16")
    assert np.array_equal(data, np.frombuffer(b"".join(m.pcm for m in b), dtype=np.int16))


def test_bad_frames_and_stray_blocks_do_not_kill_it(sink):
    blocks = make_blocks("ok", 4, seed=7)
    sink.send(open_msg("ok"))
    sink.send_raw([b"junk"])
    sink.send_raw([b"block", b"\xc1 not msgpack", b""])
    sink.send_raw([b"no-such-kind", b"\x80"])
    short = encode(blocks[0])
    sink.send_raw([short[0], short[1], b"\x00" * 10])  # PCM frame shorter than the header says
    sink.send(make_blocks("never-opened", 1, seed=8)[0])
    sink.send(blocks[0])
    sink.send(blocks[1])
    sink.send(blocks[1])  # duplicate
    sink.send(blocks[0])  # going back
    sink.send(blocks[2])
    sink.send(blocks[3])
    sink.send(SinkClose("ok"))
    got, done = sink.recv_until_done("ok")
    assert [m.seq for m in got] == [0, 1, 2, 3]
    assert done.metrics["sink_order_violations"] == 2 and done.metrics["blocks"] == 4
    assert sink.proc.poll() is None
    log = sink.log()
    assert "undecodable" in log and "PCM frame has 10 bytes" in log and "unknown message kind" in log
    assert "never-opened" in log


def test_close_of_an_unknown_stream_answers_with_an_error(sink):
    sink.send(SinkClose("ghost"))
    _, done = sink.recv_until_done("ghost")
    assert "ghost" in done.metrics["error"]


def test_shutdown_on_ctl_exits_0_within_a_second_and_finalises_open_wav(sink):
    path = sink.dir / "open.wav"
    blocks = make_blocks("w", 6, seed=9)
    sink.send(open_msg("w", f"wav:{path}"))
    for block in blocks:
        sink.send(block)
    sink.round_trip()  # everything above was handled
    start = time.monotonic()
    sink.ctl.send_multipart(encode(Shutdown("test")))
    assert sink.wait_exit(WAIT_S) == 0, sink.log()
    assert time.monotonic() - start < 1.0
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE and np.array_equal(data, np.frombuffer(b"".join(b.pcm for b in blocks), dtype=np.int16))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_within_a_second(sink, signum):
    sink.send(open_msg("left-open"))
    sink.round_trip()
    start = time.monotonic()
    sink.proc.send_signal(signum)
    assert sink.wait_exit(WAIT_S) == 0, sink.log()
    assert time.monotonic() - start < 1.0


def test_wav_is_valid_even_if_the_sink_is_killed_mid_stream(sink):
    path = sink.dir / "killed.wav"
    blocks = make_blocks("k", 5, seed=10)
    sink.send(open_msg("k", f"wav:{path}"))
    for block in blocks:
        sink.send(block)
    sink.round_trip()
    sink.proc.kill()
    sink.proc.wait(WAIT_S)
    data, _ = soundfile.read(path, dtype="int16")
    assert np.array_equal(data, np.frombuffer(b"".join(b.pcm for b in blocks), dtype=np.int16))


def fill_until_blocked(sink: SinkHarness, stream: str, limit: int) -> int:
    """Send blocks without reading the output until the pipeline pushes back; returns how many went."""
    pcm = bytes(2 * BLOCK)
    for seq in range(limit):
        block = AudioBlock(stream, 0, seq, seq * BLOCK, BLOCK, RATE, pcm=pcm)
        try:
            sink.push.send_multipart(encode(block), flags=zmq.NOBLOCK)
        except zmq.Again:
            # Sends can stall briefly while the sink catches up; only a lasting stall is back-pressure.
            if not sink.push.poll(500, zmq.POLLOUT):
                return seq
            sink.push.send_multipart(encode(block))
    return limit


def test_backpressure_bounds_the_pipeline_and_loses_nothing():
    harness = SinkHarness(args=("--hwm", "8"), hwm=8)
    try:
        harness.round_trip()
        harness.send(open_msg("bp"))
        sent = fill_until_blocked(harness, "bp", 5000)
        assert sent < 5000, "the sink kept reading although nobody read its output"
        got = [harness.recv() for _ in range(sent)]  # reading again frees the pipeline
        harness.send(SinkClose("bp"))
        rest, done = harness.recv_until_done("bp")
        assert rest == []
        assert [m.seq for m in got] == list(range(sent)) and done.metrics["blocks"] == sent
    finally:
        harness.close()


@pytest.mark.parametrize("how", ["ctl", "sigterm"])
def test_an_unread_output_does_not_hang_shutdown(how):
    harness = SinkHarness(args=("--hwm", "8", "--send-timeout", "0.5"), hwm=8)
    try:
        harness.round_trip()
        harness.send(open_msg("stuck"))
        fill_until_blocked(harness, "stuck", 5000)
        start = time.monotonic()
        if how == "ctl":
            harness.ctl.send_multipart(encode(Shutdown("test")))
        else:
            harness.proc.send_signal(signal.SIGTERM)
        assert harness.wait_exit(WAIT_S) == 0, harness.log()
        assert time.monotonic() - start < 2.0
    finally:
        harness.close()


# A stand-in for sounddevice that "plays" at real time into a file, so the
# speakers path runs end to end on a machine without an audio device.
FAKE_SOUNDDEVICE = textwrap.dedent("""
    import os, threading, time

    class CallbackStop(Exception):
        pass

    class RawOutputStream:
        def __init__(self, samplerate, channels, dtype, callback, latency=None):
            assert channels == 1 and dtype == "int16"
            self.rate, self.callback = samplerate, callback
            self.active = False
            self.closed = False
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)

        def start(self):
            self.active = True
            self._thread.start()

        def _run(self):
            frames = 240
            with open(os.environ["FAKE_SD_OUT"], "ab") as out:
                while not self._stop.is_set():
                    buf = bytearray(frames * 2)
                    try:
                        self.callback(buf, frames, None, None)
                    except CallbackStop:
                        out.write(buf)
                        break
                    out.write(buf)
                    time.sleep(frames / self.rate)
            self.active = False

        def abort(self):
            self._stop.set()

        def close(self):
            self.closed = True
""")


def test_speakers_play_every_sample_then_done(tmp_path):
    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    played = tmp_path / "played.raw"
    harness = SinkHarness({"PYTHONPATH": str(tmp_path), "FAKE_SD_OUT": str(played)})
    try:
        blocks = make_blocks("sp", 10, seed=11)
        harness.send(open_msg("sp", "speakers", prebuffer_ms=100))
        for block in blocks:
            harness.send(block)
        harness.send(SinkClose("sp"))
        got, done = harness.recv_until_done("sp")
        assert got == [] and done.metrics["error"] == ""
        sent = np.frombuffer(b"".join(b.pcm for b in blocks), dtype=np.int16)
        out = np.frombuffer(played.read_bytes(), dtype=np.int16)
        assert np.array_equal(out[:len(sent)], sent) and not out[len(sent):].any()
    finally:
        harness.close()


def test_speakers_without_portaudio_is_an_error_in_the_metrics(tmp_path):
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    harness = SinkHarness({"PYTHONPATH": str(tmp_path)})
    try:
        harness.send(open_msg("sp", "speakers"))
        harness.send(make_blocks("sp", 1, seed=12)[0])
        harness.send(SinkClose("sp"))
        _, done = harness.recv_until_done("sp")
        assert "PortAudio" in done.metrics["error"] and done.metrics["blocks"] == 1
    finally:
        harness.close()


def run_sink_expecting_failure(ctl_ep: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.sink", "--in", "ipc:///tmp/unused-in", "--out", "ipc:///tmp/unused-out",
         "--ctl", ctl_ep],
        cwd=REPO, capture_output=True, text=True, timeout=WAIT_S, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_an_endpoint_it_cannot_bind_exits_2_with_a_message(tmp_path):
    proc = run_sink_expecting_failure(f"ipc://{tmp_path}/no/such/dir/ctl")
    assert proc.returncode == 2 and "cannot set up sockets" in proc.stderr


def test_it_never_replaces_a_file_that_is_not_its_socket(tmp_path):
    precious = tmp_path / "ctl"
    precious.write_text("keep me")
    proc = run_sink_expecting_failure(f"ipc://{precious}")
    assert proc.returncode == 2 and "not a socket" in proc.stderr
    assert precious.read_text() == "keep me"


def test_it_does_not_steal_a_live_sinks_control_socket(sink):
    sink.round_trip()
    proc = run_sink_expecting_failure(sink.ctl_ep)
    assert proc.returncode == 2 and "another process" in proc.stderr
    sink.round_trip()  # the first sink still works


def test_a_restart_after_kill_reuses_the_stale_socket_and_a_clean_exit_removes_it(sink):
    ctl_file = Path(sink.ctl_ep[len("ipc://"):])
    sink.round_trip()
    sink.proc.kill()
    sink.proc.wait(WAIT_S)
    assert ctl_file.exists(), "a killed sink cannot clean up"
    sink.proc = subprocess.Popen(sink.proc.args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
    sink.round_trip("after-restart")
    sink.ctl.send_multipart(encode(Shutdown("test")))
    assert sink.wait_exit(WAIT_S) == 0
    assert not ctl_file.exists()
