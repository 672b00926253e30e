"""The gateway as a process of the service: API keys beyond loopback, restarts, and a gateway that cannot run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway_support import request, wait_state
from pipeline.processes.service_process import ServiceProcess
from pipeline.settings import load_settings
from pipeline.wire.runpaths import RunPaths
from service_support import run, speak

pytestmark = pytest.mark.slow

KEY = "k3y-for-the-gateway-tests-0123456789"


def test_non_loopback_without_keys_is_refused_at_start(tmp_path):
    serve = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--engine", "piper", "--endpoint",
                            f"ipc://{tmp_path}/c.sock", "--http", "0.0.0.0:0"], capture_output=True, text=True,
                           timeout=60)
    assert serve.returncode == 2 and "API keys beyond loopback" in serve.stderr
    run_dir = RunPaths(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.write_settings(load_settings(env={}))
    gateway = subprocess.run([sys.executable, "-m", "pipeline.gateway", "--run-dir", str(run_dir.root),
                              "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert gateway.returncode == 2 and "API keys beyond loopback" in gateway.stderr


def test_beyond_loopback_every_request_needs_a_key(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# test keys\n{KEY}\nanother-key-0123456789abcdef\n")
    with ServiceProcess("--engine", "piper", "--http", "0.0.0.0:0", "--http-keys", str(keys)) as svc:
        assert svc.http_url.startswith("http://0.0.0.0:")
        url = svc.http_url.replace("0.0.0.0", "127.0.0.1")  # bound on every address; tested on loopback only
        good, bad = {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer wrong-key-0123456789abc"}
        assert request(url + "/health")[0] == 200 and request(url + "/")[0] == 200  # liveness and the page
        for headers in ({}, bad, {"Authorization": KEY}):
            status, resp_headers, body = request(url + "/v1/models", headers=headers)
            assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
            assert resp_headers["www-authenticate"] == "Bearer"
        assert request(url + "/v1/models", headers=good)[0] == 200
        assert request(url + "/metrics", headers=bad)[0] == 401 and request(url + "/metrics", headers=good)[0] == 200

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong-key-0123456789abc", max_retries=0).audio.speech.create(
                model="tts-1", voice="alloy", input="Hello.", response_format="pcm")
        sdk = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        with sdk.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="Hello there.",
                                                             response_format="pcm") as response:
            assert len(response.read()) > 22050

        run(_websockets(url.replace("http://", "ws://") + "/v1/audio/stream"))


async def _websockets(ws_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abc"}):
        with pytest.raises(InvalidStatus) as err:
            async with connect(ws_url, additional_headers=headers):
                pass
        assert err.value.response.status_code == 401
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert await _speaks(ws)
    async with connect(ws_url, subprotocols=[f"bearer.{KEY}"]) as ws:  # how a browser sends it
        assert ws.subprotocol == f"bearer.{KEY}"
        assert await _speaks(ws)


async def _speaks(ws) -> bool:
    for message in ({"type": "open"}, {"type": "append", "text": "Hi there."}, {"type": "end"}):
        await ws.send(json.dumps(message))
    while True:
        message = await asyncio.wait_for(ws.recv(), 60)
        if isinstance(message, str) and json.loads(message)["type"] == "done":
            return True


def test_a_killed_gateway_is_restarted_and_stops_politely(tmp_path):
    log = tmp_path / "service.log"
    svc = ServiceProcess("--engine", "piper", log_path=log).start()
    try:
        state = run(wait_state(svc.endpoint, lambda s: True))
        pid = state["supervisor"]["processes"]["gateway"]["pid"]
        os.kill(pid, signal.SIGKILL)
        state = run(wait_state(svc.endpoint, lambda s: s["supervisor"]["processes"]["gateway"]["restarts"] == 1
                               and s["supervisor"]["http"] and s["supervisor"]["processes"]["gateway"]["pid"] != pid))
        assert state["healthy"] is True
        status, _, body = request(state["supervisor"]["http"] + "/v1/audio/speech", {"input": "Back again.",
                                                                                      "response_format": "pcm"})
        assert status == 200 and len(body) > 0
    finally:
        svc.stop()
    assert not svc.orphans
    assert "gateway stopped (request)" in log.read_text(), "the supervisor's polite stop reached the gateway"


def test_a_gateway_that_cannot_run_makes_the_service_unhealthy_but_not_silent(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    config = tmp_path / "service.toml"
    config.write_text("[service]\nrestart_limit = 1\n")
    svc = ServiceProcess("--engine", "piper", "--config", str(config), "--http",
                         f"127.0.0.1:{taken.getsockname()[1]}", log_path=tmp_path / "service.log")
    try:
        with pytest.raises(RuntimeError, match="unhealthy"):
            svc.start()
        state = run(wait_state(svc.endpoint, lambda s: s["supervisor"]["processes"]["gateway"]["given_up"]
                               and s["serving"]))
        assert state["healthy"] is False and state["serving"] is True and svc.proc.poll() is None
        out = run(speak(svc.endpoint, "The ZeroMQ side still speaks."))
        assert out.error is None and out.metrics["audio_s"] > 0
    finally:
        svc.stop()
        taken.close()
    assert "cannot listen on 127.0.0.1" in (tmp_path / "service.log").read_text()


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while part := sock.recv(65536):
        data += part
    return data


def test_a_failure_after_the_first_audio_is_never_a_silent_truncation(tmp_path):
    from gateway_support import raw_post, read_head
    long_text = "The tide began to run, and the gulls were loud over the harbour. " * 30
    with ServiceProcess("--engine", "piper") as svc:
        socks = {}
        for fmt in ("audio", "sse"):
            body = json.dumps({"input": long_text, "response_format": "pcm", "stream_format": fmt}).encode()
            socks[fmt] = raw_post(svc.http_url, "/v1/audio/speech",
                                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n", body)
        heads = {fmt: read_head(sock) for fmt, sock in socks.items()}
        assert all(status == 200 for status, _ in heads.values()), heads
        state = run(wait_state(svc.endpoint, lambda s: True))
        os.kill(state["supervisor"]["processes"]["coordinator"]["pid"], signal.SIGKILL)
        audio = heads["audio"][1] + _read_to_end(socks["audio"])
        sse = heads["sse"][1] + _read_to_end(socks["sse"])
        for sock in socks.values():
            sock.close()
        # The audio body stops without its last chunk: an HTTP client reports a truncated body.
        assert not audio.endswith(b"0\r\n\r\n")
        # The SSE body says why, and ends properly.
        assert b'"type":"error"' in sse and b'"code":"connection_lost"' in sse and sse.endswith(b"0\r\n\r\n")
        run(wait_state(svc.endpoint, lambda s: s["serving"] and s["supervisor"]["processes"]["coordinator"]["restarts"]))
        status, _, body = request(svc.http_url + "/v1/audio/speech", {"input": "Back again.", "response_format": "pcm"})
        assert status == 200 and len(body) > 0, "the gateway reaches the restarted coordinator by itself"
