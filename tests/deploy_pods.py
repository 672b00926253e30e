"""The pods of deploy/k8s laid out on this machine: their Secrets as mounted, the coordinator's files,
its command line, and the calls a test makes to the running service."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import deploy_support as ds
from pipeline.settings import tomllib
from pipeline.wire.security import client_keys, generate_keys

CONFIG_PATH = "/etc/xtts-stream/config/config.toml"


def command_line(ctr: dict) -> list[str]:
    """What the container runs: its image's ENTRYPOINT, then its args (else the image's CMD), tini left out."""
    stage = ds.final_stage(ds.IMAGES[ds.image_name(ctr)])
    argv = ds.exec_form(ds.instruction(stage, "ENTRYPOINT")) + (ctr.get("args") or
                                                               ds.exec_form(ds.instruction(stage, "CMD")))
    assert argv[:2] == ["tini", "--"], "tini is PID 1, so SIGTERM reaches the supervisor alone"
    return [re.sub(r"\$\((\w+)\)", r"value-of-\1", word) for word in argv[2:]]


def secret_contents(name: str, keys_dir: Path) -> dict[str, bytes]:
    """The Secret as docs/deploy.md's `kubectl create secret generic` makes it from `xtts-stream keys`."""
    template = ds.find(ds.load_yaml_docs(ds.K8S / ds.SECRETS_TEMPLATE), "Secret", name)
    out = {}
    for key in template["stringData"]:
        for candidate in (keys_dir / key, keys_dir / "clients" / key):
            if candidate.is_file():
                out[key] = candidate.read_bytes()
    missing = template["stringData"].keys() - out.keys()
    assert not missing, f"{name}: `xtts-stream keys` made no file for {missing}"
    return out


def mount_secret(contents: dict[str, bytes], volume: dict, where: Path) -> Path:
    items = volume["secret"].get("items") or [{"key": k, "path": k} for k in contents]
    for item in items:
        (where / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (where / item["path"]).write_bytes(contents[item["key"]])
    return where


def build_coordinator_keys(keys_dir: Path, root: Path) -> Path:
    """The coordinator pod's keys directory: the Secret mounted, then the init container's script run."""
    coordinator = ds.coordinator()
    init = ds.container(coordinator, "curve-keys", init=True)
    in_pod = {e["name"]: e["value"] for e in init["env"]}
    env = {name: str(root) + value for name, value in in_pod.items()}
    source_volume = ds.volume_at(coordinator, init, in_pod["SRC"])[0]
    Path(env["SRC"]).mkdir(parents=True)
    mount_secret(secret_contents("xtts-stream-curve", keys_dir), source_volume, Path(env["SRC"]))
    out = subprocess.run([*init["command"], *init["args"]], env={"PATH": os.environ["PATH"], **env},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return Path(env["DST"])


def build_worker_keys(keys_dir: Path, root: Path) -> Path:
    workers = ds.workers()
    ctr = ds.pod_spec(workers)["containers"][0]
    keys_path = ctr["args"][ctr["args"].index("--keys") + 1]
    volume, mount = ds.volume_at(workers, ctr, keys_path)
    where = root / mount["mountPath"].lstrip("/")
    where.mkdir(parents=True)
    return mount_secret(secret_contents(volume["secret"]["secretName"], keys_dir), volume, where)


def coordinator_pod_files(root: Path, short: Path, tmp_path: Path) -> dict:
    """The files the coordinator pod sees, under ``root``; addresses moved to loopback and ipc://."""
    settings = tomllib.loads((ds.K8S / "config.toml").read_text())["service"]
    keys = tmp_path / "keys"
    generate_keys(keys, clients=3)
    keys_dir = build_coordinator_keys(keys, root)
    api_key = "deploy-test-key-0123456789"
    http_keys = root / settings["http_api_keys_file"].lstrip("/")
    http_keys.parent.mkdir(parents=True)
    http_keys.write_text(f"{api_key}\n")
    endpoint = f"ipc://{short}/clients.sock"
    local = {"client_endpoint": endpoint, "worker_endpoint": "", "http_listen": "127.0.0.1:0"}
    for name, value in settings.items():
        if isinstance(value, str) and value.startswith("/"):
            local[name] = str(root) + value
            if name in ("wav_dir", "cache_dir", "voices_dir"):
                Path(local[name]).mkdir(parents=True, exist_ok=True)
    config = root / CONFIG_PATH.lstrip("/")
    config.parent.mkdir(parents=True)
    lines = [f"{k} = {json.dumps(local.get(k, v))}" for k, v in settings.items()]
    config.write_text("[service]\n" + "\n".join(lines) + "\n")
    work, tmp = root / "var/lib/xtts-stream", short / "tmp"  # the pod's /tmp holds the run directory
    work.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    return {"endpoint": endpoint, "keys": keys_dir, "api_key": api_key, "work": work, "tmp": tmp}


def gateway_url(proc: subprocess.Popen, endpoint: str, keys_dir: Path, log: Path) -> str:
    """The gateway's address, from the service's status (asked with the gateway's own key pair)."""
    from pipeline.client import ServiceError, SyncClient
    server_key, pair = client_keys(str(keys_dir))
    deadline = time.monotonic() + 120
    with SyncClient(endpoint, timeout_s=2.0, curve_server_key=server_key, curve_client_keys=pair) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                reply = client.status(timeout_s=1.0)
            except ServiceError:
                continue
            assert reply.healthy, f"a process keeps failing:\n{log.read_text()[-3000:]}"
            url = reply.state.get("supervisor", {}).get("http")
            if url:
                return url
            time.sleep(0.1)  # the supervisor reports the gateway's address within a second
    raise AssertionError(f"no gateway address within 120 s:\n{log.read_text()[-3000:]}")


def http_get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def kill_group(proc: subprocess.Popen) -> bool:
    """Kill whatever of the service is left; True if something was (a clean stop leaves nothing)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        left = True
    except ProcessLookupError:
        left = False
    proc.wait()
    return left
