"""Measurements for `bench/engine.py`: stock coqui-tts streaming and the fast engine.

Every measurement takes a `Clock` and stops early (saying so in its result) when
the clock's stage budget runs out, so a GPU run cannot overrun its slot. Lengths
are forced (random weights stop at random): ~1.54 audio tokens per character.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from pipeline.playback import PlaybackClock
from pipeline.text.limits import forced_tokens
from workers.engines.base import JobFailed, PieceOut, SynthJob
from workers.engines.length_policy import ForcedLengthProcessor

from .stats import pct, summary_ms

SR = 24000


@dataclass
class Clock:
    """A stage budget: `left()` seconds remain; `over()` once spent."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def over(self) -> bool:
        return self.left() <= 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- stock coqui-tts ------------------------------------------------------------------------


class StockRunner:
    """Stock `inference_stream` (chunk size 20, fp32) with a forced length."""

    def __init__(self, model: Any, chunk_size: int = 20) -> None:
        self.model = model
        self.chunk_size = chunk_size
        name = next(iter(model.speaker_manager.speakers))
        entry = model.speaker_manager.speakers[name]
        self.cond, self.speaker = entry["gpt_cond_latent"], entry["speaker_embedding"]
        self.device = next(model.parameters()).device

    def stream(self, text: str, first_only: bool = False) -> tuple[float | None, float, int]:
        """(seconds to the first chunk, seconds to the end, samples); `first_only` stops at the first chunk."""
        stop = self.model.gpt.stop_audio_token
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList([ForcedLengthProcessor(forced_tokens(text), stop)])
        t0 = time.perf_counter()
        first, samples = None, 0
        for chunk in self.model.inference_stream(text, "en", self.cond, self.speaker, stream_chunk_size=self.chunk_size,
                                                 logits_processor=processors, temperature=0.75, top_k=50, top_p=0.85,
                                                 repetition_penalty=5.0):
            sync(self.device)
            if first is None:
                first = time.perf_counter() - t0
            samples += int(chunk.shape[-1])
            if first_only:
                break
        return first, time.perf_counter() - t0, samples


def stock_rtf(runner: StockRunner, chunks: list[str], clock: Clock) -> dict[str, Any]:
    wall, samples, done = 0.0, 0, 0
    for text in chunks:
        if clock.over():
            break
        _, total, n = runner.stream(text)
        wall, samples, done = wall + total, samples + n, done + 1
    audio_s = samples / SR
    return {"chunks": len(chunks), "chunks_done": done, "wall_s": wall, "audio_s": audio_s,
            "rtf": wall / audio_s if audio_s else None}


# -- the fast engine ------------------------------------------------------------------------


def fast_job(stream: str, text: str, chunk: int, sampling: dict[str, Any]) -> SynthJob:
    return SynthJob(stream=stream, epoch=0, chunk_index=chunk, text=text, sampling=dict(sampling),
                    priority=chunk, forced_tokens=forced_tokens(text))


@dataclass
class Arrival:
    chunk: int
    offset: int
    samples: int
    t: float
    final: bool


def run_streams(engine: Any, streams: dict[str, list[str]], sampling: dict[str, Any], clock: Clock
                ) -> tuple[dict[str, list[Arrival]], float, bool, list[str]]:
    """Add every stream's chunks at once and step to the end; (arrivals, t0, finished, failures)."""
    arrivals: dict[str, list[Arrival]] = {s: [] for s in streams}
    failures: list[str] = []
    t0 = time.perf_counter()
    for name, chunks in streams.items():
        for i, text in enumerate(chunks):
            engine.add(fast_job(name, text, i, sampling))
    while engine.has_work():
        if clock.over():
            for name in streams:
                engine.cancel(name)
            while engine.has_work():
                engine.step()
            return arrivals, t0, False, failures
        outs = engine.step()
        now = time.perf_counter()
        for o in outs:
            if isinstance(o, JobFailed):
                failures.append(f"{o.job.stream}/{o.job.chunk_index}: {o.message}")
            elif isinstance(o, PieceOut):
                arrivals[o.job.stream].append(Arrival(o.job.chunk_index, o.sample_offset, len(o.samples), now, o.final))
    return arrivals, t0, True, failures


