"""Streams of a coordinator that died are released by the sink when a new coordinator speaks."""

from __future__ import annotations

import numpy as np
import soundfile

from pipeline.wire.protocol import SinkClose
from test_sink import make_spans, open_msg, pcm_of, sink  # noqa: F401  (the harness fixture)


def test_a_new_coordinators_first_stream_releases_the_dead_ones(sink):  # noqa: F811
    path = sink.dir / "orphan.wav"
    old = make_spans("1f.1", 4, seed=3)
    sink.send(open_msg("1f.1", f"wav:{path}"))
    for span in old[:2]:
        sink.send(span)
    # The coordinator with pid 0x1f died; the one with pid 0x2a opens its first stream.
    sink.send(open_msg("2a.1", f"wav:{sink.dir / 'new.wav'}"))
    for span in old[2:]:
        sink.send(span)  # stragglers of the released stream are dropped
    new = make_spans("2a.1", 3, seed=4)
    for span in new:
        sink.send(span)
    sink.send(SinkClose("2a.1"))
    assert sink.recv_done("2a.1").metrics["error"] == ""
    data, _ = soundfile.read(path, dtype="int16")  # finalised when released, holding what came before
    assert np.array_equal(data, pcm_of(old[:2]))
    data, _ = soundfile.read(sink.dir / "new.wav", dtype="int16")
    assert np.array_equal(data, pcm_of(new))


def test_streams_of_the_same_coordinator_are_left_alone(sink):  # noqa: F811
    sink.send(open_msg("2a.1", f"wav:{sink.dir / 'one.wav'}"))
    sink.send(open_msg("2a.2", f"wav:{sink.dir / 'two.wav'}"))
    for span in make_spans("2a.1", 2, seed=5):
        sink.send(span)
    sink.send(SinkClose("2a.1"))
    assert sink.recv_done("2a.1").metrics["error"] == ""
    sink.send(SinkClose("2a.2"))
    assert sink.recv_done("2a.2").metrics["error"] == ""
