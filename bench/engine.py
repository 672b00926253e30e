"""Engine benchmark: stock coqui-tts streaming vs the fast path, in the same run, same checkpoint.

    python -m bench.engine --tiny              # CPU, tiny checkpoint, about a minute
    python -m bench.engine                     # full-size synthetic checkpoint, built on the fly
    python -m bench.engine --checkpoint DIR --out bench/results/engine.json

Measured at the engine seam (job added -> first piece out), lengths forced to
~1.54 audio tokens per character: TTFA p50/p95, RTF of a 39-char sentence and a
~600-char paragraph (chunked as the service chunks it), a concurrency sweep
(aggregate RTF, p95 TTFA, underruns at a 200 ms pre-buffer counted by the
service's own PlaybackClock, pieces released in order as the reassembler does), TTFA against first-chunk length, GPT decode step time per batch,
vocoder piece time and peak GPU memory. Every stage has a time budget; a stage
that runs out stops early and says so, so the whole run stays within --budget-s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from pipeline.text.chunker import split_text

from .stats import slug

SENTENCE = "The otherworldly light spilled over us."  # 39 characters
PARAGRAPH = (
    "The otherworldly light spilled over us, cold and silver, and for a moment nobody spoke. Then the old woman "
    "raised her lantern and whispered: do you see it? Far below the ridge, where the river bent around the ruined "
    "mill, something moved between the trees. It was too large to be a deer and too quiet to be a bear. My brother "
    "reached for the rope, but his hands were shaking so badly that he dropped it twice. We waited, listening to "
    "the wind and to our own breathing, until the shape stepped into the open and looked straight up at us. Its "
    "eyes caught the lantern light like two small coins."
)  # 592 characters
STREAM_TEXT = PARAGRAPH[:156]  # what each stream of the concurrency sweep speaks: two sentences
PREBUFFER_MS = 200.0


def plan(tiny: bool) -> dict[str, Any]:
    if tiny:
        # Short texts: a stock chunk that starts before its budget runs out is not cut off.
        return {"size": "tiny", "budget_s": 60, "stock_share": 0.35, "ttfa_requests": 3, "levels": [1, 2],
                "chunk_lengths": [10, 40], "paragraph": PARAGRAPH[:87], "level_s": 15, "batches": [1, 2, 4],
                "vocoder_batches": [1], "fast": {"slots": 8, "max_len": 512}}
    return {"size": "full", "budget_s": 300, "stock_share": 0.25, "ttfa_requests": 20,
            "levels": [1, 4, 16, 64, 128, 256], "chunk_lengths": [10, 20, 40, 80, 120, 160, 200, 250],
            "paragraph": PARAGRAPH, "level_s": 40, "batches": [1, 2, 4, 8, 16, 32, 64, 128, 256],
            "vocoder_batches": [1, 16], "fast": {}}


def chunks_of(text: str) -> list[str]:
    """The text cut as the service cuts it under the FAST profile."""
    return [c.text for c in split_text(text, "fast")]


def text_of_length(n: int) -> str:
    words = (PARAGRAPH + " ") * 2
    cut = words[:n].rstrip()
    return cut if len(cut) == n else (cut + "a" * n)[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_engine", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoint on the CPU, about a minute")
    ap.add_argument("--checkpoint", default=None, help="XTTS checkpoint dir (default: build a synthetic one)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/engine-<device>-<date>.json)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="fast path dtype: auto (fp16 on CUDA) | fp16 | bf16 | fp32")
    ap.add_argument("--budget-s", type=float, default=None, help="total time budget after the checkpoint is ready")
    ap.add_argument("--skip-stock", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a FastSettings field for the fast path, e.g. max_prefills_per_step=128 (repeatable)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: 1 with --tiny, which is ~10x faster on a busy 2-core box)")
    args = ap.parse_args(argv)
    p = plan(args.tiny)
    if args.budget_s:
        p["budget_s"] = args.budget_s

    from bench import engine_runs as br

    threads = args.threads or (1 if args.tiny else None)
    if threads:
        br.set_threads(threads)
    env = br.environment(args.device, args.dtype if not args.tiny else ("fp32" if args.dtype == "auto" else args.dtype))
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "python": platform.python_version(), **env, "mode": p["size"], "plan": p,
                              "stages_s": {}, "errors": []}
    log = lambda msg: print(f"bench_engine: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{env['device_name']} torch {env['torch']} dtype {env['dtype']}")

    checkpoint = args.checkpoint
    if checkpoint is None:
        from workers.engines.synthetic import make_synthetic_checkpoint
        t = time.perf_counter()
        checkpoint = str(make_synthetic_checkpoint(Path(tempfile.mkdtemp(prefix="xtts-bench-")), size=p["size"]))
        report["stages_s"]["build_checkpoint"] = time.perf_counter() - t
        log(f"built {p['size']} synthetic checkpoint in {report['stages_s']['build_checkpoint']:.1f} s")
    report["checkpoint"] = checkpoint
    budget = br.Clock(p["budget_s"])
    chunks = chunks_of(p["paragraph"])
    report["paragraph"] = {"chars": len(p["paragraph"]), "chunks": [len(c) for c in chunks]}

    if not args.skip_stock:
        stage = br.Clock(p["budget_s"] * p["stock_share"])
        try:
            report["stock"] = br.bench_stock(checkpoint, env, p, SENTENCE, chunks, text_of_length, stage, log)
        except Exception as exc:  # the fast path's numbers are still worth having
            report["errors"].append({"stage": "stock", "error": repr(exc), "trace": traceback.format_exc()[-2000:]})
            log(f"stock stage failed: {exc!r}")
        report["stages_s"]["stock"] = time.perf_counter() - stage.start
        gc.collect()
        br.free_device(env)

    fast_args = (checkpoint, env, p, SENTENCE, chunks, chunks_of(STREAM_TEXT), text_of_length, PREBUFFER_MS)
    t = time.perf_counter()
    chosen = {k: int(v) if v.isdigit() else v for k, _, v in (s.partition("=") for s in args.set)}
    for attempt, fallback in enumerate(({}, {"use_graphs": False, "overlap_vocoder": False})):
        overrides = {**chosen, **fallback}
        stage = br.Clock(max(30.0, budget.left()))
        try:
            report["fast"] = br.bench_fast(*fast_args, overrides=overrides, clock=stage, log=log)
            break
        except Exception as exc:
            report["errors"].append({"stage": f"fast attempt {attempt}", "overrides": overrides, "error": repr(exc),
                                     "trace": traceback.format_exc()[-3000:]})
            log(f"fast stage failed ({overrides or 'defaults'}): {exc!r}")
            gc.collect()
            br.free_device(env)
    report["stages_s"]["fast"] = time.perf_counter() - t
    report["comparison"] = compare(report)

    out = args.out or Path("bench/results") / f"engine-{slug(env['device_name'])}-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    plot(report, out.with_suffix(".png"), log)
    log(f"wrote {out}")
    print(json.dumps(report["comparison"], indent=2))
    return 0 if "fast" in report else 1


def compare(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers against the fast path's targets (docs/benchmarks.md)."""
    fast, stock = report.get("fast", {}), report.get("stock", {})
    f_ttfa = (fast.get("ttfa_sentence") or {}).get("p50_ms")
    s_ttfa = (stock.get("ttfa_sentence") or {}).get("p50_ms")
    f_rtf = (fast.get("rtf_sentence") or {}).get("rtf")
    s_rtf = (stock.get("rtf_sentence") or {}).get("rtf")
    sweep = {r["streams"]: r for r in fast.get("concurrency", []) if "skipped" not in r}
    row128 = sweep.get(128, {})
    return {
        "device": report.get("device_name"), "dtype": report.get("dtype"),
        "fast_ttfa_ms_p50": f_ttfa, "fast_ttfa_ms_p95": (fast.get("ttfa_sentence") or {}).get("p95_ms"),
        "fast_ttfa_first_chunk_ms_p50": (fast.get("ttfa_first_chunk") or {}).get("p50_ms"),
        "stock_ttfa_ms_p50": s_ttfa, "ttfa_speedup": s_ttfa / f_ttfa if f_ttfa and s_ttfa else None,
        "fast_rtf_sentence": f_rtf, "stock_rtf_sentence": s_rtf,
        "rtf_speedup": s_rtf / f_rtf if f_rtf and s_rtf else None,
        "fast_rtf_paragraph": (fast.get("rtf_paragraph") or {}).get("rtf"),
        "stock_rtf_paragraph": (stock.get("rtf_paragraph") or {}).get("rtf"),
        "streams_128": {k: row128.get(k) for k in ("aggregate_rtf", "ttfa_ms_p95", "underruns", "finished")},
        "targets": {"ttfa_ms_p50": 30, "ttfa_ms_p95": 60, "rtf": 0.03, "streams_realtime": 128, "speedup": 8},
    }


