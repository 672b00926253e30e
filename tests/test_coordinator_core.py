"""The coordinator's core without sockets or processes: every stream decision, message in, messages out."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.coordinator.core import CLIENT, KILL, SINK, TEXT_SLICE, WORKER, CoordinatorCore
from pipeline.settings import load_settings
from pipeline.wire import protocol as p
from pipeline.wire.codec import encode

RATE = 24000
W = b"w0-1"
C = b"client-1"
TEXT = "Hello there, my friend. The weather is fine today, and the sea is calm."


def core_with(**service) -> CoordinatorCore:
    settings = load_settings().with_service(**service)
    core = CoordinatorCore(settings, boot_id="c0")
    core.worker_message(W, p.Ready(worker="w0", engine="test", model="m", sample_rate=RATE, dtype="fp32",
                                   device="cpu", pid=1, char_limits={"en": 250}, voices=["Ana"], capacity=4), 0.0)
    core.take()
    return core


def sent(core: CoordinatorCore, dest: str, kind: type | None = None) -> list:
    return [m for d, _, m in core.take() if d == dest and (kind is None or isinstance(m, kind))]


def split(out: list, dest: str, kind: type) -> list:
    return [m for d, _, m in out if d == dest and isinstance(m, kind)]


def tone(samples: int, start: int = 0) -> bytes:
    return (np.arange(start, start + samples) % 1000).astype("<i2").tobytes()


def piece(chunk: p.SynthChunk, index: int, offset: int, samples: int, final: bool) -> p.AudioPiece:
    return p.AudioPiece(stream=chunk.stream, epoch=chunk.epoch, chunk_index=chunk.chunk_index, piece_index=index,
                        sample_offset=offset, sample_count=samples, sample_rate=RATE, final=final,
                        pcm=tone(samples, offset), queued_ms=1.0, engine_ms=2.0)


def speak_all(core: CoordinatorCore, chunks: list[p.SynthChunk], seconds_each: float, now: float,
              piece_s: float = 0.25) -> list:
    """Every chunk's audio arrives at ``now``, in pieces; what the core sends meanwhile."""
    out = []
    per = round(piece_s * RATE)
    for chunk in chunks:
        total = round(seconds_each * RATE)
        offsets = list(range(0, total, per))
        for i, offset in enumerate(offsets):
            core.worker_message(W, piece(chunk, i, offset, min(per, total - offset), i == len(offsets) - 1), now)
            out += core.take()
    return out


def audio_of(msgs: list[p.Audio]) -> bytes:
    return b"".join(bytes(m.pcm) for m in msgs)


def assert_contiguous(msgs: list[p.Audio]) -> None:
    offset = 0
    for seq, msg in enumerate(msgs):
        assert (msg.seq, msg.sample_offset) == (seq, offset)
        offset += msg.sample_count


# -- a whole stream ---------------------------------------------------------------

def test_speak_dispatches_chunks_with_deadlines_and_returns_ordered_audio_then_done():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text=TEXT, overrides={"max_lead_s": 0}), 0.0)
    out = core.take()
    accepted = split(out, CLIENT, p.Accepted)[0]
    chunks = split(out, WORKER, p.SynthChunk)
    assert accepted.sample_rate == RATE and accepted.block_samples == RATE * 25 // 1000 and accepted.max_lead_ms == 0
    assert len(chunks) >= 2 and chunks[0].due_ms == 0 and chunks[1].due_ms > 0
    assert all(c.stream == chunks[0].stream and c.voice == "" for c in chunks)
    replies = speak_all(core, chunks, 1.0, now=0.1)
    audio = split(replies, CLIENT, p.Audio)
    infos = split(replies, CLIENT, p.ChunkInfo)
    done = split(replies, CLIENT, p.Done)[0]
    assert_contiguous(audio)
    assert audio_of(audio) == b"".join(tone(6000, o) for o in range(0, 24000, 6000)) * len(chunks)
    assert [(i.index, i.sample_offset) for i in infos] == [(k, k * RATE) for k in range(len(chunks))]
    assert TEXT.startswith(infos[0].text) and infos[1].text_start > infos[0].text_end
    m = done.metrics
    assert m["audio_s"] == len(chunks) and m["chunks"] == len(chunks) and m["seam_violations"] == 0
    assert m["ttfa_ms"] == pytest.approx(100.0) and m["stages_ms"]["queue_wait"] == 1.0
    assert m["stages_ms"]["engine_first_piece"] == 2.0 and m["cancelled"] is False
    assert core.status(1.0)["streams"] == 0


