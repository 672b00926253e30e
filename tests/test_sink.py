"""The sink as a real process on real ipc:// sockets, driven from the coordinator's side.

Audio flows one way (coordinator -> sink); only SinkDone comes back."""

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

from pipeline.wire.codec import decode, encode
from pipeline.wire.protocol import Audio, Message, Shutdown, SinkClose, SinkDone, SinkOpen

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

    def recv_done(self, stream: str) -> SinkDone:
        msg = self.recv()
        assert isinstance(msg, SinkDone) and msg.stream == stream, f"unexpected {msg}"
        return msg

    def round_trip(self, stream: str = "ping") -> None:
        """Proves the sink is up and has handled everything sent before."""
        self.send(SinkOpen(stream, RATE, 0, f"wav:{self.dir / (stream + '.wav')}"))
        self.send(SinkClose(stream))
        assert self.recv_done(stream).metrics["error"] == ""

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


def make_spans(stream: str, n: int, seed: int, epoch: int = 0) -> list[Audio]:
    """Contiguous spans of different lengths, as the coordinator sends them."""
    rng = np.random.default_rng(seed)
    out, offset = [], 0
    for seq in range(n):
        count = int(rng.integers(1, 4 * BLOCK))
        pcm = rng.integers(-32768, 32767, count, dtype=np.int16).tobytes()
        out.append(Audio(stream, epoch, seq, offset, count, RATE, pcm=pcm))
        offset += count
    return out


def open_msg(stream: str, deliver: str, prebuffer_ms: int = 200) -> SinkOpen:
    return SinkOpen(stream, RATE, prebuffer_ms, deliver)


def pcm_of(spans: list[Audio]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes(s.pcm) for s in spans), dtype=np.int16)


def test_wav_delivery_writes_exactly_the_samples_sent(sink):
    path = sink.dir / "nested" / "dir" / "out.wav"
    spans = make_spans("w", 9, seed=2)
    sink.send(open_msg("w", f"wav:{path}"))
    for span in spans:
        sink.send(span)
    sink.send(SinkClose("w"))
    done = sink.recv_done("w")
    assert done.metrics["error"] == "" and done.metrics["wav_path"] == str(path)
    assert done.metrics["sink_audio_s"] == pytest.approx(len(pcm_of(spans)) / RATE, abs=1e-6)
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE and np.array_equal(data, pcm_of(spans))


def test_wav_path_that_cannot_be_opened_is_an_error_and_the_sink_goes_on(sink):
    blocker = sink.dir / "a-file"
    blocker.write_text("not a directory")
    sink.send(open_msg("bad", f"wav:{blocker}/out.wav"))
    for span in make_spans("bad", 3, seed=3):
        sink.send(span)
    sink.send(SinkClose("bad"))
    done = sink.recv_done("bad")
    assert str(blocker) in done.metrics["error"] and done.metrics["sink_audio_s"] > 0
    sink.round_trip()


def test_a_path_too_deep_to_create_fails_its_stream_not_the_sink(sink):
    """A 3 KB request once crashed the sink (directory creation recursed too deep)."""
    path = str(sink.dir / "k") + "/d" * 1500 + "/x.wav"
    sink.send(open_msg("deep", f"wav:{path}"))
    sink.send(make_spans("deep", 1, seed=13)[0])
    sink.send(SinkClose("deep"))
    done = sink.recv_done("deep")
    assert "cannot write WAV file" in done.metrics["error"]
    assert sink.proc.poll() is None
    sink.round_trip()


@pytest.mark.parametrize("deliver,needle", [("carrier-pigeon", "unknown delivery"), ("wav:", "unknown delivery"),
                                            ("client", "unknown delivery")])
def test_unknown_delivery_is_an_error_in_the_metrics(sink, deliver, needle):
    sink.send(open_msg("u", deliver))
    sink.send(SinkClose("u"))
    done = sink.recv_done("u")
    assert needle in done.metrics["error"] and "valid" in done.metrics["error"]


def test_interleaved_streams_stay_separate(sink):
    paths = {name: sink.dir / f"{name}.wav" for name in "abc"}
    spans = {"a": make_spans("a", 8, seed=4), "b": make_spans("b", 8, seed=5), "c": make_spans("c", 5, seed=6)}
    for name, path in paths.items():
        sink.send(open_msg(name, f"wav:{path}"))
    for i in range(8):
        for name in "abc":
            if i < len(spans[name]):
                sink.send(spans[name][i])
    for name in "cab":
        sink.send(SinkClose(name))
        assert sink.recv_done(name).metrics["error"] == ""
    for name, path in paths.items():
        data, _ = soundfile.read(path, dtype="int16")
        assert np.array_equal(data, pcm_of(spans[name]))


