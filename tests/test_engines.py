"""Piper and stock XTTS through the Engine protocol: pieces, final flags, failures, cancel, voices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.text.limits import forced_tokens
from tests.xtts_support import sampling, service_for, stock_stream_samples
from workers.engines.base import Engine, JobFailed, PieceOut, SynthJob
from workers.engines.length_policy import ForcedLengthProcessor
from workers.engines.piper_engine import PiperEngine
from workers.engines.voices import VoiceCache, VoiceError
from workers.engines.xtts_stock import StockXttsEngine, build_xtts_stock


def run_all(engine: Engine, max_steps: int = 500) -> list[PieceOut | JobFailed]:
    out: list[PieceOut | JobFailed] = []
    for _ in range(max_steps):
        if not engine.has_work():
            return out
        out.extend(engine.step())
    raise AssertionError("engine still has work after max_steps")


def pieces_of(results: list, chunk_index: int) -> list[PieceOut]:
    return [r for r in results if isinstance(r, PieceOut) and r.job.chunk_index == chunk_index]


def assert_contiguous(pieces: list[PieceOut]) -> int:
    """Pieces of one job: indices 0.., offsets without gap or overlap, only the last final; total samples."""
    assert pieces, "no pieces"
    offset = 0
    for i, piece in enumerate(pieces):
        assert (piece.piece_index, piece.sample_offset) == (i, offset)
        assert piece.samples.dtype == np.dtype("<i2") and len(piece.samples) > 0
        assert piece.final == (i == len(pieces) - 1)
        offset += len(piece.samples)
    return offset


# --- Piper -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def piper() -> PiperEngine:
    return PiperEngine()


def test_piper_pieces_are_contiguous_a_quarter_second_then_longer(piper: PiperEngine) -> None:
    assert (piper.info.engine, piper.info.sample_rate, piper.info.dtype) == ("piper", 22050, "fp32")
    piper.add(SynthJob("s", 1, 0, "The otherworldly light spilled over us, cold and silver."))
    results = run_all(piper)
    pieces = pieces_of(results, 0)
    total = assert_contiguous(pieces)
    assert total / 22050 > 1.5, "a sentence of speech"
    assert len(pieces[0].samples) == piper.piece_samples and abs(piper.piece_samples / 22050 - 0.25) < 0.001
    assert all(len(p.samples) == piper.rest_piece_samples for p in pieces[1:-1])
    assert abs(piper.rest_piece_samples / 22050 - 4.0) < 0.001
    assert np.abs(np.concatenate([p.samples for p in pieces])).max() > 1000, "not silence"


def test_piper_bad_jobs_fail_and_the_engine_goes_on(piper: PiperEngine) -> None:
    piper.add(SynthJob("s", 1, 0, "Olá, tudo bem?", language="pt"))
    piper.add(SynthJob("s", 1, 1, "...   "))
    piper.add(SynthJob("s", 1, 2, "Hello.", voice="someone-else"))
    piper.add(SynthJob("s", 1, 3, "Still speaking."))
    results = run_all(piper)
    failed = {r.job.chunk_index: r.message for r in results if isinstance(r, JobFailed)}
    assert set(failed) == {0, 1, 2}
    assert "English" in failed[0] and "nothing to speak" in failed[1] and "someone-else" in failed[2]
    assert_contiguous(pieces_of(results, 3))


def test_piper_speed_and_priority(piper: PiperEngine) -> None:
    text = "Please call me tomorrow morning at nine, before the meeting starts."
    piper.add(SynthJob("slow", 1, 0, text, sampling={"speed": 1.0}, priority=5))
    piper.add(SynthJob("fast", 1, 0, text, sampling={"speed": 2.0}, priority=0))
    results = run_all(piper)
    assert results[0].job.stream == "fast", "lower priority value runs first"
    normal = sum(len(r.samples) for r in results if r.job.stream == "slow")
    fast = sum(len(r.samples) for r in results if r.job.stream == "fast")
    assert fast < 0.75 * normal


def test_piper_cancel_drops_queued_and_running_jobs(piper: PiperEngine) -> None:
    text = "A quick brown fox jumps over the lazy dog while the children laugh."
    for i in range(3):
        piper.add(SynthJob("a", 1, i, text))
    piper.add(SynthJob("b", 1, 0, text))
    first = piper.step()
    assert first[0].job.key == ("a", 1, 0) and not first[0].final
    assert piper.cancel("a") == 3
    assert {r.job.stream for r in run_all(piper)} == {"b"}


def test_piper_cancel_by_epoch_keeps_the_new_epoch(piper: PiperEngine) -> None:
    piper.add(SynthJob("a", 1, 0, "Old words."))
    piper.add(SynthJob("a", 2, 0, "New words."))
    assert piper.cancel("a", below_epoch=2) == 1
    assert {r.job.epoch for r in run_all(piper)} == {2}


# --- stock XTTS (tiny synthetic checkpoint, forced lengths) ---------------------------------------

@pytest.fixture(scope="module")
def xtts(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> StockXttsEngine:
    cache = tmp_path_factory.mktemp("xtts-cache")
    return build_xtts_stock(service_for(tiny_checkpoint, cache), tiny_checkpoint)


def test_forced_tokens_policy() -> None:
    assert forced_tokens("The otherworldly light spilled over us.") == 60  # 39 chars x 1.54
    assert forced_tokens("") == 2  # one token of audio, then the stop token
    assert forced_tokens("abcd", tokens_per_char=2.0) == 8


def test_forced_length_processor_makes_exactly_n_tokens(xtts: StockXttsEngine) -> None:
    from transformers import LogitsProcessorList

    model = xtts.model
    voice = xtts.voices.get("")
    tokens = torch.IntTensor(model.tokenizer.encode("hello there", lang="en")).unsqueeze(0)
    for n in (1, 5, 9):
        torch.manual_seed(n)
        codes = model.gpt.generate(voice.gpt_cond_latent, tokens, do_sample=True, top_k=50, top_p=0.85,
                                   temperature=0.75, num_return_sequences=1, num_beams=1,
                                   logits_processor=LogitsProcessorList([ForcedLengthProcessor(n, 1025)]))
        assert codes.shape[-1] == n and int(codes[0, -1]) == 1025 and 1025 not in codes[0, :-1].tolist()


def test_stock_stream_sample_count_matches_coqui(xtts: StockXttsEngine) -> None:
    """The sample count of n forced tokens, measured on raw inference_stream (not our engine)."""
    from transformers import LogitsProcessorList

    voice = xtts.voices.get("")
    for n, chunk, speed in ((7, 4, 1.0), (10, 20, 1.3)):
        stream = xtts.model.inference_stream(
            "hello there", "en", voice.gpt_cond_latent, voice.speaker_embedding, stream_chunk_size=chunk,
            speed=speed, logits_processor=LogitsProcessorList([ForcedLengthProcessor(n, 1025)]))
        assert sum(len(w) for w in stream) == stock_stream_samples(n, speed)


def test_xtts_info(xtts: StockXttsEngine, tiny_checkpoint: Path) -> None:
    info = xtts.info
    assert (info.engine, info.sample_rate, info.dtype, info.device) == ("xtts-stock", 24000, "fp32", "cpu")
    assert info.model == tiny_checkpoint.name
    assert info.char_limits == xtts.model.tokenizer.char_limits and info.char_limits["en"] == 250


def test_xtts_forced_length_pieces(xtts: StockXttsEngine) -> None:
    n = 10
    xtts.add(SynthJob("s", 1, 0, "Hello there.", sampling=sampling(piece_tokens=4), forced_tokens=n))
    results = run_all(xtts)
    pieces = pieces_of(results, 0)
    assert len(pieces) >= 3, "one piece per 4 tokens"
    assert assert_contiguous(pieces) == stock_stream_samples(n)


def test_xtts_bad_jobs_fail_and_the_engine_goes_on(xtts: StockXttsEngine) -> None:
    ok = sampling(piece_tokens=20)
    xtts.add(SynthJob("s", 1, 0, "Hello.", language="xx", sampling=ok, forced_tokens=4))
    xtts.add(SynthJob("s", 1, 1, "   ", sampling=ok, forced_tokens=4))
    xtts.add(SynthJob("s", 1, 2, "word " * 200, sampling=ok, forced_tokens=4))
    xtts.add(SynthJob("s", 1, 3, "Hello.", voice="nobody", sampling=ok, forced_tokens=4))
    xtts.add(SynthJob("s", 1, 4, "Hello.", sampling=ok, forced_tokens=9999))
    xtts.add(SynthJob("s", 1, 5, "Hello.", sampling=sampling(temperature="hot"), forced_tokens=4))
    xtts.add(SynthJob("s", 1, 6, "Hello.", sampling=sampling(top_p=0.0), forced_tokens=4))
    xtts.add(SynthJob("s", 1, 7, "Still here.", sampling=ok, forced_tokens=6))
    results = run_all(xtts)
    failed = {r.job.chunk_index: r.message for r in results if isinstance(r, JobFailed)}
    assert set(failed) == {0, 1, 2, 3, 4, 5, 6}
    assert "'xx' is not supported" in failed[0] and "empty text" in failed[1]
    assert "tokens long" in failed[2] and "nobody" in failed[3] and "forced_tokens" in failed[4]
    assert "bad sampling" in failed[5] and "top_p" in failed[6]
    assert assert_contiguous(pieces_of(results, 7)) == stock_stream_samples(6)


def test_xtts_cancel_drops_queued_and_running_jobs(xtts: StockXttsEngine) -> None:
    job = dict(sampling=sampling(piece_tokens=4), forced_tokens=12)
    for i in range(3):
        xtts.add(SynthJob("a", 1, i, "Hello there.", **job))
    xtts.add(SynthJob("b", 1, 0, "Hello there.", **job))
    first = xtts.step()
    assert first and first[0].job.key == ("a", 1, 0)
    assert xtts.cancel("a") == 3
    results = run_all(xtts)
    assert {r.job.stream for r in results} == {"b"}
    assert_contiguous(pieces_of(results, 0))


def test_xtts_warm_up_leaves_no_work(xtts: StockXttsEngine) -> None:
    xtts.warm_up()
    assert not xtts.has_work()


# --- voices -------------------------------------------------------------------------------------

def test_voice_latents_come_from_disk_in_a_fresh_cache(xtts: StockXttsEngine, tiny_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    reference = tmp_path / "me.wav"
    audio, rate = sf.read(tiny_checkpoint / "samples" / "en_sample.wav", dtype="float32")
    sf.write(reference, audio[: rate], rate)  # one second is enough and keeps the encoders cheap
    first = VoiceCache(xtts.model, tiny_checkpoint, cache_dir=tmp_path / "cache")
    computed = first.get(str(reference))
    assert first.get(str(reference)) is computed and first.stats["computed"] == 1 and first.stats["memory"] == 1
    fresh = VoiceCache(xtts.model, tiny_checkpoint, cache_dir=tmp_path / "cache")
    loaded = fresh.get(str(reference))
    assert fresh.stats["disk"] == 1 and fresh.stats["computed"] == 0
    assert torch.equal(loaded.gpt_cond_latent, computed.gpt_cond_latent)
    assert torch.equal(loaded.speaker_embedding, computed.speaker_embedding)
    # Other audio under the same name is another voice: keyed by content, not path.
    sf.write(reference, audio[rate - 1 :: -1].copy(), rate)
    assert fresh.get(str(reference)).source == computed.source and fresh.stats["computed"] == 1


def test_default_voice_and_voice_errors(xtts: StockXttsEngine, tiny_checkpoint: Path, tmp_path: Path) -> None:
    cache = VoiceCache(xtts.model, tiny_checkpoint)
    assert cache.default_name() == "Synthetic Voice A"
    assert cache.get("").source == cache.get("Synthetic Voice A").source == "speaker:Synthetic Voice A"
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(1000, dtype=np.float32), 22050)
    with pytest.raises(VoiceError, match="too short"):
        cache.get(str(short))
    (tmp_path / "not-audio.wav").write_text("hello")
    with pytest.raises(VoiceError, match="cannot read"):
        cache.get(str(tmp_path / "not-audio.wav"))
