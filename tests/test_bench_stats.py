"""The benches' shared rules: one percentile, and the engine bench's underruns counted by the service's clock."""

from __future__ import annotations

from bench.engine_runs import SR, Arrival, playback
from bench.stats import pct, slug, summary_ms


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert pct(values, 0) == 1.0
    assert pct(values, 50) == 3.0
    assert pct(values, 100) == 5.0
    assert pct(list(range(1001)), 99.9) == 999
    assert pct([], 50) is None


def test_summary_is_in_milliseconds() -> None:
    assert summary_ms([0.001, 0.003, 0.002]) == {"n": 3, "p50_ms": 2.0, "p95_ms": 3.0, "mean_ms": 2.0}


def test_slug_names_a_device() -> None:
    assert slug("NVIDIA H200") == "nvidia-h200"


def _piece(chunk: int, offset: int, seconds: float, t: float) -> Arrival:
    return Arrival(chunk=chunk, offset=offset, samples=round(seconds * SR), t=t, final=False)


def test_engine_playback_releases_in_order_like_the_reassembler() -> None:
    # Chunk 1 comes before chunk 0 has finished: it waits, and is not counted late or early.
    arrivals = [_piece(0, 0, 0.2, 1.0), _piece(1, 0, 0.5, 1.05), _piece(0, 4800, 0.3, 1.1)]
    out = playback(arrivals, t0=0.9, prebuffer_ms=200)
    assert out["underruns"] == 0
    assert abs(out["ttfa_s"] - 0.1) < 1e-9
    assert abs(out["audio_s"] - 1.0) < 1e-9


def test_engine_playback_counts_an_underrun_as_the_service_does() -> None:
    # 0.2 s pre-buffered at t=1.0 plays out at 1.2; the next piece at 1.5 is late.
    arrivals = [_piece(0, 0, 0.2, 1.0), _piece(0, 4800, 0.2, 1.5), _piece(0, 9600, 0.2, 1.6)]
    out = playback(arrivals, t0=1.0, prebuffer_ms=200)
    assert out["underruns"] == 1
    assert out["ttfa_s"] == 0.0


def test_engine_playback_of_a_stream_shorter_than_the_prebuffer() -> None:
    out = playback([_piece(0, 0, 0.05, 2.0)], t0=1.0, prebuffer_ms=200)
    assert out["underruns"] == 0 and out["ttfa_s"] == 1.0
    assert playback([], t0=0.0, prebuffer_ms=200)["underruns"] is None
