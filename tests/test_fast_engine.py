"""FastXttsEngine through the Engine protocol, on the tiny synthetic checkpoint (CPU).

Random weights stop at random, so every job forces its length (`forced_tokens`):
N forced tokens give N latents and exactly
256 * floor(floor(4 * N') * 24000 / 22050) samples, N' = floor(N / speed) when
speed != 1 (N = 24: 26,624 samples).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.xtts_support import sampling
from workers.engines.base import JobFailed, PieceOut, SynthJob
from workers.engines.xtts_fast.engine import FastSettings, FastXttsEngine
from workers.engines.xtts_fast.frames import FrameChain

GREEDY = {"temperature": 0.0}


def engine(checkpoint, dtype=torch.float32, **settings) -> FastXttsEngine:
    from workers.engines.xtts_model import load_xtts

    model, _ = load_xtts(checkpoint, device="cpu", dtype="fp32")
    return FastXttsEngine(model, "cpu", dtype, FastSettings(**{"slots": 4, "max_len": 320, **settings}))


@pytest.fixture(scope="module")
def fast(tiny_checkpoint) -> FastXttsEngine:
    return engine(tiny_checkpoint)


def job(stream: str, text: str = "Hello there.", n: int | None = 24, chunk: int = 0, **overrides) -> SynthJob:
    return SynthJob(stream=stream, epoch=0, chunk_index=chunk, text=text, sampling=sampling(**overrides),
                    forced_tokens=n)


def drain(eng: FastXttsEngine) -> list[PieceOut | JobFailed]:
    out = []
    for _ in range(10_000):
        if not eng.has_work():
            return out
        out.extend(eng.step())
    raise AssertionError("engine did not finish")


def by_stream(outs) -> dict[str, list[PieceOut]]:
    grouped: dict[str, list[PieceOut]] = {}
    for o in outs:
        if isinstance(o, PieceOut):
            grouped.setdefault(o.job.stream, []).append(o)
    return grouped


def audio(pieces: list[PieceOut]) -> np.ndarray:
    return np.concatenate([p.samples for p in pieces])


def check_pieces(pieces: list[PieceOut], samples: int) -> None:
    assert [p.piece_index for p in pieces] == list(range(len(pieces)))
    offsets = [p.sample_offset for p in pieces]
    assert offsets == list(np.cumsum([0] + [len(p.samples) for p in pieces[:-1]]))
    assert [p.final for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert all(p.samples.dtype == np.int16 for p in pieces)
    assert sum(len(p.samples) for p in pieces) == samples


def test_info_reports_the_engine(fast):
    assert fast.info.engine == "xtts-fast"
    assert fast.info.dtype == "fp32"
    assert fast.info.sample_rate == 24000
    assert fast.info.char_limits["en"] == 250


@pytest.mark.parametrize("n,speed", [(24, 1.0), (1, 1.0), (7, 1.0), (30, 1.25)])
def test_forced_length_gives_exact_sample_count(fast, n, speed):
    pieces = by_stream(drain_after(fast, [job("s", n=n, speed=speed)]))["s"]
    expected = 256 * int(4 * (n if speed == 1.0 else int(n / speed)) * 24000 / 22050)
    assert FrameChain.for_model(1024, 256, 22050, 24000, speed).samples(n) == expected
    check_pieces(pieces, expected)


def drain_after(eng: FastXttsEngine, jobs: list[SynthJob]) -> list[PieceOut | JobFailed]:
    for j in jobs:
        eng.add(j)
    return drain(eng)


def test_first_piece_after_first_piece_tokens(fast):
    pieces = by_stream(drain_after(fast, [job("s", n=30, first_piece_tokens=5, piece_tokens=8)]))["s"]
    chain = FrameChain.for_model(1024, 256, 22050, 24000, 1.0)
    holdback = fast.vocoder.settings.holdback
    assert len(pieces[0].samples) == chain.samples(5) - holdback
    assert len(pieces[1].samples) == chain.samples(13) - chain.samples(5)
    check_pieces(pieces, chain.samples(30))


def test_batched_jobs_equal_jobs_alone(fast):
    jobs = [job("a", "Short one.", n=12, **GREEDY), job("b", "A somewhat longer sentence here.", n=20, **GREEDY),
            job("c", "Third.", n=8, **GREEDY)]
    together = by_stream(drain_after(fast, jobs))
    for j in jobs:
        alone = by_stream(drain_after(fast, [j]))[j.stream]
        a, b = audio(together[j.stream]), audio(alone)
        assert a.shape == b.shape
        assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 1  # int16 rounding


def test_bad_jobs_fail_alone(fast):
    good = job("good", n=10)
    bad = [job("empty", "   "), job("temp", temperature=-1.0), job("voice", n=10),
           job("long", "word " * 2000), job("speed", speed=0.0), job("forced", n=0)]
    bad[2].voice = "No Such Voice"
    outs = drain_after(fast, [good] + bad)
    failed = {o.job.stream: o.message for o in outs if isinstance(o, JobFailed)}
    assert set(failed) == {j.stream for j in bad}
    assert "temperature" in failed["temp"] and "No Such Voice" in failed["voice"]
    check_pieces(by_stream(outs)["good"], FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(10))


def test_cancel_stops_a_running_stream(fast):
    fast.add(job("keep", n=40))
    fast.add(job("drop", n=40))
    fast.add(job("drop", n=40, chunk=1))
    outs = fast.step() + fast.step()
    assert fast.cancel("drop") == 2
    outs += drain(fast)
    got = by_stream(outs)
    assert "drop" not in got or not got["drop"][-1].final
    check_pieces(got["keep"], FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(40))


def test_first_chunks_are_admitted_first(tiny_checkpoint):
    eng = engine(tiny_checkpoint, slots=1)
    eng.add(SynthJob("ahead", 0, 3, "Later text.", sampling=sampling(), priority=5, forced_tokens=6))
    eng.add(SynthJob("new", 0, 0, "First words.", sampling=sampling(), priority=0, forced_tokens=6))
    order = [o.job.stream for o in drain(eng) if isinstance(o, PieceOut) and o.final]
    assert order == ["new", "ahead"]


def test_more_jobs_than_slots_all_finish(tiny_checkpoint):
    eng = engine(tiny_checkpoint, slots=2, max_prefills_per_step=1)
    jobs = [job(f"s{i}", n=3 + i) for i in range(4)]
    got = by_stream(drain_after(eng, jobs))
    chain = FrameChain.for_model(1024, 256, 22050, 24000, 1.0)
    for i in range(4):
        check_pieces(got[f"s{i}"], chain.samples(3 + i))


def test_half_precision_is_really_on(tiny_checkpoint):
    """bf16 on the CPU (fp16 matmuls are not available on every CPU); CUDA uses fp16 the same way."""
    eng = engine(tiny_checkpoint, dtype=torch.bfloat16)
    assert eng.info.dtype == "bf16"
    gpt_params = list(eng.model.gpt.gpt.parameters()) + [eng.decoder.mel_emb, eng.decoder.mel_head.weight]
    assert all(p.dtype == torch.bfloat16 for p in gpt_params), "GPT weights must be half when half is configured"
    assert eng.decoder.k_cache.dtype == torch.bfloat16 and eng.latents.dtype == torch.bfloat16
    check_pieces(by_stream(drain_after(eng, [job("h", n=9)]))["h"],
                 FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(9))


def test_warm_up_leaves_the_engine_idle(tiny_checkpoint):
    eng = engine(tiny_checkpoint, slots=2)
    eng.warm_up()
    assert not eng.has_work()
    eng.close()


def test_built_from_service_settings_with_a_reference_audio_voice(tiny_checkpoint, tmp_path):
    from tests.xtts_support import service_for
    from workers.engines.xtts_fast.engine import build_xtts_fast

    eng = build_xtts_fast(service_for(tiny_checkpoint, tmp_path, dtype="bf16"), slots=2, max_len=256)
    assert eng.info.dtype == "bf16" and eng.info.model == tiny_checkpoint.name
    voice = str(tiny_checkpoint / "samples" / "en_sample.wav")  # latents computed from audio, fp32 encoders
    jobs = [job("ref", n=6), job("lang", n=6)]
    jobs[0].voice = voice
    jobs[1].language = "xx"
    outs = drain_after(eng, jobs)
    failed = {o.job.stream: o.message for o in outs if isinstance(o, JobFailed)}
    assert list(failed) == ["lang"] and "not supported" in failed["lang"]
    check_pieces(by_stream(outs)["ref"], FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(6))


def steps_to_first_piece(eng: FastXttsEngine, stream: str, seen: list | None = None) -> tuple[int, list[set[int]]]:
    """Steps until the stream's chunk 0 gives its first piece, and which of its chunks ran at each step."""
    ran: list[set[int]] = []
    for n in range(1, 1000):
        outs = eng.step()
        if seen is not None:
            seen.extend(outs)
        ran.append({r.job.chunk_index for r in eng.batcher.running if r.job.stream == stream})
        if any(isinstance(o, PieceOut) and o.job.stream == stream and o.job.chunk_index == 0 for o in outs):
            return n, ran
    raise AssertionError("no first piece")