def test_deltas_give_the_same_chunks_as_the_whole_text():
    whole, deltas = core_with(), core_with()
    whole.client_message(C, p.Speak(stream="s", text=TEXT), 0.0)
    deltas.client_message(C, p.Open(stream="s"), 0.0)
    for i in range(0, len(TEXT), 3):
        deltas.client_message(C, p.Append(stream="s", text=TEXT[i:i + 3]), 0.0)
    deltas.client_message(C, p.End(stream="s"), 0.0)
    assert [c.text for c in sent(whole, WORKER, p.SynthChunk)] == [c.text for c in sent(deltas, WORKER, p.SynthChunk)]


# -- pacing and barge-in ---------------------------------------------------------

def lead_s(core: CoordinatorCore, sid: str, now: float) -> float:
    clock = core.streams[sid].clock
    return (clock.samples - clock.played(now)) / RATE


def test_audio_leaves_at_most_max_lead_ahead_of_real_time_playback():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text="One two three four five six."), 0.0)  # FAST: 0.5 s lead
    chunk = sent(core, WORKER, p.SynthChunk)[0]
    out = speak_all(core, [chunk], 5.0, now=0.0)  # five seconds of audio at once
    first = split(out, CLIENT, p.Audio)
    assert sum(m.sample_count for m in first) == 0.5 * RATE and not split(out, CLIENT, p.Done), \
        "before playback the full lead leaves at once (it fills the 200 ms pre-buffer); the rest waits"
    now, got, sends = 0.0, list(first), []
    while not any(isinstance(m, p.Done) for m in got):
        now = core.next_wake()
        assert now is not None and now < 10
        core.tick(now)
        new = [m for _, _, m in core.take()]
        sends += [(now, m) for m in new if isinstance(m, p.Audio)]
        got += new
        assert lead_s(core, chunk.stream, now) <= 0.5 + 1e-9 if chunk.stream in core.streams else True
    audio = [m for m in got if isinstance(m, p.Audio)]
    assert_contiguous(audio)
    assert len(audio_of(audio)) == 5 * RATE * 2
    assert 4.4 < now < 4.85, "the last audio leaves once the listener is down to the pre-buffer"
    step = 0.3  # the room between the 200 ms pre-buffer and the 500 ms lead
    assert len(sends) <= 4.5 / step + 1, "one top-up per grid step, not one message per block"
    for when, msg in sends:
        assert abs(when / step - round(when / step)) < 1e-6, "top-ups fall on the shared grid"
        assert msg.sample_offset / RATE - when == pytest.approx(0.2), "each leaves as the lead reaches the pre-buffer"
    assert all(m.sample_count == step * RATE for _, m in sends[:-1])
    done = [m for m in got if isinstance(m, p.Done)][0]
    assert done.metrics["underruns"] == 0 and done.metrics["first_send_ms"] == 0