def playback(arrivals: list[Arrival], t0: float, prebuffer_ms: float) -> dict[str, Any]:
    """Play one stream's pieces as the service does: a piece is released once every piece before it (chunk,
    then sample order) has come, as the reassembler releases it, and the service's `PlaybackClock` - the one
    the service benches read - counts the underruns."""
    pieces = sorted(arrivals, key=lambda a: (a.chunk, a.offset))
    if not pieces:
        return {"ttfa_s": None, "underruns": None, "audio_s": 0.0}
    clock = PlaybackClock(SR, prebuffer_ms, t_accept=t0)
    released = t0
    for seq, piece in enumerate(pieces):
        released = max(released, piece.t)
        clock.accept(0, seq, piece.samples, released)
    clock.close(released)
    first = clock.first_arrival if pieces[0].chunk == 0 else None
    return {"ttfa_s": None if first is None else first - t0, "underruns": clock.underruns,
            "audio_s": clock.samples / SR, "end_s": released - t0}


def fast_rtf(engine: Any, chunks: list[str], sampling: dict[str, Any], clock: Clock) -> dict[str, Any]:
    arrivals, t0, done, failures = run_streams(engine, {"rtf": chunks}, sampling, clock)
    pieces = arrivals["rtf"]
    wall = (max(a.t for a in pieces) - t0) if pieces else None
    audio_s = sum(a.samples for a in pieces) / SR
    return {"chunks": len(chunks), "finished": done, "wall_s": wall, "audio_s": audio_s,
            "rtf": wall / audio_s if wall and audio_s else None, "failures": failures[:3]}


def concurrency(engine: Any, levels: list[int], chunks: list[str], sampling: dict[str, Any], prebuffer_ms: float,
                level_s: float, clock: Clock) -> list[dict[str, Any]]:
    rows = []
    for n in levels:
        if clock.left() < 1.0:
            rows.append({"streams": n, "skipped": "bench time budget spent"})
            continue
        level = Clock(min(level_s, clock.left()))
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        arrivals, t0, done, failures = run_streams(engine, {f"c{i}": chunks for i in range(n)}, sampling, level)
        wall = time.perf_counter() - t0
        plays = [playback(a, t0, prebuffer_ms) for a in arrivals.values()]
        ttfas = [p["ttfa_s"] for p in plays if p["ttfa_s"] is not None]
        audio_s = sum(p["audio_s"] for p in plays)
        row = {"streams": n, "finished": done, "wall_s": wall, "audio_s": audio_s,
               "aggregate_rtf": wall / audio_s if audio_s else None,
               "ttfa_ms_p50": pct([t * 1000 for t in ttfas], 50), "ttfa_ms_p95": pct([t * 1000 for t in ttfas], 95),
               "underruns": sum(p["underruns"] or 0 for p in plays),
               "streams_with_underruns": sum(1 for p in plays if p["underruns"]),
               "failures": failures[:3]}
        if engine.device.type == "cuda":
            row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(engine.device) / 2**30
        rows.append(row)
        if not done:
            row["timed_out"] = f"level took longer than {level.seconds:.0f} s; higher levels skipped"
            rows.extend({"streams": m, "skipped": "a lower level timed out"} for m in levels[levels.index(n) + 1:])
            break
    return rows


def decode_step_times(engine: Any, batches: list[int], key_len: int, clock: Clock, iters: int = 20) -> list[dict]:
    """Time one batched GPT decode step (graph replay where captured) + sampling, per batch size."""
    rows, runner, dev = [], engine.runner, engine.device
    key_len = min(key_len, engine.settings.max_len)
    for b in batches:
        if b > engine.settings.slots or clock.over():
            continue
        with torch.inference_mode():
            runner.tokens[:b] = 0
            runner.cache_pos[:b] = key_len - 1
            runner.audio_pos[:b] = 1
            rows_idx = torch.arange(b, device=dev)

            def once() -> None:
                logits, _ = runner.run(b, key_len)
                engine.sampler.sample(logits, rows_idx)

            once()
            sync(dev)
            t = time.perf_counter()
            for _ in range(iters):
                once()
            sync(dev)
        rows.append({"batch": b, "key_len": key_len, "step_ms": (time.perf_counter() - t) / iters * 1000,
                     "graphs": runner.use_graphs})
    engine.sampler.seen.zero_()
    return rows


