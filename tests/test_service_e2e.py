"""The whole service with the Piper engine: real processes, real sockets, real speech."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import zmq
import zmq.asyncio

from pipeline.client import Client
from pipeline.text.chunker import split_text
from pipeline.wire import protocol as p
from pipeline.wire.codec import decode, encode
from service_support import collect, run, speak

pytestmark = pytest.mark.slow

TEXT = "Hello there, my friend. The weather is fine today, and the sea is calm."


def test_speak_returns_ordered_blocks_and_metrics(piper_service):
    out = run(speak(piper_service.endpoint, TEXT))
    assert out.error is None
    out.assert_in_order()
    m = out.metrics
    assert m["engine"] == "piper" and out.sample_rate == 22050
    assert m["chunks"] == len(split_text(TEXT, engine_chars_per_s=m["chunk_budget_chars_per_s"])) >= 2
    assert m["seam_violations"] == 0
    assert m["blocks"] == len(out.blocks)
    block = 22050 * 25 // 1000
    assert all(b.sample_count == block for b in out.blocks[:-1]) and 0 < out.blocks[-1].sample_count <= block
    assert 2.0 < m["audio_s"] < 10.0 and len(out.pcm) == round(m["audio_s"] * 22050)
    for key in ("ttfa_ms", "played_ttfa_ms", "rtf", "underruns", "dtype", "device"):
        assert key in m
    assert m["played_ttfa_ms"] >= m["ttfa_ms"] > 0


def test_streamed_deltas_give_the_same_chunks_as_whole_text(piper_service):
    async def go():
        async with Client(piper_service.endpoint, timeout_s=60) as client:
            utt = client.open_stream(profile="fast")
            for i in range(0, len(TEXT), 3):
                await utt.send(TEXT[i:i + 3])
                await asyncio.sleep(0)
            await utt.end()
            return await collect(utt)
    out = run(go())
    assert out.error is None
    out.assert_in_order()
    assert out.metrics["chunks"] == len(split_text(TEXT, engine_chars_per_s=out.metrics["chunk_budget_chars_per_s"]))
    assert out.metrics["seam_violations"] == 0


def test_cinematic_profile_uses_its_block_size(piper_service):
    out = run(speak(piper_service.endpoint, "One more, please.", profile="cinematic"))
    assert out.blocks[0].sample_count == 22050 * 60 // 1000
    assert out.metrics["profile"] == "cinematic"


def test_cancel_mid_stream_stops_audio(piper_service):
    long_text = " ".join(f"Sentence number {i} is here, and it goes on a while." for i in range(30))

    async def go():
        async with Client(piper_service.endpoint, timeout_s=60) as client:
            utt = client.speak(long_text)
            got = []
            async for block in utt:
                got.append(block)
                if len(got) == 1:
                    await utt.cancel()
            return got, utt.metrics
    blocks, metrics = run(go())
    assert len(blocks) == 1, "no audio may be yielded after cancel()"
    assert metrics["cancelled"] is True
    assert metrics["audio_s"] < 20, "synthesis must stop soon after a cancel"


def test_eight_concurrent_clients_each_get_their_own_audio(piper_service):
    texts = [f"Client {i} says: " + "la " * (2 + 5 * i) + "and that is all." for i in range(8)]

    async def go():
        return await asyncio.gather(*(speak(piper_service.endpoint, t) for t in texts))
    outs = run(go())
    for text, out in zip(texts, outs):
        assert out.error is None, out.error
        out.assert_in_order()
        assert out.metrics["chunks"] == len(split_text(text, engine_chars_per_s=out.metrics["chunk_budget_chars_per_s"]))
        assert out.metrics["seam_violations"] == 0
    durations = [o.metrics["audio_s"] for o in outs]
    assert durations == sorted(durations), "longer texts must give longer audio: streams were mixed up"


async def _raw(endpoint: str, frames: list[bytes]) -> p.Message:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        while True:  # a stream may be accepted before its text turns out unspeakable
            reply = decode(await asyncio.wait_for(sock.recv_multipart(), 30))
            if not isinstance(reply, p.Accepted):
                return reply
    finally:
        sock.close()
        ctx.term()


def _header(**fields) -> bytes:
    return msgpack.packb({"v": p.PROTOCOL_VERSION, **fields})


@pytest.mark.parametrize("frames, code", [
    ([b"speak", b"this is not msgpack \xc1"], "bad_header"),
    ([b"speak", _header(stream=5, text="hi")], "bad_type"),
    ([b"speak", _header(stream="s", text="hi", profile="turbo")], "bad_profile"),
    ([b"speak", _header(stream="s", text="hi", overrides={"nope": 1})], "bad_profile"),
    ([b"speak", _header(stream="s", text="")], "nothing_to_speak"),
    ([b"speak", _header(stream="s", text=" ... !!! ")], "nothing_to_speak"),
    ([b"speak", _header(stream="s", text="x" * 1_000_000)], "text_too_long"),
    ([b"speak", b"\x83\xa1v\x02\xa6stream\xa1s\xa4text\xa3\xff\xfe\xfd"], "bad_utf8"),
    ([b"speak", _header(stream="s", text="hi", language="xx")], "bad_language"),
    ([b"speak", _header(stream="s", text="hi", deliver="wav:/etc/owned.wav")], "bad_deliver"),
    ([b"speak", _header(stream="s", text="hi", deliver="wav:../../owned.wav")], "bad_deliver"),
    ([b"speak", _header(stream="s", text="hi", deliver="tape")], "bad_deliver"),
    ([b"speak", _header(stream="s", text="hi", voice="/etc/passwd")], "bad_voice"),
    ([b"speak", _header(stream="s", text="hi", voice="Synthetic Voice A")], "bad_voice"),
    ([b"speak", _header(stream="s", text="hi", voice="../../x.wav")], "bad_voice"),
    ([b"append", _header(stream="nope", text="hi")], "unknown_stream"),
    ([b"ready", _header(worker="w", engine="e", model="m", sample_rate=1, dtype="d", device="d", pid=1)], "bad_request"),
])
def test_bad_requests_get_clear_errors_and_others_keep_going(piper_service, frames, code):
    async def go():
        good = asyncio.create_task(speak(piper_service.endpoint, "Still speaking, fine."))
        reply = await _raw(piper_service.endpoint, frames)
        return reply, await good
    reply, good = run(go())
    assert isinstance(reply, p.Error) and reply.code == code, reply
    assert reply.message
    assert good.error is None and good.metrics["audio_s"] > 0.5


def test_wav_delivery_writes_inside_wav_dir(piper_service):
    import soundfile
    out = run(speak(piper_service.endpoint, "Written to a file.", deliver="wav:sub/said.wav"))
    assert out.error is None and out.blocks == [], "wav delivery sends no audio back"
    path = piper_service.wav_dir / "sub" / "said.wav"
    assert out.metrics["wav_path"] == str(path)
    audio, rate = soundfile.read(path, dtype="int16")
    assert rate == 22050 and len(audio) == round(out.metrics["audio_s"] * rate)


def test_status_reports_worker_and_health(piper_service):
    async def go():
        async with Client(piper_service.endpoint) as client:
            return await client.status(10)
    reply = run(go())
    assert reply.healthy
    assert reply.state["workers"][0]["engine"] == "piper"
    assert reply.state["serving"] is True


def test_encode_of_a_client_request_is_what_the_service_reads(piper_service):
    reply = run(_raw(piper_service.endpoint, encode(p.Status(request="r1"))))
    assert isinstance(reply, p.StatusReply) and reply.request == "r1"


RUN_ON = ("the old lighthouse keeper climbed the stairs one by one while the storm outside kept hammering "
          "the windows and the lamp above him flickered in the dark and the boat that left the harbour before "
          "dawn had not come back and nobody in the village had heard a word from the crew since the wind turned "
          "and so we walked along the shore until we reached the old stone bridge and waited there quietly until "
          "the tide went out again and the first gulls came back over the water")
# A one- or two-word sentence, then one long run of words: nothing to cut at but words.
SHORT_STARTS = [f"{start} {RUN_ON[0].upper()}{RUN_ON[1:]}." for start in ("Stop.", "Are you awake?", "Listen.", "No!")]


def test_a_short_first_sentence_does_not_starve_playback(piper_service):
    """Piper speaks a chunk whole: after "Stop." the next chunk must be small enough to be ready in time."""
    async def go():
        async with Client(piper_service.endpoint, timeout_s=60) as client:
            # Unpaced: audio leaves as it is made, so the playback clock counts exactly the synthesis's
            # lateness, and the test takes seconds rather than the audio's half minute each.
            return [await collect(client.speak(text, overrides={"max_lead_s": 0})) for text in SHORT_STARTS]
    for text, out in zip(SHORT_STARTS, run(go())):
        assert out.error is None, out.error
        m = out.metrics
        print(f"\n{text[:20]!r}: chunks {m['chunks']}, played after {m['played_ttfa_ms']} ms, "
              f"underruns {m['underruns']} ({m['underrun_ms']} ms)")
        assert m["underruns"] == 0, m
