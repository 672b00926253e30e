"""The data path alone: the null engine (a tone, no model) through the whole service.

    scripts/bench service --engine null      # 1 to 1,024 real-time streams
    scripts/bench service --engine piper     # the same sweep and Piper's 8-stream CPU check

What it reports, per level of concurrent streams: time to first audio (the
coordinator's figure: text accepted -> first audio out of the reassembler),
underruns counted by the service's playback clock, and the CPU time the
coordinator and the sink spent per second of client audio (from /proc, over the
whole level). Single-stream TTFA comes from sequential requests. The bench
client reads spans as they come (no re-cutting), so its own cost stays small.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.client import Client, ServiceError
from pipeline.processes.service_process import ServiceProcess
from pipeline.processes.stats import children_of, stats

from .stats import pct

TEXT = ("The wind turned, and the tide began to run. We walked down to the harbour together, "
        "and nobody said a word.")  # about 7 s of audio at 14 characters a second
STREAMS_PER_CLIENT = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def service_pids(root: int) -> dict[str, int]:
    out = {}
    for pid in children_of(root):
        info = stats(pid)
        if info is None:
            continue
        name = str(info["process"])
        if name.startswith("pipeline.coordinator"):
            out["coordinator"] = pid
        elif name.startswith("workers.sink"):
            out["sink"] = pid
        elif name.startswith("workers.worker"):
            out.setdefault("worker", pid)
    return out


async def _one(client: Client, text: str, **kwargs: Any) -> dict[str, Any]:
    utt = client.speak(text, **kwargs)
    try:
        async for _ in utt.spans():
            pass
    except ServiceError as exc:
        return {"failed": f"{exc.code}: {exc.message}"[:200]}
    return dict(utt.metrics or {})


async def single_stream_ttfa(endpoint: str, requests: int) -> dict[str, Any]:
    async with Client(endpoint, timeout_s=60) as client:
        for _ in range(3):  # warm-up
            await _one(client, "Hello there.", overrides={"max_lead_s": 0})
        rows = [await _one(client, "Hello there, friend.", overrides={"max_lead_s": 0}) for _ in range(requests)]
    ok = [r["ttfa_ms"] for r in rows if "failed" not in r]
    return {"requests": requests, "errors": requests - len(ok), "ttfa_ms_p50": pct(ok, 50),
            "ttfa_ms_p95": pct(ok, 95), "ttfa_ms_max": max(ok, default=None)}


async def concurrent(endpoint: str, pids: dict[str, int], streams: int, text: str) -> dict[str, Any]:
    """``streams`` real-time streams at once (paced, as a voice agent's are), from streams/64 connections."""
    clients = [Client(endpoint, timeout_s=300) for _ in range(-(-streams // STREAMS_PER_CLIENT))]
    try:
        cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        rows = await asyncio.gather(*(_one(clients[i // STREAMS_PER_CLIENT], text) for i in range(streams)))
        wall = time.monotonic() - t0
        cpu = {name: cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
    finally:
        for client in clients:
            await client.close()
    ok = [r for r in rows if "failed" not in r]
    audio = sum(r["audio_s"] for r in ok)
    per_audio = {f"{name}_cpu_ms_per_audio_s": round(1000 * seconds / audio, 4) if audio else None
                 for name, seconds in cpu.items()}
    return {
        "streams": streams, "connections": len(clients), "errors": len(rows) - len(ok),
        "first_errors": [r["failed"] for r in rows if "failed" in r][:3], "wall_s": round(wall, 2),
        "audio_s": round(audio, 1),
        "ttfa_ms_p50": pct([r["ttfa_ms"] for r in ok], 50), "ttfa_ms_p95": pct([r["ttfa_ms"] for r in ok], 95),
        "played_ttfa_ms_p95": pct([r["played_ttfa_ms"] for r in ok if r.get("played_ttfa_ms") is not None], 95),
        "underruns": sum(r.get("underruns") or 0 for r in ok),
        "streams_with_underruns": sum(1 for r in ok if r.get("underruns")),
        "seam_violations": sum(r.get("seam_violations") or 0 for r in ok),
        "audio_messages_per_audio_s": round(sum(r.get("messages", 0) for r in ok) / audio, 2) if audio else None,
        **per_audio,
        "coordinator_plus_sink_cpu_ms_per_audio_s": round(1000 * (cpu.get("coordinator", 0) + cpu.get("sink", 0))
                                                          / audio, 4) if audio else None,
        "cpu_s": {name: round(v, 2) for name, v in cpu.items()},
    }


def run_datapath_bench(engine: str = "null", levels: list[int] | None = None, tiny: bool = False,
                       budget_s: float = 240.0, text: str = TEXT) -> dict[str, Any]:
    if levels is None:
        levels = [1, 8, 64] if tiny else [1, 8, 64, 128, 256, 512, 1024]
    config = Path(tempfile.mkdtemp(prefix="xtts-bench-")) / "datapath.toml"
    config.write_text("[service]\nmax_streams = 4096\nmax_clients = 1024\n"
                      f"max_streams_per_client = {STREAMS_PER_CLIENT}\nheartbeat_interval_s = 0.5\n")
    out: dict[str, Any] = {"engine": engine, "text_chars": len(text)}
    with ServiceProcess("--engine", engine, "--config", str(config), "--http", "off") as svc:
        pids = service_pids(svc.proc.pid)
        out["single_stream"] = asyncio.run(single_stream_ttfa(svc.endpoint, 20 if tiny else 100))
        start, sweep = time.monotonic(), []
        for level in levels:
            if time.monotonic() - start > budget_s:
                sweep.append({"streams": level, "skipped": "time budget"})
                continue
            sweep.append(asyncio.run(concurrent(svc.endpoint, pids, level, text)))
        out["concurrency"] = sweep
    return out