def test_streams_started_apart_top_up_together_and_a_starved_one_gets_its_audio_as_it_comes():
    """One wake-up serves every stream due on the grid; a stream whose audio comes late is not held back."""
    core = core_with()
    chunks = {}
    for name, start in (("a", 0.0), ("b", 0.07), ("c", 0.19)):
        core.client_message(C, p.Speak(stream=name, text="One two three."), start)
        chunk = sent(core, WORKER, p.SynthChunk)[0]
        chunks[name] = chunk
        speak_all(core, [chunk], 3.0, now=start)
    core.client_message(C, p.Speak(stream="slow", text="One two three."), 0.0)
    slow = sent(core, WORKER, p.SynthChunk)[0]
    core.worker_message(W, piece(slow, 0, 0, 6000, False), 0.0)  # 250 ms: playback starts, then nothing
    core.take()
    ticks, arrivals = set(), []
    now, offset, index = 0.0, 6000, 1
    while core.streams:
        wake = core.next_wake()
        arrival = 0.2 * index  # the slow stream's next 200 ms piece: later than the listener needs it
        if offset < 3 * RATE and (wake is None or arrival < wake):
            now = arrival
            core.worker_message(W, piece(slow, index, offset, 4800, offset + 4800 >= 3 * RATE), now)
            offset, index = offset + 4800, index + 1
            arrivals += [(now, m) for _, _, m in core.take() if isinstance(m, p.Audio)]
            continue
        assert wake is not None
        now = wake
        core.tick(now)
        if any(isinstance(m, p.Audio) for _, _, m in core.take()):
            ticks.add(round(now, 6))
    assert all(abs(t / 0.3 - round(t / 0.3)) < 1e-6 for t in ticks), f"wake-ups off the grid: {sorted(ticks)}"
    assert len(ticks) <= 3.2 / 0.3 + 1, "the three streams share their wake-ups"
    assert len(arrivals) == index - 1 and all(m.sample_count == 4800 for _, m in arrivals), \
        "each late piece leaves the moment it arrives"


def test_after_cancel_nothing_of_the_old_epoch_leaves_and_done_comes_at_once():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text="One two three four five six seven eight nine ten."), 0.0)
    chunks = sent(core, WORKER, p.SynthChunk)
    out = speak_all(core, chunks[:1], 3.0, now=0.0)
    before = split(out, CLIENT, p.Audio)
    core.client_message(C, p.Cancel(stream="s"), 0.1)
    out = core.take()
    done = split(out, CLIENT, p.Done)[0]
    cancels = split(out, WORKER, p.CancelStream)
    assert done.metrics["cancelled"] is True and not split(out, CLIENT, p.Audio)
    assert cancels and cancels[0].below_epoch == 1
    assert sum(m.sample_count for m in before) <= 0.5 * RATE, "at most max_lead was out when the cancel came"
    # The rest of the cancelled audio, arriving late from the worker, goes nowhere.
    late = piece(chunks[0], 20, 3 * RATE, 100, True)
    core.worker_message(W, late, 0.2)
    core.tick(5.0)
    core.client_message(C, p.Append(stream="s", text="more"), 5.0)  # still streaming from an LLM: ignored
    assert core.take() == []
    assert core.status(5.0)["streams"] == 0


def test_cancel_before_any_audio_and_cancel_after_done():
    core = core_with()
    core.client_message(C, p.Speak(stream="a", text="Hi there."), 0.0)
    core.client_message(C, p.Cancel(stream="a"), 0.0)
    done = sent(core, CLIENT, p.Done)[0]
    assert done.metrics["cancelled"] is True and done.metrics["audio_s"] == 0
    core.client_message(C, p.Speak(stream="b", text="Hi there.", overrides={"max_lead_s": 0}), 0.0)
    chunks = sent(core, WORKER, p.SynthChunk)
    speak_all(core, chunks, 0.5, 0.0)
    core.client_message(C, p.Cancel(stream="b"), 1.0)
    error = sent(core, CLIENT, p.Error)[0]
    assert error.code == "unknown_stream" and error.stream == "b"


# -- failures ----------------------------------------------------------------------

