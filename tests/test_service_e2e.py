"""The whole service with the Piper engine: real processes, real sockets, real speech."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
import zmq
import zmq.asyncio

from pipeline.client import Client
from pipeline.text.chunker import split_text
from pipeline.wire import protocol as p
from pipeline.wire.codec import decode, encode
from service_support import Spoken, collect, run, speak

pytestmark = pytest.mark.slow

TEXT = "Hello there, my friend. The weather is fine today, and the sea is calm."
MS = 0.01  # the service rounds its times to a microsecond; sums of several may differ by this much


async def timed(spoken) -> tuple[Spoken, float]:
    """What a request gave, and the milliseconds the client waited for all of it (request to done)."""
    t0 = time.monotonic()
    out = await spoken
    return out, (time.monotonic() - t0) * 1000


def check_metrics(out: Spoken, text: str, total_ms: float) -> None:
    """The done metrics of a completed stream agree with what the client received and measured."""
    m = out.metrics
    rate = out.sample_rate
    samples = sum(b.sample_count for b in out.blocks)
    # Audio: what was received, and no more.
    assert m["audio_s"] == pytest.approx(samples / rate, abs=1e-6) and samples > 0
    assert m["blocks"] == len(out.blocks) and m["chunks"] <= m["messages"] <= m["blocks"]
    assert m["seam_violations"] == 0 and m["violations"] == {} and m["order_violations"] == m["seq_gaps"] == 0
    assert m["messages_dropped_slow_client"] == 0 and m["audio_dropped_slow_client_s"] == 0
    assert m["cancelled"] is False and m["epoch"] == 0 and m["deliver"] == "client"
    # Chunks: one event each, in order, at increasing offsets inside the audio, speaking the text in order.
    assert m["chunks"] == len(out.chunks) >= 1
    assert [c.index for c in out.chunks] == list(range(len(out.chunks)))
    offsets = [c.sample_offset for c in out.chunks]
    assert offsets[0] == 0 and offsets == sorted(set(offsets)) and offsets[-1] < samples
    assert all(c.text == text[c.text_start:c.text_end] for c in out.chunks)
    gaps = [text[:out.chunks[0].text_start]] + [text[a.text_end:b.text_start] for a, b in zip(out.chunks, out.chunks[1:])]
    assert all(not gap.strip() for gap in gaps + [text[out.chunks[-1].text_end:]]), "every word in one chunk"
    # Times: the service's intervals lie inside the client's.
    assert 0 < m["ttfa_ms"] <= out.client_ttfa_ms <= total_ms
    assert m["ttfa_ms"] <= m["first_send_ms"] <= out.client_ttfa_ms
    assert m["ttfa_ms"] <= m["played_ttfa_ms"] <= total_ms
    rtf_rounding_ms = 0.00005 * m["audio_s"] * 1000  # rtf is reported to 4 decimals
    assert 0 < m["rtf"] and m["rtf"] * m["audio_s"] * 1000 <= total_ms + rtf_rounding_ms
    stages = m["stages_ms"]
    assert all(v is not None and v >= 0 for v in stages.values()), stages
    assert sum(stages[k] for k in ("chunker", "queue_wait", "engine_first_piece", "transport", "reassembler")) \
        == pytest.approx(m["ttfa_ms"], abs=5 * MS), "the stages add up to the time to first audio"
    assert stages["delivery"] == pytest.approx(m["first_send_ms"] - m["ttfa_ms"], abs=2 * MS)
    # Playback as a listener would have heard it.
    assert isinstance(m["underruns"], int) and m["underruns"] >= 0 and m["underrun_ms"] >= 0
    assert (m["underruns"] == 0) == (m["underrun_ms"] == 0)
    assert m["playback_end_ms"] == pytest.approx(m["played_ttfa_ms"] + m["audio_s"] * 1000 + m["underrun_ms"],
                                                 abs=3 * MS)
    assert m["prebuffer_ms"] >= 0 and m["max_lead_ms"] == out.accepted.max_lead_ms
    assert m["profile"] == out.accepted.profile
    for key in ("engine", "model", "dtype", "device", "worker"):
        assert isinstance(m[key], str) and m[key], key


def test_speak_returns_ordered_blocks_and_metrics(piper_service):
    out, total_ms = run(timed(speak(piper_service.endpoint, TEXT)))
    assert out.error is None
    out.assert_in_order()
    m = out.metrics
    assert m["engine"] == "piper" and out.sample_rate == 22050 and out.accepted.sample_rate == 22050
    assert m["chunks"] == len(split_text(TEXT, engine_chars_per_s=m["chunk_budget_chars_per_s"])) >= 2
    assert m["seam_violations"] == 0
    assert m["blocks"] == len(out.blocks)
    block = 22050 * 25 // 1000
    assert out.accepted.block_samples == block
    assert all(b.sample_count == block for b in out.blocks[:-1]) and 0 < out.blocks[-1].sample_count <= block
    assert 2.0 < m["audio_s"] < 10.0 and len(out.pcm) == round(m["audio_s"] * 22050)
    assert m["played_ttfa_ms"] >= m["ttfa_ms"] > 0
    assert m["profile"] == "fast" and m["prebuffer_ms"] == 200 and m["max_lead_ms"] == 500  # config/defaults.toml
    check_metrics(out, TEXT, total_ms)


def test_streamed_deltas_give_the_same_chunks_as_whole_text(piper_service):
    async def go():
        async with Client(piper_service.endpoint, timeout_s=60) as client:
            utt = client.open_stream(profile="fast")
            for i in range(0, len(TEXT), 3):
                await utt.send(TEXT[i:i + 3])
                await asyncio.sleep(0)
            await utt.end()
            return await collect(utt)
    out, total_ms = run(timed(go()))
    assert out.error is None
    out.assert_in_order()
    assert out.metrics["chunks"] == len(split_text(TEXT, engine_chars_per_s=out.metrics["chunk_budget_chars_per_s"]))
    assert out.metrics["seam_violations"] == 0
    check_metrics(out, TEXT, total_ms)


def test_cinematic_profile_uses_its_block_size(piper_service):
    out, total_ms = run(timed(speak(piper_service.endpoint, "One more, please.", profile="cinematic")))
    assert out.error is None
    assert out.blocks[0].sample_count == 22050 * 60 // 1000 == out.accepted.block_samples
    assert out.metrics["profile"] == "cinematic"
    check_metrics(out, "One more, please.", total_ms)


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
    # Client i speaks i + 1 sentences: each adds over a second of audio, more than the pauses that
    # chunk cuts (which follow the measured engine speed) can add or take away.
    texts = [f"Client {i} says: " + " ".join(f"Line {k} of mine is right here." for k in range(i + 1))
             for i in range(8)]

    async def go():
        return await asyncio.gather(*(timed(speak(piper_service.endpoint, t)) for t in texts))
    timed_outs = run(go())
    outs = [out for out, _ in timed_outs]
    for text, (out, total_ms) in zip(texts, timed_outs):
        assert out.error is None, out.error
        out.assert_in_order()
        assert out.metrics["chunks"] == len(split_text(text, engine_chars_per_s=out.metrics["chunk_budget_chars_per_s"]))
        assert out.metrics["seam_violations"] == 0
        check_metrics(out, text, total_ms)  # each stream's chunk events speak its own text
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
            async def one(text: str) -> Spoken:  # the request is made inside the timing
                return await collect(client.speak(text, overrides={"max_lead_s": 0}))
            return [await timed(one(text)) for text in SHORT_STARTS]
    for text, (out, total_ms) in zip(SHORT_STARTS, run(go())):
        assert out.error is None, out.error
        check_metrics(out, text, total_ms)
        m = out.metrics
        print(f"\n{text[:20]!r}: chunks {m['chunks']}, played after {m['played_ttfa_ms']} ms, "
              f"underruns {m['underruns']} ({m['underrun_ms']} ms)")
        assert m["underruns"] == 0, m
