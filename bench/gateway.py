"""`scripts/bench gateway`: the time to first audio the HTTP gateway adds over the ZeroMQ path.

The same sentence is spoken through both paths, one request at a time, in
interleaved pairs (which path goes first alternates), against one running
service. Each request's time to first audio byte is taken where its client
sees it; the coordinator's own TTFA for the same request (text accepted to
first block out of the reassembler) is subtracted from it, so the engine's
run-to-run variation cancels and what remains is each path's own travel:
client -> coordinator -> client, plus the gateway for HTTP. The figure
reported is, per pair, HTTP's travel minus ZeroMQ's (p50 and p95); the raw
client-side TTFAs are reported too.

The HTTP client is a minimal keep-alive HTTP/1.1 reader (chunked body), so
the figure is the gateway's cost, not an HTTP library's. The engine is a
parameter (``serve_args``): the null engine by default.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

from pipeline.client import Client
from pipeline.processes.service_process import ServiceProcess
from pipeline.processes.stats import process_tree_stats

from .service import SENTENCE
from .stats import pct


class HttpProbe:
    """One keep-alive connection; `speak` returns (ms to the first body byte, the whole body)."""

    def __init__(self, base_url: str):
        self.parts = urlsplit(base_url)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> "HttpProbe":
        self.reader, self.writer = await asyncio.open_connection(self.parts.hostname, self.parts.port)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()

    async def speak(self, text: str) -> tuple[float, bytes]:
        body = json.dumps({"input": text, "response_format": "pcm"}).encode()
        head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: {self.parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        t0 = time.perf_counter()
        self.writer.write(head + body)
        status = await self.reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in status.split(b"\r\n")[0]:
            raise RuntimeError(f"gateway answered {status[:200]!r}")
        first_ms, pcm = None, bytearray()
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if first_ms is None:
                first_ms = (time.perf_counter() - t0) * 1000
            if size == 0:
                return first_ms, bytes(pcm)
            pcm += data[:-2]


async def _zmq_once(client: Client, text: str) -> tuple[float, float]:
    """(client TTFA ms, the coordinator's ttfa_ms)."""
    t0 = time.perf_counter()
    first = None
    utt = client.speak(text)
    async for _ in utt:
        first = first or (time.perf_counter() - t0) * 1000
    return first, utt.metrics["ttfa_ms"]


async def _service_ttfa_total(client: Client) -> tuple[float, int]:
    """The coordinator's running TTFA sum and count (its service-wide metrics), for the request in between."""
    series = (await client.status(10)).state["metrics"]["histograms"]["ttfa_ms"]["series"]
    return sum(s["sum"] for s in series), sum(s["count"] for s in series)


async def _http_once(client: Client, probe: HttpProbe, text: str) -> tuple[float, float]:
    sum0, n0 = await _service_ttfa_total(client)
    first, pcm = await probe.speak(text)
    sum1, n1 = await _service_ttfa_total(client)
    if n1 != n0 + 1 or not pcm:
        raise RuntimeError("another stream finished during the measurement, or no audio came")
    return first, sum1 - sum0


async def measure(endpoint: str, http_url: str, pairs: int, text: str = SENTENCE, warmup: int = 3) -> dict[str, Any]:
    async with Client(endpoint, timeout_s=120) as client:
        probe = await HttpProbe(http_url).open()
        try:
            for _ in range(warmup):
                await _zmq_once(client, text)
                await _http_once(client, probe, text)
            rows = []
            for i in range(pairs):
                if i % 2 == 0:
                    z, h = await _zmq_once(client, text), await _http_once(client, probe, text)
                else:
                    h, z = await _http_once(client, probe, text), await _zmq_once(client, text)
                rows.append({"zmq_ms": z[0], "zmq_service_ms": z[1], "http_ms": h[0], "http_service_ms": h[1]})
        finally:
            await probe.close()
    added = [(r["http_ms"] - r["http_service_ms"]) - (r["zmq_ms"] - r["zmq_service_ms"]) for r in rows]
    raw = [r["http_ms"] - r["zmq_ms"] for r in rows]
    return {
        "pairs": pairs, "text_chars": len(text),
        "added_ttfa_ms_p50": pct(added, 50), "added_ttfa_ms_p95": pct(added, 95),
        "raw_difference_ms_p50": pct(raw, 50), "raw_difference_ms_p95": pct(raw, 95),
        "zmq_ttfa_ms_p50": pct([r["zmq_ms"] for r in rows], 50), "http_ttfa_ms_p50": pct([r["http_ms"] for r in rows], 50),
        "zmq_travel_ms_p50": pct([r["zmq_ms"] - r["zmq_service_ms"] for r in rows], 50),
        "http_travel_ms_p50": pct([r["http_ms"] - r["http_service_ms"] for r in rows], 50),
        "rows": [{k: round(v, 3) for k, v in r.items()} for r in rows],
    }


def run_gateway_bench(serve_args: tuple[str, ...] = ("--engine", "null"), pairs: int = 60) -> dict[str, Any]:
    with ServiceProcess(*serve_args) as svc:
        result = asyncio.run(measure(svc.endpoint, svc.http_url, pairs))
        result["processes"] = process_tree_stats(svc.proc.pid)
    result["serve_args"] = list(serve_args)
    return result


if __name__ == "__main__":
    out = run_gateway_bench()
    out.pop("rows")
    print(json.dumps(out, indent=2))