def test_a_dead_workers_chunks_go_to_another_unless_one_was_partly_heard():
    core = core_with()
    w2 = b"w1-2"
    core.worker_message(w2, p.Ready(worker="w1", engine="test", model="m", sample_rate=RATE, dtype="fp32",
                                    device="cpu", pid=2, char_limits={"en": 250}, capacity=4), 0.0)
    core.client_message(C, p.Speak(stream="s", text=TEXT, overrides={"max_lead_s": 0}), 0.0)
    out = core.take()
    chunks = split(out, WORKER, p.SynthChunk)
    owner = [a for d, a, m in out if d == WORKER][0]
    other = w2 if owner == W else W
    core.worker_message(owner, p.Dead(worker="w", reason="boom"), 0.1)
    out = core.take()
    again = [m for d, a, m in out if d == WORKER and a == other and isinstance(m, p.SynthChunk)]
    assert [c.chunk_index for c in again] == [c.chunk_index for c in chunks]
    assert not [m for d, _, m in out if d == KILL], "a worker that said it is dying is not killed"
    assert core.status(0.1)["worker_deaths"] == 1

    core.client_message(C, p.Speak(stream="t", text=TEXT, overrides={"max_lead_s": 0}), 0.2)
    chunks = sent(core, WORKER, p.SynthChunk)
    core.worker_message(other, piece(chunks[0], 0, 0, 100, False), 0.3)
    core.take()
    core.worker_exited(other, 2, 0.4)  # its process sentinel fired
    errors = sent(core, CLIENT, p.Error)
    assert [e.code for e in errors] == ["worker_died"] and errors[0].stream == "t"


def test_a_hung_worker_is_killed_by_housekeeping():
    core = core_with(heartbeat_timeout_s=2.0)
    core.housekeeping(1.0)
    assert core.take() == []
    core.housekeeping(2.5)
    assert [a for d, a, _ in core.take() if d == KILL] == [(W, 1)]
    assert core.status(2.5)["workers"] == [] and not core.workers.workers


def test_idle_streams_time_out_and_vanished_clients_are_freed():
    core = core_with(stream_idle_timeout_s=5.0)
    core.client_message(C, p.Open(stream="idle"), 0.0)
    core.client_message(b"other", p.Speak(stream="x", text=TEXT), 0.0)
    core.take()
    core.client_gone(b"other", 1.0)
    cancels = sent(core, WORKER, p.CancelStream)
    assert cancels and core.status(1.0)["streams"] == 1
    core.housekeeping(6.0)
    error = sent(core, CLIENT, p.Error)[0]
    assert error.code == "idle_timeout" and error.stream == "idle" and not core.streams


def test_requests_are_refused_with_codes_that_name_the_stream():
    core = core_with(max_streams_per_client=2, max_streams=4, max_clients=2)
    core.client_message(C, p.Open(stream="a"), 0.0)
    core.client_message(C, p.Open(stream="a"), 0.0)
    core.client_message(C, p.Open(stream="b"), 0.0)
    core.client_message(C, p.Open(stream="c"), 0.0)
    core.client_message(b"d2", p.Open(stream="d"), 0.0)
    core.client_message(b"d3", p.Open(stream="e"), 0.0)
    core.client_message(C, p.Open(stream="f", profile="turbo"), 0.0)
    core.client_message(b"d2", p.Open(stream="g", language="xx"), 0.0)
    core.client_message(b"d2", p.Open(stream="h", voice="Nobody"), 0.0)
    core.client_message(b"d2", p.Open(stream="i", deliver="wav:../up.wav"), 0.0)
    core.client_message(C, p.Append(stream="zz", text="hi"), 0.0)
    core.client_frames(C, [b"speak", encode(p.Speak(stream="q", text="t"))[1][:-1]], 0.0)
    codes = [(e.code, e.stream) for e in sent(core, CLIENT, p.Error)]
    assert codes == [("stream_exists", "a"), ("too_many_streams", "c"), ("service_busy", "e"),
                     ("too_many_streams", "f"), ("bad_language", "g"), ("bad_voice", "h"), ("bad_deliver", "i"),
                     ("unknown_stream", "zz"), ("bad_header", "")]


