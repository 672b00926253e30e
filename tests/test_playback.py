"""The virtual playback clock's maths, from hand-made arrival times."""

from __future__ import annotations

import pytest

from pipeline.playback import PlaybackClock

RATE = 1000  # 1 sample per ms keeps the expected numbers readable
T0 = 100.0   # t_accept


def run_clock(prebuffer_ms: int, blocks: list[tuple[int, float]], close_at: float | None,
              t_accept: float = T0) -> dict:
    """blocks: (sample_count, arrival seconds after T0); seq counts from 0 in epoch 0."""
    clock = PlaybackClock(RATE, prebuffer_ms, t_accept)
    for seq, (count, at) in enumerate(blocks):
        assert clock.accept(0, seq, count, T0 + at)
    if close_at is not None:
        clock.close(T0 + close_at)
    return clock.metrics()


# (name, prebuffer_ms, blocks, close_at, expected subset of metrics)
CASES = [
    ("starts when the prebuffer is full", 200,
     [(100, 0.10), (100, 0.15), (100, 0.20)], 0.21,
     dict(played_ttfa_ms=150.0, first_block_ms=100.0, underruns=0, underrun_ms=0.0, blocks=3,
          audio_s=0.3, playback_end_ms=450.0)),
    ("a block exactly on time is not an underrun", 100,
     [(100, 0.10), (100, 0.20), (100, 0.30)], 0.31,
     dict(played_ttfa_ms=100.0, underruns=0, underrun_ms=0.0, playback_end_ms=400.0)),
    ("late blocks stall and playback resumes at once", 100,
     [(100, 0.10), (100, 0.30), (100, 0.40), (100, 0.55)], 0.6,
     dict(played_ttfa_ms=100.0, underruns=2, underrun_ms=150.0, playback_end_ms=650.0)),
    ("lateness before playback starts is not an underrun", 300,
     [(100, 0.10), (100, 0.90), (100, 2.00), (100, 2.05)], 2.1,
     dict(played_ttfa_ms=2000.0, underruns=0, underrun_ms=0.0)),
    ("a stream shorter than the prebuffer starts at close", 500,
     [(100, 0.10), (100, 0.20)], 0.25,
     dict(played_ttfa_ms=250.0, underruns=0, audio_s=0.2, playback_end_ms=450.0)),
    ("zero prebuffer starts with the first block", 0,
     [(50, 0.04), (50, 0.06)], 0.07,
     dict(played_ttfa_ms=40.0, underruns=0, playback_end_ms=140.0)),
    ("a prebuffer not a whole number of blocks waits for the block that completes it", 250,
     [(100, 0.10), (100, 0.11), (100, 0.12), (100, 0.40)], 0.6,
     dict(played_ttfa_ms=120.0, underruns=0, playback_end_ms=520.0)),
    ("an underrun after a stall is measured from the new anchor", 100,
     [(100, 0.10), (100, 0.50), (100, 0.70)], 0.8,
     dict(underruns=2, underrun_ms=400.0, playback_end_ms=800.0)),
    ("no audio at all", 200, [], 0.3,
     dict(played_ttfa_ms=None, first_block_ms=None, playback_end_ms=None, blocks=0, audio_s=0.0)),
    ("zero-length blocks neither start playback nor underrun", 0,
     [(0, 0.05), (100, 0.10), (0, 0.90), (100, 0.95)], 1.0,
     dict(played_ttfa_ms=100.0, underruns=1, underrun_ms=750.0, blocks=4)),
]


@pytest.mark.parametrize("name,prebuffer_ms,blocks,close_at,expected", CASES, ids=[c[0] for c in CASES])
def test_clock(name, prebuffer_ms, blocks, close_at, expected):
    metrics = run_clock(prebuffer_ms, blocks, close_at)
    got = {k: metrics[k] for k in expected}
    assert got == pytest.approx(expected)


def test_same_arrivals_give_the_same_metrics():
    blocks = [(120, 0.1 + 0.013 * i * i) for i in range(12)]
    assert run_clock(200, blocks, 3.0) == run_clock(200, blocks, 3.0)


def test_without_t_accept_times_are_unknown_but_counts_are_kept():
    metrics = run_clock(100, [(100, 0.1), (100, 0.5)], 0.6, t_accept=0.0)
    assert metrics["played_ttfa_ms"] is None and metrics["playback_end_ms"] is None
    assert metrics["underruns"] == 1 and metrics["underrun_ms"] == pytest.approx(300.0)


# (name, [(epoch, seq)], accepted flags, order violations, seq gaps)
ORDER_CASES = [
    ("in order", [(0, 0), (0, 1), (0, 2)], [True, True, True], 0, 0),
    ("duplicate dropped", [(0, 0), (0, 1), (0, 1), (0, 2)], [True, True, False, True], 1, 0),
    ("going back dropped", [(0, 0), (0, 1), (0, 2), (0, 0)], [True, True, True, False], 1, 0),
    ("a skipped seq is a gap, kept", [(0, 0), (0, 2), (0, 3)], [True, True, True], 0, 1),
    ("a newer epoch continues", [(0, 0), (0, 1), (1, 2)], [True, True, True], 0, 0),
    ("an older epoch after a newer one is dropped", [(0, 0), (1, 1), (0, 2)], [True, True, False], 1, 0),
]


@pytest.mark.parametrize("name,keys,accepted,violations,gaps", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_order_checks(name, keys, accepted, violations, gaps):
    clock = PlaybackClock(RATE, 0, T0)
    got = [clock.accept(epoch, seq, 10, T0 + 0.01 * i) for i, (epoch, seq) in enumerate(keys)]
    assert got == accepted
    metrics = clock.metrics()
    assert metrics["order_violations"] == violations
    assert metrics["seq_gaps"] == gaps
    assert metrics["blocks"] == sum(accepted)
    assert metrics["audio_s"] == pytest.approx(sum(accepted) * 10 / RATE)


def test_dropped_blocks_do_not_move_the_clock():
    clock = PlaybackClock(RATE, 100, T0)
    clock.accept(0, 0, 100, T0 + 0.1)
    assert not clock.accept(0, 0, 100, T0 + 0.15)
    clock.accept(0, 1, 100, T0 + 0.3)
    metrics = clock.metrics()
    assert metrics["underruns"] == 1 and metrics["underrun_ms"] == pytest.approx(100.0)


@pytest.mark.parametrize("rate,prebuffer", [(0, 100), (-8000, 100), (24000, -1)])
def test_bad_parameters_are_refused(rate, prebuffer):
    with pytest.raises(ValueError):
        PlaybackClock(rate, prebuffer, T0)