def vocoder_times(engine: Any, widths: list[int], batches: list[int], clock: Clock, iters: int = 5) -> list[dict]:
    rows, voc, dev = [], engine.vocoder, engine.device
    c = engine.decoder.d
    for w in widths:
        for b in batches:
            if clock.over():
                return rows
            z = torch.randn(b, c, w, device=dev, dtype=voc.dtype)
            g = torch.randn(b, 512, 1, device=dev, dtype=voc.dtype) * 0.1
            with torch.inference_mode():
                voc.decoder(z, g=g)
                sync(dev)
                t = time.perf_counter()
                for _ in range(iters):
                    voc.decoder(z, g=g)
                sync(dev)
            ms = (time.perf_counter() - t) / iters * 1000
            rows.append({"frames": w, "batch": b, "ms": ms, "audio_s": b * w * 256 / SR})
    return rows


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# -- stages -----------------------------------------------------------------------------------


def environment(device: str, dtype: str) -> dict[str, Any]:
    from workers.engines.xtts_model import dtype_name, resolve_device, resolve_dtype

    dev = resolve_device(device)
    info = {"device": dev, "torch": torch.__version__, "cuda": torch.version.cuda,
            "dtype": dtype_name(resolve_dtype(dtype, dev)), "device_name": "cpu"}
    if dev.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(dev))
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def free_device(env: dict[str, Any]) -> None:
    if env["device"].startswith("cuda"):
        torch.cuda.empty_cache()


def first_piece_only(engine: Any, text: str, sampling: dict[str, Any], clock: Clock, name: str) -> float | None:
    """Seconds from add to the first piece of a one-chunk stream; the rest is cancelled (TTFA only)."""
    engine.add(fast_job(name, text, 0, sampling))
    t0 = time.perf_counter()
    first = None
    while engine.has_work() and first is None and not clock.over():
        for o in engine.step():
            if isinstance(o, PieceOut) and first is None:
                first = time.perf_counter() - t0
            elif isinstance(o, JobFailed):
                raise RuntimeError(o.message)
    engine.cancel(name)
    while engine.has_work():
        engine.step()
    return first


def ttfa_series(fn: Callable[[int], float | None], n: int, clock: Clock, text: str) -> dict[str, Any]:
    values = []
    for i in range(n):
        if clock.over():
            break
        v = fn(i)
        if v is not None:
            values.append(v)
    return {"text_chars": len(text), **summary_ms(values), "requested": n}


def bench_stock(checkpoint: str, env: dict[str, Any], p: dict[str, Any], sentence: str, chunks: list[str],
                text_of_length: Callable[[int], str], clock: Clock, log: Callable[[str], None]) -> dict[str, Any]:
    from workers.engines.xtts_model import load_xtts

    (model, _), load_s = timed(lambda: load_xtts(checkpoint, device=env["device"], dtype="fp32"))
    runner = StockRunner(model)
    log(f"stock: loaded in {load_s:.1f} s")
    out: dict[str, Any] = {"load_s": load_s, "chunk_size": runner.chunk_size, "dtype": "fp32"}
    runner.stream(sentence)  # warm-up
    n = p["ttfa_requests"]
    share = Clock(clock.left() * 0.3)
    out["ttfa_sentence"] = ttfa_series(lambda i: runner.stream(sentence, first_only=True)[0], n, share, sentence)
    log(f"stock: TTFA p50 {out['ttfa_sentence']['p50_ms']} ms")
    out["rtf_sentence"] = stock_rtf(runner, [sentence], clock)
    out["rtf_paragraph"] = stock_rtf(runner, chunks, Clock(clock.left() * 0.7))
    log(f"stock: RTF sentence {out['rtf_sentence']['rtf']}, paragraph {out['rtf_paragraph']['rtf']}")
    out["ttfa_by_length"] = []
    for length in p["chunk_lengths"]:
        text = text_of_length(length)
        out["ttfa_by_length"].append(ttfa_series(lambda i: runner.stream(text, first_only=True)[0], 3, clock, text))
    if env["device"].startswith("cuda"):
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    del runner, model
    return out


