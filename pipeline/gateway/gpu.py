"""GPU memory per worker for /metrics, read from nvidia-smi at scrape time.

The workers do not report their GPU memory (only their engine imports torch),
so the gateway asks the driver: ``nvidia-smi --query-compute-apps`` lists each
process's memory, and the coordinator's status names each worker's PID. Only
when the engine runs on CUDA; a machine without nvidia-smi has nothing to show.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any, Mapping

QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
TIMEOUT_S = 5.0


async def worker_gpu_memory(state: Mapping[str, Any]) -> dict[str, float]:
    """worker name -> bytes of GPU memory its process holds ({} off CUDA or without nvidia-smi)."""
    device = str((state.get("engine") or {}).get("device", ""))
    smi = shutil.which("nvidia-smi")
    if not device.startswith("cuda") or smi is None:
        return {}
    proc = await asyncio.create_subprocess_exec(smi, *QUERY, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {}
    used = parse_compute_apps(out.decode(errors="replace"))
    return {w["name"]: used[w["pid"]] for w in state.get("workers") or []
            if isinstance(w, Mapping) and w.get("pid") in used}


def parse_compute_apps(text: str) -> dict[int, float]:
    """`pid, MiB` lines -> {pid: bytes}; lines that are not two numbers (e.g. "[N/A]") are skipped."""
    used: dict[int, float] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            try:
                used[int(parts[0])] = used.get(int(parts[0]), 0.0) + float(parts[1]) * 2 ** 20
            except ValueError:
                continue
    return used
