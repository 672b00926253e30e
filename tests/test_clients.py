"""Clients that vanish, read slowly, or cancel at any moment: the service frees, bounds and stops cleanly.

One Piper service for the module, configured with a short idle timeout and a
small per-client queue so that each policy shows within seconds.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from hardening_support import RawDealer, piper_service, status, wait_for
from pipeline.client import Client
from pipeline.processes.stats import process_tree_stats
from pipeline.wire import protocol as p
from service_support import collect, run

pytestmark = pytest.mark.slow

IDLE_TIMEOUT_S = 2.0
CLIENT_QUEUE = 1000  # well above a Piper chunk's burst of 25 ms blocks (see the small queue tests below)
CONFIG = f"""[service]
stream_idle_timeout_s = {IDLE_TIMEOUT_S}
max_queued_messages_per_client = {CLIENT_QUEUE}
max_client_backlog_s = 2.0
heartbeat_interval_s = 0.2
"""
LONG = " ".join(f"Sentence number {i} is here, and it goes on for a while." for i in range(40))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = piper_service(tmp_path_factory.mktemp("clients"), CONFIG).start()
    yield svc
    svc.stop()
    assert not svc.orphans, "the service left processes behind"


async def first_block(dealer: RawDealer) -> list[p.Message]:
    seen = []
    while not seen or not isinstance(seen[-1], p.Audio):
        seen.append(await dealer.recv(30))
    return seen


def test_a_client_that_vanishes_mid_stream_frees_its_stream(service):
    async def go():
        dealer = RawDealer(service.endpoint)
        await dealer.send(p.Speak(stream="gone", text=LONG))
        await first_block(dealer)
        dealer.close()  # gone without a word while audio is flowing
        _, freed_s = await wait_for(service.endpoint, lambda s: s["streams"] == 0, 10)
        idle, _ = await wait_for(service.endpoint, lambda s: all(w["inflight"] == 0 for w in s["workers"]), 10)
        return freed_s, idle
    freed_s, state = run(go())
    print(f"\nvanished client: stream freed {freed_s:.2f} s after the socket closed")
    assert freed_s < 5.0, "a minute of audio must not be synthesized for nobody"
    assert "disconnected" in service.log_tail(100_000), "freed when its connection closed (socket monitor)"
    assert state["healthy"] and state["worker_deaths"] == 0


def test_clients_that_speak_and_vanish_do_not_keep_the_next_one_waiting(service):
    """200 connections that each asked for speech and vanished once kept the worker busy ~40 s."""
    async def go():
        for i in range(200):
            dealer = RawDealer(service.endpoint)
            await dealer.send(p.Speak(stream=f"v{i}", text=LONG[:300]))
            await asyncio.sleep(0.002)
            dealer.close()
        t0 = asyncio.get_running_loop().time()
        async with Client(service.endpoint, timeout_s=60) as client:
            out = await collect(client.speak("Am I next?"))
        waited = asyncio.get_running_loop().time() - t0
        state, _ = await wait_for(service.endpoint, lambda s: s["streams"] == 0, 20)
        return out, waited, state
    out, waited, state = run(go())
    print(f"\n200 vanished clients: the next client's whole utterance took {waited:.2f} s")
    assert out.error is None and out.metrics["audio_s"] > 0.5
    assert waited < 10.0, "work for vanished clients must be dropped as soon as they are known gone"
    counters = state["counters"]  # a request still unsent when its socket closed (linger 0) never came
    assert counters["streams_opened"] > 100, "most requests must have arrived for the test to mean anything"
    assert counters.get("clients_gone", 0) == counters["streams_opened"] - 1, \
        "every vanished client whose request arrived (even one that hung up before it was read) is known gone"


def test_an_open_stream_whose_text_stops_coming_is_freed_by_the_idle_timeout(service):
    async def go():
        dealer = RawDealer(service.endpoint)
        try:
            await dealer.send(p.Open(stream="forgotten"))
            accepted = await dealer.recv(10)
            await dealer.send(p.Append(stream="forgotten", text="And then"))  # no end: the LLM stalled
            still_open = (await status(service.endpoint))["streams"]
            error = await dealer.recv(IDLE_TIMEOUT_S + 5)
            _, freed_s = await wait_for(service.endpoint, lambda s: s["streams"] == 0, 5)
        finally:
            dealer.close()
        return accepted, still_open, error
    accepted, still_open, error = run(go())
    assert isinstance(accepted, p.Accepted)
    assert still_open == 1, "the connection is alive: only the idle timeout can end the stream"
    assert isinstance(error, p.Error) and error.code == "idle_timeout" and error.stream == "forgotten"


def test_an_open_stream_of_a_client_that_closed_its_connection_is_freed_at_once(service):
    async def go():
        dealer = RawDealer(service.endpoint)
        await dealer.send(p.Open(stream="closed"))
        await dealer.recv(10)
        dealer.close()
        return await wait_for(service.endpoint, lambda s: s["streams"] == 0, IDLE_TIMEOUT_S)
    _, freed_s = run(go())
    assert freed_s < IDLE_TIMEOUT_S


def coordinator_rss_mb(svc) -> float:
    return next(s["rss_mb"] for s in process_tree_stats(svc.proc.pid) if s["process"] == "pipeline.coordinator")


def dropped(state: dict) -> int:
    return state["counters"].get("messages_dropped_slow_client", 0)


def test_a_slow_client_has_audio_dropped_not_queued_and_still_gets_done(tiny_queue_service):
    service = tiny_queue_service
    async def go():
        before = await status(service.endpoint)
        rss = [coordinator_rss_mb(service)]
        dealer = RawDealer(service.endpoint, rcvhwm=1)
        try:
            # Unpaced: the audio comes as fast as Piper makes it, far faster than real time.
            await dealer.send(p.Speak(stream="slow", text=LONG[:900], overrides={"max_lead_s": 0}))
            clock = asyncio.get_running_loop().time
            deadline = clock() + 60
            while dropped(await status(service.endpoint)) == dropped(before):
                assert clock() < deadline, "no audio was dropped for a client not reading"
                rss.append(coordinator_rss_mb(service))
                await asyncio.sleep(0.2)
            # Keep not reading while the rest of the audio is made: until the stream has ended in the
            # coordinator (every sample made, and queued for this client or dropped).
            deadline = clock() + 60
            while (await status(service.endpoint))["streams"] > 0:
                assert clock() < deadline, "the stream of a client not reading never ended in the coordinator"
                rss.append(coordinator_rss_mb(service))
                await asyncio.sleep(0.2)
            rss.append(coordinator_rss_mb(service))
            replies = await dealer.recv_until_done("slow", 120)
        finally:
            dealer.close()
        rss.append(coordinator_rss_mb(service))
        return before, await status(service.endpoint), replies, rss
    before, after, replies, rss = run(go())
    audio = [m for m in replies if isinstance(m, p.Audio)]
    done = replies[-1]
    m = done.metrics
    print(f"\nslow client: {len(audio)} audio messages received, {m.get('messages_dropped_slow_client')} dropped "
          f"({m.get('audio_dropped_slow_client_s')} s); coordinator RSS {rss[0]} -> max {max(rss)} -> {rss[-1]} MB")
    assert isinstance(done, p.Done), done
    assert m["messages_dropped_slow_client"] > 0
    assert dropped(after) - dropped(before) >= m["messages_dropped_slow_client"]
    received_s = sum(a.sample_count for a in audio) / audio[0].sample_rate
    assert received_s + m["audio_dropped_slow_client_s"] == pytest.approx(m["audio_s"], abs=1e-3), \
        "all audio was either delivered or counted as dropped"
    seqs = [a.seq for a in audio]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert max(rss) - rss[0] < 16, f"coordinator memory grew from {rss[0]} to {max(rss)} MB"
    assert after["streams"] == 0


async def cancel_trial(dealer: RawDealer, stream: str, moment: str, after_blocks: int) -> list[p.Message]:
    """One stream cancelled at ``moment``: every message for it, in arrival order."""
    # A cancelled stream speaks LONG (minutes of audio), so the cancel always lands before it could finish.
    text = "Hi there, friend." if moment == "after_done" else LONG
    await dealer.send(p.Speak(stream=stream, text=text))
    got: list[p.Message] = []
    if moment == "before_first_block":
        await dealer.send(p.Cancel(stream=stream))
    while True:
        msg = await dealer.recv(60)
        got.append(msg)
        blocks = sum(isinstance(m, p.Audio) for m in got)
        if moment == "mid_stream" and isinstance(msg, p.Audio) and blocks == after_blocks:
            await dealer.send(p.Cancel(stream=stream))
            got.append(p.Cancel(stream=stream))  # marks the moment in the record
        if isinstance(msg, (p.Done, p.Error)) and getattr(msg, "stream", "") == stream:
            break
    if moment == "after_done":
        await dealer.send(p.Cancel(stream=stream))
        got.append(p.Cancel(stream=stream))
    # Anything still on its way for this stream arrives before a later status reply.
    await dealer.send(p.Status(request=f"fence-{stream}"))
    while not isinstance(msg := await dealer.recv(30), p.StatusReply):
        got.append(msg)
    return got


def test_a_cancel_at_any_moment_ends_the_stream_once_and_cleanly(service):
    rng = random.Random(7)
    trials = [("before_first_block", 0), ("after_done", 0)] * 2 + [("mid_stream", rng.randint(1, 40)) for _ in range(6)]
    rng.shuffle(trials)

    async def go():
        dealer = RawDealer(service.endpoint)
        try:
            return [await cancel_trial(dealer, f"c{i}", moment, k) for i, (moment, k) in enumerate(trials)]
        finally:
            dealer.close()
    records = run(go())
    for (moment, _), got in zip(trials, records):
        ends = [m for m in got if isinstance(m, p.Done)]
        errors = [m for m in got if isinstance(m, p.Error)]
        assert len(ends) == 1, (moment, got)
        after_done = got[got.index(ends[0]) + 1:]
        assert not [m for m in after_done if isinstance(m, p.Audio)], f"audio after done ({moment})"
        assert all(e.code == "unknown_stream" for e in errors), (moment, errors)
        audio = [m for m in got if isinstance(m, p.Audio)]
        assert [a.seq for a in audio] == list(range(len(audio))), "audio in order, none missing"
        if moment == "after_done":
            assert ends[0].metrics["cancelled"] is False and len(errors) == 1 and errors[0] in after_done
            continue
        assert ends[0].metrics["cancelled"] is True and not errors
        assert ends[0].metrics["audio_s"] < 30, "synthesis stopped soon after the cancel"
        if moment == "mid_stream":
            cancel_at = next(i for i, m in enumerate(got) if isinstance(m, p.Cancel))
            between = sum(m.sample_count for m in got[cancel_at:] if isinstance(m, p.Audio))
            lead = ends[0].metrics["max_lead_ms"] / 1000 * audio[0].sample_rate
            assert between <= lead, f"{between} samples after the cancel, more than the {lead:.0f} of max_lead"
    assert run(status(service.endpoint))["streams"] == 0


def test_the_client_library_yields_no_audio_after_cancel(service):
    rng = random.Random(11)

    async def go():
        async with Client(service.endpoint, timeout_s=60) as client:
            results = []
            for cut in [0] + [rng.randint(1, 30) for _ in range(3)]:
                utt = client.speak(LONG)
                if cut == 0:
                    await utt.cancel()
                yielded = 0
                async for _ in utt:
                    yielded += 1
                    if yielded == cut:
                        await utt.cancel()
                results.append((cut, yielded, utt.metrics))
            return results
    for cut, yielded, metrics in run(go()):
        assert yielded == cut, f"cancelled after {cut} blocks but {yielded} were yielded"
        assert metrics is not None and metrics["cancelled"] is True


@pytest.fixture(scope="module")
def tiny_queue_service(tmp_path_factory):
    svc = piper_service(tmp_path_factory.mktemp("tiny-queue"), "[service]\nmax_queued_messages_per_client = 4\n"
                        "max_client_backlog_s = 2.0\nheartbeat_interval_s = 0.2\n").start()
    yield svc
    svc.stop()
    assert not svc.orphans, "the service left processes behind"


# -- a small per-client queue: what it costs a fast reader, and what a reader that never reads costs the service

BURST_TEXT = ("The tide began to run and the gulls were loud over the harbour while the bread was warm and the "
              "coffee was strong and nobody wanted to leave at all today.")


@pytest.fixture(scope="module")
def small_queue_service(tmp_path_factory):
    svc = piper_service(tmp_path_factory.mktemp("small-queue"),
                        "[service]\nmax_queued_messages_per_client = 50\nheartbeat_interval_s = 0.2\n").start()
    yield svc
    svc.stop()
    assert not svc.orphans, "the service left processes behind"


def test_a_client_reading_as_fast_as_it_can_loses_no_audio_to_a_small_queue(small_queue_service):
    async def go():
        async with Client(small_queue_service.endpoint, timeout_s=60) as client:
            return await collect(client.speak(BURST_TEXT))
    out = run(go())
    assert out.error is None
    assert out.metrics["messages_dropped_slow_client"] == 0, out.metrics
    out.assert_in_order()


def test_a_client_that_never_reads_its_errors_does_not_grow_the_coordinator(small_queue_service):
    async def go():
        rss_before = coordinator_rss_mb(small_queue_service)
        dealer = RawDealer(small_queue_service.endpoint, rcvhwm=1)
        try:
            for i in range(30_000):
                await dealer.sock.send_multipart([b"x"])  # one frame: a bad_frames error each
                if i % 100 == 0:
                    await asyncio.sleep(0)
            await status(small_queue_service.endpoint, timeout_s=60)  # every request has been read
            return rss_before, coordinator_rss_mb(small_queue_service)
        finally:
            dealer.close()
    before, after = run(go())
    print(f"\nnon-reading client, 30,000 bad requests: coordinator RSS {before} -> {after} MB")
    assert after - before < 10, f"coordinator memory grew from {before} to {after} MB"
