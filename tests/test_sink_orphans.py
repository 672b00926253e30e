"""Streams of a coordinator that died are released by the sink when a new coordinator speaks."""

from __future__ import annotations

import numpy as np
import soundfile

from pipeline.protocol import SinkClose
from test_sink import make_blocks, open_msg, sink  # noqa: F401  (the harness fixture)


def test_a_new_coordinators_first_stream_releases_the_dead_ones(sink):  # noqa: F811
    path = sink.dir / "orphan.wav"
    old = make_blocks("1f.1", 4, seed=3)
    sink.send(open_msg("1f.1", f"wav:{path}"))
    for block in old[:2]:
        sink.send(block)
    # The coordinator with pid 0x1f died; the one with pid 0x2a opens its first stream.
    sink.send(open_msg("2a.1"))
    for block in old[2:]:
        sink.send(block)  # stragglers of the released stream are dropped
    new = make_blocks("2a.1", 3, seed=4)
    for block in new:
        sink.send(block)
    sink.send(SinkClose("2a.1"))
    got, done = sink.recv_until_done("2a.1")
    assert [b.seq for b in got] == [0, 1, 2] and done.metrics["error"] == ""
    data, _ = soundfile.read(path, dtype="int16")  # finalised when released, holding what came before
    assert np.array_equal(data, np.frombuffer(b"".join(b.pcm for b in old[:2]), dtype=np.int16))


def test_streams_of_the_same_coordinator_are_left_alone(sink):  # noqa: F811
    sink.send(open_msg("2a.1"))
    sink.send(open_msg("2a.2"))
    for block in make_blocks("2a.1", 2, seed=5):
        sink.send(block)
    sink.send(SinkClose("2a.1"))
    got, done = sink.recv_until_done("2a.1")
    assert len(got) == 2 and done.metrics["error"] == ""