def bench_fast(checkpoint: str, env: dict[str, Any], p: dict[str, Any], sentence: str, chunks: list[str],
               stream_chunks: list[str], text_of_length: Callable[[int], str], prebuffer_ms: float, overrides: dict[str, Any],
               clock: Clock, log: Callable[[str], None]) -> dict[str, Any]:
    from workers.engines.xtts_fast.engine import FastSettings, FastXttsEngine
    from workers.engines.xtts_model import load_xtts, resolve_dtype

    device = torch.device(env["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    (model, _), load_s = timed(lambda: load_xtts(checkpoint, device=env["device"], dtype="fp32"))
    settings = FastSettings.for_device(device, **{**p["fast"], **overrides})
    engine = FastXttsEngine(model, device, resolve_dtype(env["dtype"], env["device"]), settings)
    _, warm_s = timed(engine.warm_up)
    log(f"fast: loaded in {load_s:.1f} s, warm-up {warm_s:.1f} s ({overrides or 'defaults'})")
    sampling = {"temperature": 0.75, "top_k": 50, "top_p": 0.85, "repetition_penalty": 5.0, "speed": 1.0,
                "first_piece_tokens": 4, "piece_tokens": 16}
    out: dict[str, Any] = {"load_s": load_s, "warm_up_s": warm_s, "dtype": engine.info.dtype,
                           "graphs": engine.runner.use_graphs, "graph_error": engine.graph_error,
                           "overlap_vocoder": engine.overlap,
                           "settings": {k: str(v) for k, v in vars(settings).items()}}
    out["decode_step"] = decode_step_times(engine, p["batches"], 256, Clock(min(20.0, clock.left() * 0.1)))
    out["vocoder_piece"] = vocoder_times(engine, [17, 96], p["vocoder_batches"], Clock(min(15.0, clock.left() * 0.1)))
    n = p["ttfa_requests"]
    first_chunk = chunks[0]
    share = Clock(clock.left() * 0.15)
    out["ttfa_sentence"] = ttfa_series(lambda i: first_piece_only(engine, sentence, sampling, share, f"t{i}"),
                                       n, share, sentence)
    out["ttfa_first_chunk"] = ttfa_series(lambda i: first_piece_only(engine, first_chunk, sampling, share, f"f{i}"),
                                          n, share, first_chunk)
    log(f"fast: TTFA p50 {out['ttfa_sentence']['p50_ms']} ms, p95 {out['ttfa_sentence']['p95_ms']} ms")
    out["rtf_sentence"] = fast_rtf(engine, [sentence], sampling, Clock(clock.left() * 0.1))
    out["rtf_paragraph"] = fast_rtf(engine, chunks, sampling, Clock(clock.left() * 0.15))
    log(f"fast: RTF sentence {out['rtf_sentence']['rtf']}, paragraph {out['rtf_paragraph']['rtf']}")
    share = Clock(clock.left() * 0.15)
    out["ttfa_by_length"] = []
    for length in p["chunk_lengths"]:
        text = text_of_length(length)
        out["ttfa_by_length"].append(
            ttfa_series(lambda i: first_piece_only(engine, text, sampling, share, f"L{length}.{i}"), 3, share, text))
    out["concurrency"] = concurrency(engine, p["levels"], stream_chunks, sampling, prebuffer_ms,
                                     p["level_s"], clock)
    for row in out["concurrency"]:
        log(f"fast: {row}")
    if device.type == "cuda":
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    engine.close()
    del engine, model
    return out
