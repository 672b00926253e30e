"""The gateway in front of the tiny synthetic XTTS: under the length policy every path gives exactly the same audio length."""

from __future__ import annotations

import json

import openai
import pytest
from websockets.asyncio.client import connect

from gateway_support import deltas, receive_stream, zmq_pcm
from pipeline.processes.service_process import ServiceProcess
from pipeline.text.chunker import split_text
from service_support import run
from test_service_xtts import PER_CHAR, TEXT, forced_samples

pytestmark = pytest.mark.slow


async def ws_pcm(url: str, text: str) -> tuple[bytes, dict]:
    async with connect(url.replace("http://", "ws://") + "/v1/audio/stream") as ws:
        await ws.send(json.dumps({"type": "open", "voice": "alloy"}))
        for piece in deltas(text):
            await ws.send(json.dumps({"type": "append", "text": piece}))
        await ws.send(json.dumps({"type": "end"}))
        events, audio = await receive_stream(ws)
    return audio, events


def test_openai_sdk_and_websocket_match_the_zmq_path_on_tiny_xtts(tiny_checkpoint, tmp_path):
    cfg = tmp_path / "service.toml"
    cfg.write_text(f'[service]\ncache_dir = "{tmp_path / "cache"}"\n')
    args = ("--engine", "xtts", "--checkpoint", str(tiny_checkpoint), "--forced-tokens-per-char", str(PER_CHAR),
            "--config", str(cfg))
    expected = sum(forced_samples(c.text) for c in split_text(TEXT))
    with ServiceProcess(*args, ready_timeout_s=300) as svc:
        zmq, _ = run(zmq_pcm(svc.endpoint, TEXT))
        sdk = openai.OpenAI(base_url=svc.http_url + "/v1", api_key="not-needed-on-loopback", max_retries=0)
        for fmt, head in (("pcm", 0), ("wav", 44)):
            path = tmp_path / f"speech.{fmt}"
            with sdk.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                                 response_format=fmt) as response:
                assert response.headers["x-sample-rate"] == "24000"
                response.stream_to_file(path)
            assert (path.stat().st_size - head) // 2 == len(zmq) // 2 == expected, fmt
        audio, events = run(ws_pcm(svc.http_url, TEXT))
    assert events[-1]["type"] == "done" and events[-1]["metrics"]["engine"] == "xtts-fast"
    assert len(audio) // 2 == expected and events[-1]["metrics"]["seam_violations"] == 0