def test_bad_frames_and_stray_spans_do_not_kill_it(sink):
    path = sink.dir / "ok.wav"
    spans = make_spans("ok", 4, seed=7)
    sink.send(open_msg("ok", f"wav:{path}"))
    sink.send_raw([b"junk"])
    sink.send_raw([b"audio", b"\xc1 not msgpack", b""])
    sink.send_raw([b"no-such-kind", b"\x80"])
    short = encode(spans[0])
    sink.send_raw([short[0], short[1], b"\x00" * 10])  # PCM frame shorter than the header says
    sink.send(make_spans("never-opened", 1, seed=8)[0])
    sink.send(spans[0])
    sink.send(spans[1])
    sink.send(spans[1])  # duplicate
    sink.send(spans[0])  # going back
    sink.send(spans[2])
    sink.send(spans[3])
    sink.send(SinkClose("ok"))
    done = sink.recv_done("ok")
    assert done.metrics["sink_order_violations"] == 2
    data, _ = soundfile.read(path, dtype="int16")
    assert np.array_equal(data, pcm_of(spans))
    assert sink.proc.poll() is None
    log = sink.log()
    assert "undecodable" in log and "PCM frame has 10 bytes" in log and "unknown message kind" in log
    assert "never-opened" in log


def test_close_of_an_unknown_stream_answers_with_an_error(sink):
    sink.send(SinkClose("ghost"))
    assert "ghost" in sink.recv_done("ghost").metrics["error"]


def write_open(sink, stream: str, count: int, seed: int):
    """A WAV stream opened and sent ``count`` spans, all handled, never closed: (path, spans)."""
    path = sink.dir / f"{stream}.wav"
    spans = make_spans(stream, count, seed=seed)
    sink.send(open_msg(stream, f"wav:{path}"))
    for span in spans:
        sink.send(span)
    sink.round_trip()  # everything above was handled
    return path, spans


def test_shutdown_on_ctl_exits_0_within_a_second_and_finalises_open_wav(sink):
    path, spans = write_open(sink, "w", 6, seed=9)
    start = time.monotonic()
    sink.ctl.send_multipart(encode(Shutdown("test")))
    assert sink.wait_exit(WAIT_S) == 0, sink.log()
    assert time.monotonic() - start < 1.0
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE and np.array_equal(data, pcm_of(spans))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_within_a_second(sink, signum):
    sink.send(open_msg("left-open", f"wav:{sink.dir / 'left.wav'}"))
    sink.round_trip()
    start = time.monotonic()
    sink.proc.send_signal(signum)
    assert sink.wait_exit(WAIT_S) == 0, sink.log()
    assert time.monotonic() - start < 1.0


def test_wav_is_valid_even_if_the_sink_is_killed_mid_stream(sink):
    path, spans = write_open(sink, "k", 5, seed=10)
    sink.proc.kill()
    sink.proc.wait(WAIT_S)
    data, _ = soundfile.read(path, dtype="int16")
    assert np.array_equal(data, pcm_of(spans))


@pytest.mark.parametrize("how", ["ctl", "sigterm"])
def test_an_unread_output_does_not_hang_shutdown(how):
    harness = SinkHarness(args=("--hwm", "8", "--send-timeout", "0.5"), hwm=8)
    try:
        harness.round_trip()
        for i in range(200):  # SinkDone messages nobody reads
            harness.send(SinkClose(f"ghost-{i}"))
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
        spans = make_spans("sp", 10, seed=11)
        harness.send(open_msg("sp", "speakers", prebuffer_ms=100))
        for span in spans:
            harness.send(span)
        harness.send(SinkClose("sp"))
        done = harness.recv_done("sp")
        assert done.metrics["error"] == ""
        sent = pcm_of(spans)
        out = np.frombuffer(played.read_bytes(), dtype=np.int16)
        assert np.array_equal(out[:len(sent)], sent) and not out[len(sent):].any()
    finally:
        harness.close()


def test_speakers_without_portaudio_is_an_error_in_the_metrics(tmp_path):
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    harness = SinkHarness({"PYTHONPATH": str(tmp_path)})
    try:
        harness.send(open_msg("sp", "speakers"))
        harness.send(make_spans("sp", 1, seed=12)[0])
        harness.send(SinkClose("sp"))
        done = harness.recv_done("sp")
        assert "PortAudio" in done.metrics["error"] and done.metrics["sink_audio_s"] > 0
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