def chunk_job(stream: str, chunk: int, n: int, **overrides) -> SynthJob:
    return SynthJob(stream, 0, chunk, f"Chunk number {chunk} of the stream.", sampling=sampling(**overrides),
                    priority=chunk, forced_tokens=n)


def test_later_chunks_wait_until_the_first_chunk_has_its_first_piece(tiny_checkpoint):
    eng = engine(tiny_checkpoint, max_prefills_per_step=8)
    eng.add(chunk_job("s", 0, 30))
    alone, _ = steps_to_first_piece(eng, "s")
    eng.cancel("s")
    drain(eng)
    for c in range(3):
        eng.add(chunk_job("s", c, 30))
    together, ran = steps_to_first_piece(eng, "s")
    assert together == alone
    assert all(chunks == {0} for chunks in ran), f"later chunks were admitted before chunk 0's first piece: {ran}"
    got = {}
    for o in drain(eng):
        if isinstance(o, PieceOut):
            got.setdefault(o.job.chunk_index, []).append(o)
    assert got[0][0].piece_index == 1  # its first piece was returned above
    for c in (1, 2):
        check_pieces(got[c], FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(30))


def test_held_vocoder_pieces_are_unchanged(tiny_checkpoint):
    """A later chunk at a piece boundary while another stream's first chunk waits gets its piece later, the same piece."""
    eng = engine(tiny_checkpoint)
    eng.add(chunk_job("ahead", 1, 40, **GREEDY))
    alone = by_stream(drain(eng))["ahead"]
    eng.add(chunk_job("ahead", 1, 40, **GREEDY))
    outs = eng.step() + eng.step()  # admitted (no first chunk waits), decoding
    eng.add(chunk_job("new", 0, 24, **GREEDY))
    outs += drain(eng)
    order = [(o.job.stream, o.piece_index) for o in outs if isinstance(o, PieceOut)]
    assert order.index(("new", 0)) < order.index(("ahead", 0))
    held = by_stream(outs)["ahead"]
    assert [len(p.samples) for p in held] == [len(p.samples) for p in alone]
    assert np.abs(audio(held).astype(np.int32) - audio(alone).astype(np.int32)).max() <= 1
    check_pieces(held, FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(40))


