"""Scale-out: workers laid out over devices, several workers sharing streams, workers joining from other hosts.

Devices are tested with fake device lists (and a fake nvidia-smi) on the CPU.
The service tests use the null engine, a tone that costs the worker nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.client import Client, ServiceUnavailable
from pipeline.processes.plan import remote_worker_processes, service_processes, worker_devices
from pipeline.processes.service_process import ServiceProcess
from pipeline.settings import SettingsError, load_settings
from pipeline.wire.runpaths import RunPaths
from pipeline.wire.security import client_keys, generate_keys
from service_support import collect, run

LONG = " ".join(f"Sentence number {i} is here, and it goes on for a while." for i in range(8))


# -- devices ---------------------------------------------------------------------------------

def fake_nvidia_smi(directory: Path, gpus: int) -> None:
    smi = directory / "nvidia-smi"  # answers the one query the supervisor makes, as the driver does
    smi.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=index ] || exit 9\n" +
                   "".join(f"echo {i}\n" for i in range(gpus)))
    smi.chmod(0o755)


def devices(monkeypatch, tmp_path, gpus: int | None, **service) -> list[str]:
    bin_dir = tmp_path / f"bin-{gpus}"
    bin_dir.mkdir(exist_ok=True)
    if gpus is not None:
        fake_nvidia_smi(bin_dir, gpus)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}" if gpus is not None else str(bin_dir))
    return worker_devices(load_settings().with_service(**service).service)


def test_workers_are_laid_out_over_the_devices_asked_for(monkeypatch, tmp_path):
    assert devices(monkeypatch, tmp_path, 4, workers=3) == ["", "", ""]  # auto: `workers` on `device`
    assert devices(monkeypatch, tmp_path, 3, devices="all") == ["cuda:0", "cuda:1", "cuda:2"]
    assert devices(monkeypatch, tmp_path, 2, devices="all", workers_per_device=2) == \
        ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert devices(monkeypatch, tmp_path, 8, devices=["cuda:2", "cuda:5"]) == ["cuda:2", "cuda:5"]
    assert devices(monkeypatch, tmp_path, None, devices="all", workers=2) == ["", ""], "no GPU: the device setting"
    with pytest.raises(SettingsError, match="devices"):
        devices(monkeypatch, tmp_path, 2, devices="most")


def test_each_worker_process_is_pinned_to_its_device(tmp_path):
    svc = load_settings().with_service(devices=["cuda:0", "cuda:1"], workers_per_device=2).service
    workers = [m for m in service_processes(svc, RunPaths(tmp_path), None) if m.role == "worker"]
    assert [(m.name, m.argv[m.argv.index("--device") + 1]) for m in workers] == \
        [("w0", "cuda:0"), ("w1", "cuda:0"), ("w2", "cuda:1"), ("w3", "cuda:1")]
    remote = remote_worker_processes(svc, RunPaths(tmp_path), "tcp://coordinator:5556", "/keys", "client-2",
                                     "gpu-node-7", "/tmp/ready")
    assert [m.name for m in remote] == ["gpu-node-7.0", "gpu-node-7.1", "gpu-node-7.2", "gpu-node-7.3"]
    assert all("--connect" in m.argv and "client-2" in m.argv for m in remote)
    assert ["--ready-file" in m.argv for m in remote] == [True, False, False, False]


# -- several workers -------------------------------------------------------------------------

def null_service(tmp_path: Path, config: str, *args: str) -> ServiceProcess:
    cfg = tmp_path / "service.toml"
    cfg.write_text("[service]\nheartbeat_interval_s = 0.2\n" + config)
    return ServiceProcess("--engine", "null", "--config", str(cfg), "--http", "off", *args)


@pytest.mark.slow
def test_three_workers_share_twelve_streams_and_a_dead_one_loses_no_audio(tmp_path):
    # A slow tone (5x real time), unpaced: each stream's chunks are all on its worker at once.
    with null_service(tmp_path, "workers = 3\nnull_speed = 5.0\n") as svc:
        async def go():
            async with Client(svc.endpoint, timeout_s=60) as client:
                # The service is ready with its first worker: the streams start once all three are.
                deadline = time.monotonic() + 60
                while len((await client.status(10)).state["workers"]) < 3:
                    assert time.monotonic() < deadline, f"3 workers not ready within 60 s:\n{svc.log_tail()}"
                    await asyncio.sleep(0.05)
                utts = [client.speak(LONG, overrides={"max_lead_s": 0}) for _ in range(12)]
                first = await asyncio.gather(*(anext(aiter(u)) for u in utts))
                state = (await client.status(10)).state
                victim = state["workers"][0]
                os.kill(victim["pid"], signal.SIGKILL)
                outs = await asyncio.gather(*(collect(u) for u in utts))
                return first, state, victim, outs, (await client.status(10)).state
        first, state, victim, outs, after = run(go())
    assert sorted(w["inflight"] > 0 for w in state["workers"]) == [True] * 3, "all three workers had streams"
    done = [o for o in outs if o.error is None]
    failed = [o for o in outs if o.error is not None]
    print(f"\n3 workers, 12 streams, {victim['name']} killed: {len(done)} completed, "
          f"{[o.error.code for o in failed]}; completed by {sorted(o.metrics['worker'] for o in done)}")
    assert all(o.error.code == "worker_died" for o in failed), "a stream ends cleanly or says why"
    assert len(done) >= 8 and {o.metrics["worker"] for o in done} >= {w["name"] for w in state["workers"]} - {
        victim["name"]}
    for out in done:  # no sample missing or twice: the first block came before the kill, the rest after
        out.assert_in_order(start_seq=1, start_offset=first[0].sample_count)
        assert out.metrics["seam_violations"] == 0
    assert after["worker_deaths"] == 1


# -- a worker on another host --------------------------------------------------------------------

def curve(keys: Path, name: str = "client-1") -> dict:
    server, pair = client_keys(str(keys), name)
    return {"curve_server_key": server, "curve_client_keys": pair}


class CoordinatorOnly(ServiceProcess):
    """`serve --workers 0`: ready when it answers status (no worker of its own will ever serve)."""

    def __init__(self, keys: Path, tmp_path: Path):
        cfg = tmp_path / "service.toml"
        cfg.write_text(f'[service]\ncurve_keys_dir = "{keys}"\nheartbeat_interval_s = 0.2\nheartbeat_timeout_s = 5\n')
        super().__init__("--engine", "null", "--config", str(cfg), "--http", "off", "--workers", "0",
                         "--worker-endpoint", "tcp://127.0.0.1:0")
        self.keys = keys

    def wait_ready(self) -> None:
        self.worker_endpoint = run(self._worker_endpoint())

    async def _worker_endpoint(self) -> str:
        deadline = time.monotonic() + 60
        async with Client(self.endpoint, timeout_s=2, **curve(self.keys)) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited:\n{self.log_tail()}")
                try:
                    return (await client.status(1.0)).state["worker_endpoint"]
                except ServiceUnavailable:
                    await asyncio.sleep(0.1)
        raise RuntimeError(f"no status within 60 s:\n{self.log_tail()}")

    def state(self) -> dict:
        async def ask():
            async with Client(self.endpoint, timeout_s=10, **curve(self.keys)) as client:
                return (await client.status(10)).state
        return run(ask())

    def wait_for(self, predicate, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state()
            if predicate(state) or time.monotonic() > deadline:
                return state
            time.sleep(0.1)


def start_worker_host(svc: CoordinatorOnly, tmp_path: Path, *keys: str) -> subprocess.Popen:
    log = open(tmp_path / "worker-host.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "--connect", svc.worker_endpoint,
                             "--name", "far", "--engine", "null", "--ready-file", str(tmp_path / "ready"), *keys],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_log(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the worker host exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in its log within {timeout_s} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)  # drains: nothing is held, so it stops at once
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_on_another_host_joins_over_curve_serves_and_its_death_is_seen(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, clients=2)
    with CoordinatorOnly(keys, tmp_path) as svc:
        assert svc.worker_endpoint.startswith("tcp://127.0.0.1:")
        host = start_worker_host(svc, tmp_path, "--keys", str(keys), "--key-name", "client-2")
        try:
            state = svc.wait_for(lambda s: s["serving"] and s["workers"])
            assert [w["name"] for w in state["workers"]] == ["far"], svc.log_tail()
            deadline = time.monotonic() + 5
            while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (tmp_path / "ready").exists(), "the ready file says it is connected and serving"

            async def speak_once():
                async with Client(svc.endpoint, timeout_s=30, **curve(keys)) as client:
                    return await collect(client.speak("Spoken on another host.", overrides={"max_lead_s": 0}))
            out = run(speak_once())
            assert out.error is None and out.metrics["worker"] == "far" and out.metrics["engine"] == "null"

            pid = state["workers"][0]["pid"]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)  # the worker process; its host's supervisor stays
            dead = svc.wait_for(lambda s: s["worker_deaths"] == 1, 10)
            detected_s = time.monotonic() - killed
            back = svc.wait_for(lambda s: s["workers"] and s["workers"][0]["pid"] != pid, 30)
        finally:
            code = stop(host)
    print(f"\nremote worker SIGKILL: seen dead within {detected_s:.2f} s (connection closed)")
    assert dead["worker_deaths"] == 1 and detected_s < 3.0
    assert back["workers"][0]["name"] == "far", "its own supervisor started it again"
    assert code == 0 and not (tmp_path / "ready").exists()


@pytest.mark.slow
def test_a_worker_without_the_keys_is_never_admitted(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, clients=1)
    with CoordinatorOnly(keys, tmp_path) as svc:
        host = start_worker_host(svc, tmp_path)  # loopback, so it may try; the coordinator wants keys
        try:
            # Until the worker is up (its ready message sent) and was turned away (a handshake refused: the
            # connection dropped at once). Its ready message cannot pass without a handshake.
            wait_for_log(tmp_path / "worker-host.log", "warmed up", host)
            wait_for_log(tmp_path / "worker-host.log", "lost the connection to the coordinator", host)
            state = svc.state()
        finally:
            stop(host)
    assert state["workers"] == [] and not state["serving"]
    assert not (tmp_path / "ready").exists()
    refused = subprocess.run([sys.executable, "-m", "pipeline.cli", "worker", "--connect", "tcp://192.0.2.1:5556",
                              "--engine", "null"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "without CURVE keys" in refused.stderr