def test_the_service_wide_stream_limit_holds_across_clients():
    core = core_with(max_streams=2)
    for identity, stream in ((C, "a"), (b"d2", "b"), (b"d3", "c")):
        core.client_message(identity, p.Open(stream=stream), 0.0)
    errors = sent(core, CLIENT, p.Error)
    assert [(e.code, e.stream) for e in errors] == [("service_busy", "c")] and "limit of 2" in errors[0].message


def test_text_beyond_the_limit_fails_the_stream():
    core = core_with(max_text_chars=20)
    core.client_message(C, p.Speak(stream="w", text="x" * 21), 0.0)
    core.client_message(C, p.Open(stream="d"), 0.0)
    core.client_message(C, p.Append(stream="d", text="a" * 15), 0.0)
    core.client_message(C, p.Append(stream="d", text="b" * 6), 0.0)
    assert [(e.code, e.stream) for e in sent(core, CLIENT, p.Error)] == [("text_too_long", "w"),
                                                                         ("text_too_long", "d")]


# -- long text never holds the loop ------------------------------------------------

def test_long_text_is_chunked_a_slice_at_a_time_and_other_clients_are_served_between():
    core = core_with(max_text_chars=100_000)
    word = "a" * 99_000  # one word, no punctuation: the worst a chunker can be given
    core.client_message(C, p.Speak(stream="big", text=word, overrides={"max_lead_s": 0}), 0.0)
    first = sent(core, WORKER, p.SynthChunk)
    assert sum(len(c.text) for c in first) <= TEXT_SLICE and core.unchunked
    core.client_message(b"other", p.Status(request="r"), 0.0)
    assert sent(core, CLIENT, p.StatusReply), "answered while the long text waits its turn"
    turns, total = 0, sum(len(c.text) for c in first)
    while core.pump(0.0):
        turns += 1
        total += sum(len(c.text) for c in sent(core, WORKER, p.SynthChunk))
    total += sum(len(c.text) for c in sent(core, WORKER, p.SynthChunk))
    assert total == len(word) and turns >= len(word) // TEXT_SLICE - 1


# -- slow clients ----------------------------------------------------------------

def test_audio_a_slow_client_could_not_take_is_counted_in_its_done():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text="Hi there.", overrides={"max_lead_s": 0}), 0.0)
    [chunk] = sent(core, WORKER, p.SynthChunk)
    half = RATE // 2
    core.worker_message(W, piece(chunk, 0, 0, half, False), 0.0)
    first = sent(core, CLIENT, p.Audio)
    core.audio_dropped(C, first[0])  # the shell says the client's queue was full; the stream goes on
    core.worker_message(W, piece(chunk, 1, half, half, True), 0.1)
    out = core.take()
    last, [done] = split(out, CLIENT, p.Audio), split(out, CLIENT, p.Done)
    core.audio_dropped(C, last[0])  # dropped in the same batch as its done: the done is not sent yet
    assert done.metrics["messages_dropped_slow_client"] == 2
    assert done.metrics["audio_dropped_slow_client_s"] == pytest.approx(1.0)
    assert core.counters["messages_dropped_slow_client"] == 2
    core.worker_message(W, p.Heartbeat(worker="w0"), 0.2)
    assert not core.take()


