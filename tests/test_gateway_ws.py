"""WS /v1/audio/stream against a running Piper service, driven by the `websockets` client."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from gateway_support import deltas, receive_stream, ws_url
from pipeline.text.chunker import split_text
from service_support import run

pytestmark = pytest.mark.slow

TEXT = ("The otherworldly light spilled over us, cold and silver, and for a moment nobody spoke. "
        "Then the old woman raised her lantern and whispered: do you see it?")
LONG = " ".join([TEXT] * 6)


def test_llm_deltas_become_contiguous_audio(piper_service):
    async def go():
        async with connect(ws_url(piper_service)) as ws:
            await ws.send(json.dumps({"type": "open", "profile": "fast", "voice": "alloy"}))
            pieces = deltas(TEXT)
            for piece in pieces:
                await ws.send(json.dumps({"type": "append", "text": piece}))
            await ws.send(json.dumps({"type": "end"}))
            return pieces, *await receive_stream(ws)
    pieces, events, audio = run(go())
    assert 1 <= min(map(len, pieces)) and max(map(len, pieces)) <= 12 and len(pieces) > 20
    accepted, done = events[0], events[-1]
    assert accepted["type"] == "accepted" and accepted["sample_rate"] == 22050 and accepted["format"] == "s16le"
    assert done["type"] == "done", done
    m = done["metrics"]
    # Every sample the service made arrived, once, in order: none lost or repeated on the way.
    assert len(audio) // 2 == done["samples"] == round(m["audio_s"] * 22050)
    assert m["chunks"] == len(split_text(TEXT, engine_chars_per_s=m["chunk_budget_chars_per_s"]))
    assert m["seam_violations"] == 0
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))  # as many as the client library reports
    assert all(0 <= c["sample_offset"] < len(audio) // 2 for c in chunks)


def test_cancel_stops_audio_and_the_connection_goes_on(piper_service):
    async def go():
        async with connect(ws_url(piper_service)) as ws:
            await ws.send(json.dumps({"type": "open"}))
            await ws.send(json.dumps({"type": "append", "text": LONG}))
            await ws.send(json.dumps({"type": "end"}))
            first = None
            while not isinstance(first, bytes):
                first = await asyncio.wait_for(ws.recv(), 60)
            await ws.send(json.dumps({"type": "cancel"}))
            events, after_cancel = await receive_stream(ws, started=True)
            await ws.send(json.dumps({"type": "open"}))  # the same connection speaks again
            await ws.send(json.dumps({"type": "append", "text": "Still here."}))
            await ws.send(json.dumps({"type": "end"}))
            again = await receive_stream(ws)
            return events, after_cancel, again
    events, after_cancel, (again_events, again_audio) = run(go())
    done = events[-1]
    assert done["type"] == "done" and done["metrics"]["cancelled"] is True
    # LONG is about 50 s of speech; what still arrives after the cancel is what was already on its way.
    assert len(after_cancel) / 2 / 22050 < 10.0
    assert done["metrics"]["audio_s"] < 20.0
    assert again_events[-1]["type"] == "done" and len(again_audio) > 0


def test_bad_messages_get_error_events_naming_the_field(piper_service):
    async def go():
        out = []
        async with connect(ws_url(piper_service)) as ws:
            async def ask(message):
                await ws.send(message)
                out.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            await ask(b"\x00\x01")
            await ask("{not json")
            await ask(json.dumps({"type": "shout"}))
            await ask(json.dumps({"type": "append", "text": "early"}))
            await ask(json.dumps({"type": "open", "profile": "opera"}))
            await ask(json.dumps({"type": "open", "speed": 0}))
            await ask(json.dumps({"type": "open", "colour": "blue"}))
            await ws.send(json.dumps({"type": "open", "voice": "nobody"}))  # the service refuses it (Piper)
            out.append((await receive_stream(ws))[0][-1])
            await ws.send(json.dumps({"type": "open"}))
            await ws.send(json.dumps({"type": "append", "text": "Fine after all."}))
            await ws.send(json.dumps({"type": "end"}))
            await ws.send(json.dumps({"type": "append", "text": " Too late."}))  # refused; the stream goes on
            out.append([e for e in (await receive_stream(ws))[0] if e["type"] in ("error", "done")])
        return out
    replies = run(go())
    assert [r["ends_stream"] for r in replies[:-1]] == [False] * 7 + [True]  # only the service's refusal ends a stream
    got = [(r["type"], r.get("code"), r.get("param")) for r in replies[:-1]]
    assert got == [("error", "bad_message", None), ("error", "bad_message", None), ("error", "bad_message", "type"),
                   ("error", "no_stream", None), ("error", "bad_profile", "profile"),
                   ("error", "invalid_field", "speed"), ("error", "unknown_field", "colour"),
                   ("error", "bad_voice", "voice")]
    assert [(r["type"], r.get("code")) for r in replies[-1]] == [("error", "stream_ended"), ("done", None)]
