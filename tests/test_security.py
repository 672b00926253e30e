"""Safe defaults: loopback unless told otherwise; beyond loopback only with CURVE, and only for known clients."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from pipeline.client import Client, ServiceUnavailable, within
from pipeline.processes.service_process import ServiceProcess
from pipeline.processes.stats import process_tree_stats
from pipeline.wire.security import client_keys, generate_keys, is_local_endpoint
from service_support import collect

pytestmark = pytest.mark.slow


def curve(keys_dir: Path, name: str = "client-1") -> dict:
    server_key, pair = client_keys(str(keys_dir), name)
    return {"curve_server_key": server_key, "curve_client_keys": pair}


def listening_tcp_ports(pid: int) -> list[int]:
    """The IPv4 TCP ports process ``pid`` listens on (its sockets, matched in /proc's table by inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local_address rem_address st ... inode (10th)
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class CurveService(ServiceProcess):
    """A service on tcp:// with CURVE: readiness is asked with the client's keys.

    It binds port 0, so no port is chosen here that another process could take first. The service does
    not report the port the OS picked (the coordinator logs the endpoint as configured), so it is read
    from the coordinator's listening socket in /proc: its only TCP listener. The HTTP gateway is off: it
    would connect to the configured endpoint, port 0."""

    def __init__(self, keys_dir: Path, config: Path):
        super().__init__("--engine", "piper", "--config", str(config), "--http", "off", endpoint="tcp://127.0.0.1:0")
        self.keys_dir = keys_dir

    def wait_ready(self) -> None:
        self.endpoint = self._bound_endpoint()
        asyncio.run(self._wait_ready())

    def _bound_endpoint(self) -> str:
        """Until the coordinator listens: the endpoint it bound."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with code {self.proc.returncode}:\n{self.log_tail()}")
            for proc in process_tree_stats(self.proc.pid):
                if proc["process"] == "pipeline.coordinator":
                    try:
                        ports = listening_tcp_ports(proc["pid"])
                    except OSError:  # it exited meanwhile
                        continue
                    assert len(ports) <= 1, f"the coordinator listens on {ports}: which is the client socket?"
                    if ports:
                        return f"tcp://127.0.0.1:{ports[0]}"
            time.sleep(0.05)
        raise RuntimeError(f"the coordinator did not listen within {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        async with Client(self.endpoint, timeout_s=2.0, **curve(self.keys_dir)) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited with code {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if (await client.status(1.0)).state.get("serving"):
                        return
                except ServiceUnavailable:
                    continue
                await asyncio.sleep(0.1)
        raise RuntimeError(f"service not ready within {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    generate_keys(root / "service", clients=2)
    generate_keys(root / "stranger", clients=1)
    return {"service": root / "service", "stranger": root / "stranger"}


@pytest.fixture(scope="module")
def service(keys, tmp_path_factory):
    config = tmp_path_factory.mktemp("curve") / "service.toml"
    config.write_text(f'[service]\ncurve_keys_dir = "{keys["service"]}"\n')
    svc = CurveService(keys["service"], config).start()
    yield svc
    svc.stop()
    assert not svc.orphans


async def ask_status(endpoint: str, timeout_s: float, **kwargs):
    async with Client(endpoint, timeout_s=timeout_s, **kwargs) as client:
        return await client.status(timeout_s)


def test_keys_command_writes_a_server_pair_and_client_pairs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "keys", str(tmp_path / "k"), "--clients", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    k = tmp_path / "k"
    assert {p.name for p in k.iterdir()} == {"server.key", "server.key_secret", "client-1.key_secret",
                                             "client-2.key_secret", "clients"}
    assert {p.name for p in (k / "clients").iterdir()} == {"client-1.key", "client-2.key"}, "only public keys there"
    for name in ("client-1", "client-2"):
        public, secret = zmq.auth.load_certificate(str(k / f"{name}.key_secret"))
        assert zmq.auth.load_certificate(str(k / "clients" / f"{name}.key"))[0] == public and secret
    server_key, (public, secret) = client_keys(str(k), "client-2")
    assert server_key == zmq.auth.load_certificate(str(k / "server.key"))[0]
    assert len(server_key) == len(public) == len(secret) == 40  # Z85 of 32 bytes


def test_a_client_with_the_right_keys_is_served(service, keys):
    assert service.endpoint.startswith("tcp://127.0.0.1:") and not service.endpoint.endswith(":0")

    async def go():
        async with Client(service.endpoint, timeout_s=60, **curve(keys["service"], "client-2")) as client:
            reply = await client.status(10)
            return reply, await collect(client.speak("Hello over an encrypted socket."))
    reply, out = asyncio.run(go())
    assert reply.healthy and reply.state["serving"]
    assert out.error is None and out.metrics["audio_s"] > 0.5 and out.metrics["seam_violations"] == 0


def stranger_keys(keys: dict[str, Path], who: str) -> dict:
    right = curve(keys["service"])
    wrong = curve(keys["stranger"])
    if who == "no keys":
        return {}
    if who == "unknown client pair":
        return {**right, "curve_client_keys": wrong["curve_client_keys"]}
    if who == "fresh client pair":
        return {**right, "curve_client_keys": zmq.curve_keypair()}
    return {**right, "curve_server_key": wrong["curve_server_key"]}  # the right pair, another server's key


REFUSALS = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH}


class Knocker:
    """A bare DEALER with a stranger's keys, watched by its monitor: it knows when it was turned away."""

    def __init__(self, endpoint: str, keys: dict):
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys.get("curve_server_key") and keys.get("curve_client_keys"):
            self.sock.curve_serverkey = keys["curve_server_key"]
            self.sock.curve_publickey, self.sock.curve_secretkey = keys["curve_client_keys"]
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(REFUSALS))
        self.sock.connect(endpoint)

    async def turned_away(self, timeout_s: float = 10.0) -> int:
        """The event that ended its first handshake; it must be a refusal."""
        event = parse_monitor_message(await within(self.monitor.recv_multipart(), timeout_s))["event"]
        assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, "a stranger's handshake succeeded"
        return event

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close()
        self.sock.close()
        self.ctx.term()