def test_audio_dropped_after_its_stream_id_was_reused_counts_against_the_old_stream():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text="Hi there.", overrides={"max_lead_s": 0}), 0.0)
    [chunk] = sent(core, WORKER, p.SynthChunk)
    core.worker_message(W, piece(chunk, 0, 0, RATE // 2, False), 0.0)
    core.client_message(C, p.Cancel(stream="s"), 0.1)  # in the same round: its audio is not sent yet
    core.client_message(C, p.Speak(stream="s", text="Again.", overrides={"max_lead_s": 0}), 0.1)
    out = core.take()
    [old_audio] = split(out, CLIENT, p.Audio)
    [cancelled] = split(out, CLIENT, p.Done)
    core.audio_dropped(C, old_audio)
    assert cancelled.metrics["messages_dropped_slow_client"] == 1
    assert core.by_client[(C, "s")].samples_dropped == 0, "the new stream of that name lost nothing"


# -- the sink's deliveries ---------------------------------------------------------

def test_wav_delivery_goes_one_way_to_the_sink_and_done_waits_for_the_file(tmp_path):
    core = core_with(wav_dir=str(tmp_path))
    core.client_message(C, p.Speak(stream="s", text="Hi there.", deliver="wav:out/a.wav"), 0.0)
    out = core.take()
    opened = split(out, SINK, p.SinkOpen)[0]
    assert opened.deliver == f"wav:{tmp_path / 'out' / 'a.wav'}"
    out = speak_all(core, split(out, WORKER, p.SynthChunk), 0.5, 0.0)
    assert not split(out, CLIENT, p.Audio) and split(out, SINK, p.Audio) and split(out, SINK, p.SinkClose)
    assert not split(out, CLIENT, p.Done), "done waits for the sink to close the file"
    core.client_message(C, p.Speak(stream="t", text="Hi.", deliver="wav:out/a.wav"), 0.0)
    assert sent(core, CLIENT, p.Error)[0].code == "bad_deliver", "one writer per file"
    core.sink_done(p.SinkDone(stream=opened.stream, metrics={"error": "", "wav_path": "x"}), 1.0)
    done = sent(core, CLIENT, p.Done)[0]
    assert done.metrics["wav_path"] == "x" and done.metrics["audio_s"] == 0.5


def test_a_sink_restart_fails_only_the_streams_that_use_it(tmp_path):
    core = core_with(wav_dir=str(tmp_path))
    health = lambda pid: p.Health(healthy=True, state={"processes": {"sink": {"pid": pid}}})  # noqa: E731
    core.supervisor_health(health(10))
    core.client_message(C, p.Speak(stream="wav", text="Hi there.", deliver="wav:a.wav"), 0.0)
    core.client_message(C, p.Speak(stream="mine", text="Hi there."), 0.0)
    core.take()
    core.supervisor_health(health(11))
    errors = sent(core, CLIENT, p.Error)
    assert [(e.code, e.stream) for e in errors] == [("sink_restarted", "wav")]
    assert core.status(0.0)["streams"] == 1


def test_a_paced_stream_sends_chunks_only_as_their_audio_comes_within_the_dispatch_horizon():
    core = core_with(dispatch_ahead_s=10.0)
    text = " ".join(f"Sentence number {i} is here, and it goes on for a while." for i in range(40))
    core.client_message(C, p.Speak(stream="s", text=text), 0.0)
    first = sent(core, WORKER, p.SynthChunk)
    est = sum(len(c.text) for c in first[:-1]) / 14.0  # the FAST profile's speaking rate
    assert 1 <= len(first) < 10 and est <= 10.0 + 0.2, "only about ten seconds of audio is asked for at first"
    assert all(b.due_ms >= a.due_ms for a, b in zip(first, first[1:]))
    # The first chunk's audio arrives; as playback goes on, later chunks are sent.
    speak_all(core, first[:1], 0.5, 0.0)
    now, later = 0.0, []
    while now < 30 and len(first) + len(later) < 20:
        now = core.next_wake() or now + 0.25
        core.tick(now)
        later += sent(core, WORKER, p.SynthChunk)
    assert later and min(c.due_ms for c in later) >= 0
    assert all(c.due_ms <= 10_000 for c in later), "each sent when its audio is due within the horizon"
    core.client_message(C, p.Cancel(stream="s"), now)
    assert sent(core, CLIENT, p.Done)[0].metrics["cancelled"]
    assert core.next_wake() is None and not core.streams


# -- several workers ---------------------------------------------------------------

def ready(name: str, pid: int, capacity: int = 4) -> p.Ready:
    return p.Ready(worker=name, engine="test", model="m", sample_rate=RATE, dtype="fp32", device=f"cuda:{pid}",
                   pid=pid, char_limits={"en": 250}, capacity=capacity)


def test_new_streams_go_to_the_worker_with_the_most_free_slots_and_stay_there():
    core = core_with()
    core.worker_message(b"w1-2", ready("w1", 2), 0.0)
    core.worker_message(b"w2-3", ready("w2", 3, capacity=8), 0.0)
    core.take()
    owners = []
    for i in range(8):
        core.client_message(C, p.Speak(stream=f"s{i}", text=TEXT), 0.0)
        owners.append({a for d, a, m in core.take() if d == WORKER and isinstance(m, p.SynthChunk)})
    assert all(len(o) == 1 for o in owners), "a stream's chunks stay on one worker"
    counts = {w: sum(o == {w} for o in owners) for w in (W, b"w1-2", b"w2-3")}
    assert counts[b"w2-3"] > counts[W] and counts[W] > 0 and counts[b"w1-2"] > 0, counts
    free = {w["name"]: w["free_slots"] for w in core.status(0.0)["workers"]}
    assert free["w2"] == 8 - 2 * counts[b"w2-3"]


def test_a_draining_worker_gets_nothing_new_and_its_streams_move_on():
    core = core_with()
    core.worker_message(b"w1-2", ready("w1", 2), 0.0)
    core.take()
    core.client_message(C, p.Open(stream="s"), 0.0)
    core.client_message(C, p.Append(stream="s", text="Hello there, friend."), 0.0)
    first = {a for d, a, m in core.take() if d == WORKER}
    core.worker_message(first.pop(), p.Heartbeat(worker="x", draining=True), 0.1)
    core.client_message(C, p.Append(stream="s", text=" And then the tide came in, slowly and surely."), 0.2)
    core.client_message(C, p.End(stream="s"), 0.2)
    later = {a for d, a, m in core.take() if d == WORKER and isinstance(m, p.SynthChunk)}
    assert later and not (later & first)
    assert [w["draining"] for w in core.status(0.3)["workers"]].count(True) == 1


def test_draining_refuses_new_streams_and_ends_once_the_open_ones_are_done():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text="Hi there.", overrides={"max_lead_s": 0}), 0.0)
    chunks = sent(core, WORKER, p.SynthChunk)
    core.drain(30.0, 1.0)
    core.client_message(C, p.Speak(stream="t", text="Hi."), 1.0)
    error = sent(core, CLIENT, p.Error)[0]
    assert (error.code, error.stream) == ("shutting_down", "t") and "draining" in error.message
    assert core.status(1.0)["draining"] and not core.drained(1.5)
    speak_all(core, chunks, 0.5, 2.0)
    assert core.drained(2.0), "the last open stream is done"