def test_the_hold_on_later_chunks_lapses(tiny_checkpoint):
    """New first chunks arriving at every step must not starve a later chunk for good."""
    eng = engine(tiny_checkpoint, slots=8, max_hold_steps=3)
    eng.add(chunk_job("old", 1, 6))
    for i in range(12):
        eng.add(chunk_job(f"new{i}", 0, 12))
        eng.step()
        if any(r.job.stream == "old" for r in eng.batcher.running):
            break
    else:
        raise AssertionError("the later chunk was never admitted")
    assert i <= 4
    drain(eng)


@pytest.mark.parametrize("stop_at", [0, 1, 9])
def test_a_sampled_stop_ends_the_job_at_its_latent(tiny_checkpoint, stop_at):
    """Decode steps are read back one step late; the step launched past a stop must not count."""
    eng = engine(tiny_checkpoint)
    draw, calls = eng.sampler.sample, []
    stop = eng.decoder.stop_audio_token

    def rigged(logits, rows):  # call 0 is the prefill's (latent 0), call i the decode giving latent i
        tokens = draw(logits, rows)
        tokens = torch.where(tokens == stop, 0, tokens)
        if len(calls) == stop_at:
            tokens[0] = stop
        calls.append(len(rows))
        return tokens

    eng.sampler.sample = rigged
    pieces = by_stream(drain_after(eng, [job("s", n=None, **GREEDY)]))["s"]
    check_pieces(pieces, FrameChain.for_model(1024, 256, 22050, 24000, 1.0).samples(stop_at + 1))
    # Steps launched past the stop before it was read back: one after a decode step's stop,
    # two after the prefill's (the first decode step goes out with the prefill).
    assert len(calls) <= stop_at + (3 if stop_at == 0 else 2)


class _FakeCuda:
    """Stands in for a CUDA stream and event: the CPU runs everything in order anyway."""

    def wait_stream(self, stream) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass


def test_the_overlapped_vocoder_path_on_fake_streams(tiny_checkpoint, monkeypatch):
    """The CUDA path's bookkeeping (vocoder one step behind, first audio handed over early, padded
    vocoder batches) run on the CPU: same first-piece step alone and with later chunks, exact pieces."""
    import contextlib

    empty = torch.empty
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _FakeCuda())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", _FakeCuda)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None, raising=False)
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))
    eng = engine(tiny_checkpoint, slots=8)
    eng.pieces.overlap, eng.pieces.voc_stream, eng.vocoder.batch_sizes = True, _FakeCuda(), (1, 2, 4, 8)
    eng.add(chunk_job("a", 0, 30))
    alone, _ = steps_to_first_piece(eng, "a")
    drain(eng)
    jobs = [chunk_job(s, c, 20 + 5 * c) for s in ("a", "b") for c in range(3)]
    for j in jobs:
        eng.add(j)
    outs: list = []
    together, _ = steps_to_first_piece(eng, "a", outs)
    assert together == alone
    outs += drain(eng)
    chain = FrameChain.for_model(1024, 256, 22050, 24000, 1.0)
    for j in jobs:
        check_pieces([o for o in outs if isinstance(o, PieceOut) and o.job is j], chain.samples(20 + 5 * j.chunk_index))