def plot(report: dict[str, Any], path: Path, log) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed; no plot")
        return
    fast, stock = report.get("fast", {}), report.get("stock", {})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, res in (("stock", stock), ("fast", fast)):
        rows = [r for r in res.get("ttfa_by_length", []) if r.get("p50_ms") is not None]
        axes[0].plot([r["text_chars"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=name)
    sweep = [r for r in fast.get("concurrency", []) if r.get("ttfa_ms_p95") is not None]
    axes[1].plot([r["streams"] for r in sweep], [r["ttfa_ms_p95"] for r in sweep], marker="o", label="p95 TTFA (ms)")
    ax2 = axes[1].twinx()
    ax2.plot([r["streams"] for r in sweep], [r["aggregate_rtf"] for r in sweep], marker="s", color="C1",
             label="aggregate RTF")
    steps = fast.get("decode_step", [])
    axes[2].plot([r["batch"] for r in steps], [r["step_ms"] for r in steps], marker="o")
    axes[0].set(xlabel="first chunk (characters)", ylabel="TTFA p50 (ms)", yscale="log",
                title=f"TTFA vs first chunk - {report.get('device_name')}")
    axes[1].set(xlabel="concurrent streams", ylabel="p95 TTFA (ms)", xscale="log", title="Concurrency (fast)")
    ax2.set_ylabel("aggregate RTF")
    axes[2].set(xlabel="batch", ylabel="ms", xscale="log", title=f"GPT decode step ({report.get('dtype')})")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