def test_a_drain_ends_at_its_deadline_whatever_is_still_open():
    core = core_with()
    core.client_message(C, p.Open(stream="slow"), 0.0)
    core.drain(30.0, 1.0)
    assert not core.drained(30.9) and core.drained(31.0)


@pytest.mark.parametrize("rate, piece_s", [(22050, 0.25), (24000, 0.1), (16000, 0.37), (44100, 0.013)])
def test_every_paced_wake_up_moves_audio_or_time_on(rate, piece_s):
    """A wake-up whose time, a float, lands a sample short of the top-up once made the tick loop spin."""
    settings = load_settings().with_service()
    core = CoordinatorCore(settings, boot_id="c0")
    core.worker_message(W, p.Ready(worker="w0", engine="test", model="m", sample_rate=rate, dtype="fp32",
                                   device="cpu", pid=1, char_limits={"en": 250}, capacity=4), 0.0)
    core.client_message(C, p.Speak(stream="s", text="One two three four five six seven."), 0.0)
    chunk = [m for d, _, m in core.take() if isinstance(m, p.SynthChunk)][0]
    per = round(piece_s * rate)
    total = 8 * rate
    for i, offset in enumerate(range(0, total, per)):
        core.worker_message(W, p.AudioPiece(stream=chunk.stream, epoch=0, chunk_index=0, piece_index=i,
                                            sample_offset=offset, sample_count=min(per, total - offset),
                                            sample_rate=rate, final=offset + per >= total,
                                            pcm=bytes(2 * min(per, total - offset))), 0.0)
    sent = sum(m.sample_count for _, _, m in core.take() if isinstance(m, p.Audio))
    ticks, last = 0, -1.0
    while (wake := core.next_wake()) is not None:
        assert wake > last, "each wake-up is later than the one before"
        last = wake
        core.tick(wake)
        sent += sum(m.sample_count for _, _, m in core.take() if isinstance(m, p.Audio))
        ticks += 1
        assert ticks < 200
    assert sent == total and not core.streams


