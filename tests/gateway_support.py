"""Helpers for the gateway's end-to-end tests: plain HTTP calls, /metrics read back, the ZeroMQ path's audio."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from pipeline.client import Client
from service_support import collect


def request(url: str, body=None, headers: dict | None = None, method: str | None = None,
            timeout: float = 60.0) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def error_of(body: bytes) -> dict:
    return json.loads(body)["error"]


def metrics(base_url: str, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, read by prometheus_client's parser: (name, sorted labels) -> value."""
    status, _, body = request(base_url + "/metrics", headers=headers)
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def raw_post(base_url: str, path: str, head: str, body: bytes = b"") -> socket.socket:
    """A hand-written request on a fresh connection, for what urllib will not send."""
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode() + body)
    return sock


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """The status code, and whatever of the body came with the headers."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest


async def zmq_pcm(endpoint: str, text: str, **kwargs) -> tuple[bytes, dict]:
    async with Client(endpoint, timeout_s=120) as client:
        out = await collect(client.speak(text, **kwargs))
    assert out.error is None, out.error
    return b"".join(bytes(b.pcm) for b in out.blocks), out.metrics


async def status_state(endpoint: str) -> dict:
    async with Client(endpoint, timeout_s=10) as client:
        reply = await client.status(10)
    return {"healthy": reply.healthy, **reply.state}


async def wait_state(endpoint: str, predicate, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await status_state(endpoint)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last status: {state}")
        await asyncio.sleep(0.05)


def ws_url(svc) -> str:
    return svc.http_url.replace("http://", "ws://") + "/v1/audio/stream"


def deltas(text: str, seed: int = 7) -> list[str]:
    """Pieces of 1 to 12 characters, as an LLM's tokens come."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        out.append(text[i:i + n])
        i += n
    return out


async def receive_stream(ws, started: bool = False) -> tuple[list, bytes]:
    """Events and audio until done or error (``started``: accepted was already read)."""
    events, audio = [], bytearray()
    while True:
        message = await asyncio.wait_for(ws.recv(), 60)
        if isinstance(message, bytes):
            assert started or any(e["type"] == "accepted" for e in events), "audio comes after accepted"
            audio += message
            continue
        event = json.loads(message)
        events.append(event)
        if event["type"] == "done" or (event["type"] == "error" and event["ends_stream"]):
            return events, bytes(audio)
