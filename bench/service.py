"""Service-level benchmarks: what a client of the running service experiences.

TTFA here is the coordinator's own figure (text accepted -> first block leaves
the reassembler), reported next to what the client saw and when a real-time
player with the profile's pre-buffer would start. Every stage is time-boxed so
a slow device cannot overrun a benchmark run; a stage cut short says so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pipeline.client import Client, ServiceError
from pipeline.processes.service_process import ServiceProcess
from pipeline.processes.stats import process_tree_stats

from .stats import pct

SENTENCE = "The old lighthouse keeper lit the lamp."  # 39 characters
PARAGRAPH = (
    "The otherworldly light spilled over us, cold and silver, and for a moment nobody spoke. "
    "Then the old woman raised her lantern and whispered: do you see it? Far out on the water, "
    "where the reef breaks the swell, a second light answered hers, slow and patient, as if it had "
    "been waiting a very long time. We counted the flashes together, three short and one long, "
    "and the boy beside me forgot to breathe. Nobody in the village had kept that lamp for forty "
    "years, she said, and nobody alive knew who had lit it tonight. The wind turned, the tide "
    "began to run, and one by one we walked down to the harbour to see for ourselves."
)



async def _one(client: Client, text: str, paced: bool = False, **kwargs: Any) -> dict[str, Any]:
    """One request; unpaced unless asked (synthesis speed is measured, not a listener's real time)."""
    if not paced:
        kwargs["overrides"] = {"max_lead_s": 0, **kwargs.get("overrides", {})}
    utt = client.speak(text, **kwargs)
    try:
        async for _ in utt.spans():
            pass
    except ServiceError as exc:
        return {"failed": str(exc)}
    return {**(utt.metrics or {}), "client_ttfa_ms": utt.client_ttfa_ms}


async def ttfa_series(client: Client, n: int, budget_s: float) -> dict[str, Any]:
    start, rows = time.monotonic(), []
    while len(rows) < n and time.monotonic() - start < budget_s:
        rows.append(await _one(client, SENTENCE))
    ok = [r for r in rows if "failed" not in r]
    return {
        "requests": len(rows), "errors": len(rows) - len(ok), "cut_short": len(rows) < n,
        "ttfa_ms_p50": pct([r["ttfa_ms"] for r in ok], 50), "ttfa_ms_p95": pct([r["ttfa_ms"] for r in ok], 95),
        "client_ttfa_ms_p50": pct([r["client_ttfa_ms"] for r in ok], 50),
        "played_ttfa_ms_p50": pct([r["played_ttfa_ms"] for r in ok if r.get("played_ttfa_ms") is not None], 50),
        "rtf_p50": pct([r["rtf"] for r in ok], 50),
    }


async def rtf_texts(client: Client, tiny: bool) -> dict[str, Any]:
    out = {}
    # The tiny model still has the full-size vocoder: on a CPU a short paragraph stands in.
    paragraph = PARAGRAPH[:PARAGRAPH.index("Far out")] if tiny else PARAGRAPH
    for name, text in (("sentence_39", SENTENCE), ("paragraph", paragraph)):
        r = await _one(client, text)
        out[name] = {k: r.get(k) for k in ("chars", "rtf", "audio_s", "ttfa_ms", "chunks", "underruns", "failed")}
        out[name]["chars"] = len(text)
    return out


async def ttfa_by_first_chunk(client: Client, lengths: list[int], budget_s: float,
                              repeats: int = 3) -> list[dict[str, Any]]:
    """The first chunk made exactly L characters long: a comma at L, the profile allowing it (median of repeats)."""
    start, out = time.monotonic(), []
    filler = "and the night was long and the road was dark " * 8
    for length in lengths:
        if time.monotonic() - start > budget_s:
            out.append({"first_chunk_chars": length, "skipped": "time budget"})
            continue
        text = filler[:length - 1].rstrip() + ", then it was morning."
        overrides = {"first_chunk_max_chars": max(length, 1), "chunk_target_chars": max(length, 120)}
        rows = [await _one(client, text, overrides=overrides) for _ in range(repeats)]
        ok = [r["ttfa_ms"] for r in rows if "failed" not in r]
        out.append({"first_chunk_chars": length, "ttfa_ms": pct(ok, 50), "ttfa_ms_max": max(ok, default=None),
                    "failed": next((r["failed"] for r in rows if "failed" in r), None)})
    return out


STREAMS_PER_CLIENT = 16  # below the service's max_streams_per_client


async def concurrency_sweep(endpoint: str, levels: list[int], budget_s: float) -> list[dict[str, Any]]:
    """``level`` streams at once, from level/16 client connections (as many programs would)."""
    text = "The wind turned, and the tide began to run. We walked down to the harbour together."
    start, out = time.monotonic(), []
    for level in levels:
        if time.monotonic() - start > budget_s:
            out.append({"streams": level, "skipped": "time budget"})
            continue
        clients = [Client(endpoint, timeout_s=300) for _ in range(-(-level // STREAMS_PER_CLIENT))]
        try:
            t0 = time.monotonic()
            rows = await asyncio.gather(*(_one(clients[i // STREAMS_PER_CLIENT], text, paced=True)
                                          for i in range(level)))
            wall = time.monotonic() - t0
        finally:
            for client in clients:
                await client.close()
        ok = [r for r in rows if "failed" not in r]
        audio = sum(r["audio_s"] for r in ok)
        out.append({
            "streams": level, "clients": len(clients), "errors": len(rows) - len(ok),
            "first_errors": [r["failed"] for r in rows if "failed" in r][:3], "wall_s": round(wall, 3),
            "aggregate_rtf": round(wall / (audio / max(1, len(ok))), 4) if audio else None,
            "audio_s_per_wall_s": round(audio / wall, 2) if wall else None,
            "ttfa_ms_p50": pct([r["ttfa_ms"] for r in ok], 50), "ttfa_ms_p95": pct([r["ttfa_ms"] for r in ok], 95),
            "played_ttfa_ms_p95": pct([r["played_ttfa_ms"] for r in ok if r.get("played_ttfa_ms") is not None], 95),
            "underruns": sum(r.get("underruns") or 0 for r in ok),
            "streams_with_underruns": sum(1 for r in ok if r.get("underruns")),
            "max_stream_rtf": max((r["rtf"] for r in ok), default=None),
        })
    return out


async def _service_suite(endpoint: str, tiny: bool, baseline: bool) -> dict[str, Any]:
    """``baseline``: the stock path serves one request at a time, so it gets the
    TTFA series and RTF only (its sweep would outlast any GPU time box)."""
    async with Client(endpoint, timeout_s=300) as client:
        for _ in range(1 if tiny else 3):  # warm-up
            await _one(client, SENTENCE)
        ttfa = await ttfa_series(client, 5 if tiny else 10 if baseline else 20, budget_s=30 if tiny else 90)
        rtf = await rtf_texts(client, tiny)
        if baseline:
            return {"ttfa": ttfa, "rtf": rtf, "ttfa_by_first_chunk": [], "concurrency": []}
        lengths = [10, 80] if tiny else [10, 20, 40, 80, 160, 250]
        by_len = await ttfa_by_first_chunk(client, lengths, budget_s=20 if tiny else 60, repeats=1 if tiny else 3)
    levels = [1, 2] if tiny else [1, 4, 16, 64, 128, 256]
    sweep = await concurrency_sweep(endpoint, levels, budget_s=20 if tiny else 100)
    return {"ttfa": ttfa, "rtf": rtf, "ttfa_by_first_chunk": by_len, "concurrency": sweep}


def run_service_bench(serve_args: list[str], tiny: bool, baseline: bool = False,
                      ready_timeout_s: float = 240) -> dict[str, Any]:
    with ServiceProcess(*serve_args, ready_timeout_s=ready_timeout_s) as svc:
        t0 = time.monotonic()
        result = asyncio.run(_service_suite(svc.endpoint, tiny, baseline))
        result["wall_s"] = round(time.monotonic() - t0, 1)
        result["processes"] = process_tree_stats(svc.proc.pid)
    result["serve_args"] = serve_args
    return result


async def _soak_client(endpoint: str, requests: int, texts: list[str]) -> list[dict[str, Any]]:
    async with Client(endpoint, timeout_s=120) as client:
        return [await _one(client, texts[i % len(texts)]) for i in range(requests)]


def run_soak(clients: int = 8, requests: int = 100, serve_args: tuple[str, ...] = ("--engine", "piper")) -> dict[str, Any]:
    texts = ["Hi.", "Hello there, friend.", "The weather is fine today, and the sea is calm.", SENTENCE]
    with ServiceProcess(*serve_args) as svc:
        before = process_tree_stats(svc.proc.pid)
        t0 = time.monotonic()

        async def go():
            return await asyncio.gather(*(_soak_client(svc.endpoint, requests, texts) for _ in range(clients)))
        rows = [r for per_client in asyncio.run(go()) for r in per_client]
        wall = time.monotonic() - t0
        after = process_tree_stats(svc.proc.pid)

        async def status():
            async with Client(svc.endpoint) as c:
                return (await c.status(10)).state
        state = asyncio.run(status())
    errors = [r["failed"] for r in rows if "failed" in r]
    return {
        "clients": clients, "requests_per_client": requests, "completed": len(rows) - len(errors),
        "errors": len(errors), "first_errors": errors[:5], "wall_s": round(wall, 1),
        "seam_violations": sum(r.get("seam_violations") or 0 for r in rows),
        "open_streams_after": state["streams"], "processes_before": before, "processes_after": after,
        "stop_step": svc.stop_step, "orphans_after_stop": svc.orphans,
        "ttfa_ms_p50": pct([r["ttfa_ms"] for r in rows if "failed" not in r], 50),
        "ttfa_ms_p95": pct([r["ttfa_ms"] for r in rows if "failed" not in r], 95),
    }