# -- review findings: each once a real defect ---------------------------------------------------

def test_a_chunk_held_by_the_horizon_is_sent_even_when_no_audio_is_pending():
    """Deadlines follow the real audio: an engine faster than the estimate never strands a chunk."""
    core = core_with(dispatch_ahead_s=10.0)
    core.client_message(C, p.Open(stream="s", overrides={"chars_per_second": 10}), 0.0)
    core.client_message(C, p.Append(stream="s", text=" ".join(["Sentence number one is long enough."] * 12)), 0.0)
    now, todo, replies = 0.0, [], []

    def collect(out: list) -> None:
        replies.extend(m for d, _, m in out if d == CLIENT)
        todo.extend(m for d, _, m in out if d == WORKER and isinstance(m, p.SynthChunk))

    for _ in range(2000):
        collect(core.take())
        while todo:  # the engine answers each chunk with 1.5 s of audio at once
            collect(speak_all(core, [todo.pop(0)], 1.5, now))
        st = core.by_client.get((C, "s"))
        if now >= 5.0 and st is not None and not st.end_pending:
            core.client_message(C, p.Append(stream="s", text=" How are you today?"), now)
            core.client_message(C, p.End(stream="s"), now)
        if not core.streams:
            break
        now = max(now + 0.05, core.next_wake() or now + 0.05)
        core.worker_message(W, p.Heartbeat(worker="w0"), now)
        core.tick(now)
        core.housekeeping(now)
    replies += [m for d, _, m in core.take() if d == CLIENT]
    assert not core.streams, "the stream finished"
    assert [type(m) for m in replies if isinstance(m, (p.Done, p.Error))] == [p.Done]


def test_deltas_after_a_stream_failed_get_no_errors_of_their_own():
    core = core_with(max_text_chars=10)
    core.client_message(C, p.Open(stream="s"), 0.0)
    core.client_message(C, p.Append(stream="s", text="x" * 11), 0.0)
    core.client_message(C, p.Append(stream="s", text="more"), 0.0)
    core.client_message(C, p.End(stream="s"), 0.0)
    assert [e.code for e in sent(core, CLIENT, p.Error)] == ["text_too_long"]


def test_a_stream_shorter_than_the_pre_buffer_still_says_when_it_started_playing():
    core = core_with()
    core.client_message(C, p.Speak(stream="s", text="Yes."), 10.0)
    done = split(speak_all(core, sent(core, WORKER, p.SynthChunk), 0.1, 10.05), CLIENT, p.Done)[0]
    assert done.metrics["played_ttfa_ms"] == pytest.approx(50.0)


def test_an_ended_stream_whose_audio_stops_coming_is_ended_as_stalled():
    core = core_with(stall_timeout_s=60.0)
    core.client_message(C, p.Speak(stream="s", text="Hi there.", overrides={"max_lead_s": 0}), 0.0)
    chunk = sent(core, WORKER, p.SynthChunk)[0]
    core.worker_message(W, piece(chunk, 1, 100, 100, True), 1.0)  # piece 0 was lost on the way
    core.housekeeping(30.0)
    assert not sent(core, CLIENT, p.Error)
    core.housekeeping(61.5)
    errors = sent(core, CLIENT, p.Error)
    assert [(e.code, e.stream) for e in errors] == [("stalled", "s")] and not core.streams