@pytest.mark.parametrize("who", ["no keys", "unknown client pair", "fresh client pair", "wrong server key"])
def test_a_client_without_the_right_keys_gets_nothing(service, keys, who):
    async def go():
        t0 = time.monotonic()
        refused = asyncio.create_task(ask_status(service.endpoint, 1.5, **stranger_keys(keys, who)))
        knocker = Knocker(service.endpoint, stranger_keys(keys, who))
        try:
            # The right client is served while strangers are at the door: one has just been turned away.
            event = await knocker.turned_away()
            served = await ask_status(service.endpoint, 10, **curve(keys["service"]))
        finally:
            knocker.close()
        # The client library gives up within its timeout, the send included (it once hung on the send).
        with pytest.raises(ServiceUnavailable, match="no status reply|could not send"):
            await refused
        return served, event, time.monotonic() - t0
    served, event, refused_after = asyncio.run(go())
    assert event in REFUSALS
    assert served.healthy and served.state["serving"]
    assert refused_after < 1.5 + 1.0


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://[::]:0", "tcp://192.0.2.1:0"])
def test_a_non_loopback_bind_without_keys_is_refused_at_start(endpoint):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--endpoint", endpoint, "--engine", "piper"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "CURVE" in out.stderr and "xtts-stream keys" in out.stderr
    assert "starting on" not in out.stdout, "nothing may start"


def test_a_keys_directory_without_keys_is_refused_at_start(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--endpoint", "tcp://0.0.0.0:0",
                          "--engine", "piper", "--keys", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "server.key_secret" in out.stderr, out.stderr


@pytest.mark.parametrize("endpoint, local", [
    ("ipc:///tmp/x.sock", True),
    ("inproc://x", True),
    ("tcp://127.0.0.1:5555", True),
    ("tcp://127.9.9.9:5555", True),
    ("tcp://localhost:5555", True),
    ("tcp://LOCALHOST:5555", True),
    ("tcp://[::1]:5555", True),
    ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False),
    ("tcp://[::]:5555", False),
    ("tcp://192.168.1.20:5555", False),
    ("tcp://10.0.0.1:5555", False),
    ("tcp://eth0:5555", False),
    ("tcp://localhost.example.com:5555", False),
    ("tcp://127.0.0.1.example.com:5555", False),
    ("udp://127.0.0.1:5555", False),
    ("ws://127.0.0.1:5555", False),
    ("pgm://127.0.0.1;239.192.1.1:5555", False),
    ("", False),
])
def test_is_local_endpoint(endpoint, local):
    assert is_local_endpoint(endpoint) is local
