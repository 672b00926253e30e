"""Which processes a supervisor runs: the whole service (`serve`), or one worker on another host (`worker`).

Workers are laid out over devices: `devices = "auto"` runs `workers` workers
on the `device` setting; `"all"` one per GPU that `nvidia-smi` lists (the
supervisor never imports torch); a list, one per device named. Each runs
`workers_per_device` workers, each pinned to its device (`--device`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field

from pipeline.settings import ServiceSettings, SettingsError
from pipeline.wire.runpaths import RunPaths

log = logging.getLogger("xtts_stream.supervisor")

# glibc raises its mmap threshold after a large free, after which big buffers come from the heap and
# stay there; a fixed threshold hands every large message (a client's 1 MiB request) back to the OS.
LEAN_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "1048576", "MALLOC_ARENA_MAX": "2"}


@dataclass
class Managed:
    name: str
    argv: list[str]
    ctl: str
    env: dict[str, str] | None = None
    role: str = "worker"  # front (coordinator, gateway, wyoming), worker or sink: the stop order
    proc: subprocess.Popen | None = None
    starts: deque = field(default_factory=deque)
    restarts: int = 0
    given_up: bool = False
    stop_step: str = ""


def gpu_names() -> list[str]:
    """The CUDA devices the driver lists ("cuda:0", ...); none without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [f"cuda:{line.strip()}" for line in out.stdout.splitlines() if line.strip().isdigit()]


def worker_devices(svc: ServiceSettings) -> list[str]:
    """One entry per worker: the device it is pinned to ("" = the `device` setting)."""
    if svc.devices == "auto":
        return [""] * svc.workers
    if svc.devices == "all":
        gpus = gpu_names()
        if not gpus:
            log.warning("devices = \"all\" but nvidia-smi lists no GPU: %d worker(s) on device %s", svc.workers,
                        svc.device)
            return [""] * svc.workers
        devices = gpus
    elif isinstance(svc.devices, list):
        devices = svc.devices
    else:
        raise SettingsError(f"devices must be \"auto\", \"all\" or a list of devices, got {svc.devices!r}")
    if svc.workers_per_device < 1:
        raise SettingsError(f"workers_per_device must be at least 1, got {svc.workers_per_device}")
    return [device for device in devices for _ in range(svc.workers_per_device)]


def worker_process(run: RunPaths, name: str, device: str, env: dict[str, str] | None = None,
                   extra: list[str] | None = None) -> Managed:
    argv = [sys.executable, "-m", "workers.worker", "--run-dir", str(run.root), "--name", name]
    argv += ["--device", device] if device else []
    return Managed(name, argv + (extra or []), run.ctl(name), env=env)


def service_processes(svc: ServiceSettings, run: RunPaths, worker_env: dict[str, str] | None) -> list[Managed]:
    py = sys.executable
    processes = [
        Managed("coordinator", [py, "-m", "pipeline.coordinator", "--run-dir", str(run.root)],
                run.ctl("coordinator"), env=LEAN_MALLOC, role="front"),
        Managed("sink", [py, "-m", "workers.sink", "--in", run.sink_in, "--out", run.sink_out,
                         "--ctl", run.ctl("sink")], run.ctl("sink"), role="sink"),
    ]
    processes += [worker_process(run, f"w{i}", device, worker_env) for i, device in enumerate(worker_devices(svc))]
    # Optional front ends: their failures make the service unhealthy, never stop it.
    if svc.http_listen:
        processes.append(Managed("gateway", [py, "-m", "pipeline.gateway", "--run-dir", str(run.root),
                                             "--listen", svc.http_listen], run.ctl("gateway"), role="front"))
    if svc.wyoming_uri:
        processes.append(Managed("wyoming", [py, "-m", "pipeline.integrations.wyoming_cli", "--uri",
                                             svc.wyoming_uri, "--endpoint", svc.client_endpoint,
                                             "--ctl", run.ctl("wyoming")]
                                 + (["--keys", svc.curve_keys_dir] if svc.curve_keys_dir else [])
                                 + (["--allow-remote"] if svc.wyoming_allow_remote else []),
                                 run.ctl("wyoming"), role="front"))
    return processes


def remote_worker_processes(svc: ServiceSettings, run: RunPaths, connect: str, keys_dir: str, key_name: str,
                            name: str, ready_file: str) -> list[Managed]:
    """`xtts-stream worker --connect`: this host's workers of a coordinator elsewhere."""
    link = ["--connect", connect] + (["--keys", keys_dir, "--key-name", key_name] if keys_dir else [])
    devices = worker_devices(svc)
    names = [name] if len(devices) == 1 else [f"{name}.{i}" for i in range(len(devices))]
    return [worker_process(run, n, device, extra=link + (["--ready-file", ready_file] if ready_file and i == 0 else []))
            for i, (n, device) in enumerate(zip(names, devices))]
