"""`scripts/bench`: chunker, engine, service and soak benchmarks, written to bench/results/.

    scripts/bench --tiny                 # everything small, on the CPU, in a few minutes
    scripts/bench service --checkpoint DIR
    scripts/bench engine                 # stock coqui-tts vs our fast path, same run
    scripts/bench soak                   # 8 clients x 100 requests against Piper
    scripts/bench gateway                # TTFA the HTTP gateway adds over the ZeroMQ path (null engine)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .stats import slug

RESULTS = Path("bench/results")
FORCED = "1.54"  # audio tokens per character, as real XTTS speaks (docs/benchmarks.md)
# The service and soak benches measure the ZeroMQ path, as before the gateway
# existed (and a device machine need not carry the gateway's packages).
NO_HTTP = ["--http", "off"]


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "cpu"


def bench_chunker(args) -> dict[str, Any]:
    from bench.chunker import run
    return run(quick=args.tiny)


def bench_engine(args) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp()) / "engine.json"
    cmd = [sys.executable, "-m", "bench.engine", "--out", str(out)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def bench_service(args) -> dict[str, Any]:
    from bench.datapath import run_datapath_bench
    from bench.service import run_service_bench
    results: dict[str, Any] = {}
    if args.engine in (None, "null"):
        results["null_datapath"] = run_datapath_bench("null", tiny=args.tiny)
    if args.engine in (None, "piper"):
        from bench.service import PARAGRAPH  # 8 streams of 40 s each: enough CPU time to measure
        results["piper_datapath"] = run_datapath_bench("piper", levels=[8], tiny=args.tiny,
                                                       text=PARAGRAPH[:200] if args.tiny else PARAGRAPH)
    if args.engine is None and (args.tiny or not args.checkpoint):
        results["piper"] = run_service_bench(["--engine", "piper", *NO_HTTP], tiny=True)
    if args.engine not in (None, "xtts"):
        return results
    checkpoint = args.checkpoint or (_tiny_checkpoint() if args.tiny else None)
    if checkpoint:
        for path in ("fast", "stock"):  # ours first: a time box that ends early still has it
            try:
                results[f"xtts_{path}"] = run_service_bench(
                    ["--engine", "xtts", "--checkpoint", checkpoint, "--xtts-path", path,
                     "--forced-tokens-per-char", FORCED, *NO_HTTP], tiny=args.tiny, baseline=path == "stock")
            except Exception as exc:
                results[f"xtts_{path}"] = {"failed": f"{type(exc).__name__}: {exc}"[-3000:]}
            # Saved as it goes: an outer time limit must not lose what was measured.
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "service-partial.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def _tiny_checkpoint() -> str:
    from workers.engines.synthetic import make_synthetic_checkpoint
    return str(make_synthetic_checkpoint(Path(tempfile.mkdtemp(prefix="xtts-tiny-")), size="tiny"))


def bench_soak(args) -> dict[str, Any]:
    from bench.service import run_soak
    return run_soak(clients=8, requests=10 if args.tiny else 100, serve_args=("--engine", "piper", *NO_HTTP))


def bench_gateway(args) -> dict[str, Any]:
    from bench.gateway import run_gateway_bench

    # The null engine by default: the gateway's cost does not depend on the engine, and a tone made in no
    # time leaves less of the scheduler's noise in the difference.
    return run_gateway_bench(("--engine", args.engine or "null"), pairs=20 if args.tiny else 60)


BENCHES = {"chunker": bench_chunker, "engine": bench_engine, "service": bench_service, "soak": bench_soak,
           "gateway": bench_gateway}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    # No `choices` here: argparse checks an empty nargs="*" list against them and fails.
    ap.add_argument("which", nargs="*", help=f"any of {', '.join(BENCHES)}, all (default: all)")
    ap.add_argument("--tiny", action="store_true", help="small models and counts, on whatever device is present")
    ap.add_argument("--checkpoint", default=None, help="XTTS checkpoint for the engine and service benches")
    ap.add_argument("--engine", default=None, choices=("null", "piper", "xtts"),
                    help="service bench: only this engine (null: the data path alone, 1 to 1,024 streams); "
                         "gateway bench: the engine behind it (default null)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.which = args.which or ["all"]
    unknown = set(args.which) - {*BENCHES, "all"}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; valid: {', '.join(BENCHES)}, all")
    which = list(BENCHES) if "all" in args.which else args.which
    if "all" in args.which and not args.tiny:
        which.remove("soak")  # long: run it by name
    device = device_name()
    report: dict[str, Any] = {"device": device, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "tiny": args.tiny}
    for name in which:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            report[name] = BENCHES[name](args)
        except Exception as exc:  # keep what the other benches measured
            report[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            print(f"bench: {name} failed: {exc}", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    engine = f"-{args.engine}" if args.engine else ""
    stem = f"{'-'.join(which)}{engine}-{slug(device)}{'-tiny' if args.tiny else ''}-{dt.date.today().isoformat()}"
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    (args.out / "service-partial.json").unlink(missing_ok=True)  # the whole report now holds it
    _plot(report, args.out / f"{stem}.png")
    print(json.dumps(_summary(report), indent=2))
    print(f"bench: wrote {path}", file=sys.stderr)
    return 0


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"device": report["device"]}
    for name, res in report.get("service", {}).items():
        if not isinstance(res, dict) or "ttfa" not in res:
            continue
        out[name] = {"ttfa_ms_p50": res["ttfa"]["ttfa_ms_p50"], "ttfa_ms_p95": res["ttfa"]["ttfa_ms_p95"],
                     "rtf_sentence": res["rtf"]["sentence_39"]["rtf"], "rtf_paragraph": res["rtf"]["paragraph"]["rtf"]}
    if "chunker" in report:
        out["chunker"] = report["chunker"]
    if "added_ttfa_ms_p50" in report.get("gateway", {}):
        out["gateway"] = {k: report["gateway"][k] for k in ("added_ttfa_ms_p50", "added_ttfa_ms_p95",
                                                            "zmq_ttfa_ms_p50", "http_ttfa_ms_p50")}
    if "soak" in report and "completed" in report["soak"]:
        out["soak"] = {k: report["soak"][k] for k in ("completed", "errors", "open_streams_after", "orphans_after_stop")}
    return out


def _plot(report: dict[str, Any], path: Path) -> None:
    service = report.get("service")
    if not service:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib not installed; no plot", file=sys.stderr)
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, res in service.items():
        if not isinstance(res, dict) or "ttfa_by_first_chunk" not in res:
            continue
        rows = [r for r in res["ttfa_by_first_chunk"] if r.get("ttfa_ms") is not None]
        a.plot([r["first_chunk_chars"] for r in rows], [r["ttfa_ms"] for r in rows], marker="o", label=name)
        sweep = [r for r in res["concurrency"] if r.get("ttfa_ms_p95") is not None]
        b.plot([r["streams"] for r in sweep], [r["ttfa_ms_p95"] for r in sweep], marker="o", label=name)
    a.set(xlabel="first chunk (characters)", ylabel="TTFA (ms)", title=f"TTFA vs first chunk — {report['device']}")
    b.set(xlabel="concurrent streams", ylabel="p95 TTFA (ms)", xscale="log", title="Concurrency")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

