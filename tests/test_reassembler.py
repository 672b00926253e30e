"""The reassembler: order, re-cutting into blocks, and every seam violation counted, never played."""

import numpy as np
import pytest

from pipeline.protocol import AudioPiece
from pipeline.reassembler import Reassembler

TEXT = "Hello there, friend. How are you?"
SPANS = [(0, 12), (13, 20), (21, 33)]


def piece(chunk, index, offset, samples, final=False, epoch=0):
    pcm = np.asarray(samples, "<i2").tobytes()
    return AudioPiece(stream="s", epoch=epoch, chunk_index=chunk, piece_index=index, sample_offset=offset,
                      sample_count=len(pcm) // 2, sample_rate=8, final=final, pcm=pcm)


def registered(block=4):
    r = Reassembler("s", block)
    for i, (a, b) in enumerate(SPANS):
        r.register_chunk(i, a, b, TEXT)
    return r


def audio(blocks):
    return [int(x) for b in blocks for x in np.frombuffer(b.pcm, "<i2")]


def test_in_order_pieces_become_fixed_blocks_with_offsets():
    r = registered()
    out = r.add_piece(piece(0, 0, 0, [1, 2, 3]))
    out += r.add_piece(piece(0, 1, 3, [4, 5], final=True))
    out += r.add_piece(piece(1, 0, 0, [6, 7, 8], final=True))
    out += r.add_piece(piece(2, 0, 0, [9], final=True))
    assert [b.sample_count for b in out] == [4, 4]
    assert [b.sample_offset for b in out] == [0, 4]
    assert [b.seq for b in out] == [0, 1]
    tail = r.finish()
    assert audio(out + tail) == list(range(1, 10))
    assert tail[0].sample_offset == 8 and tail[0].seq == 2
    assert r.complete and r.seam_violations == 0


def test_out_of_order_chunks_and_pieces_are_held_until_their_turn():
    r = registered(block=2)
    assert r.add_piece(piece(2, 0, 0, [9], final=True)) == []
    assert r.add_piece(piece(1, 1, 1, [7], final=True)) == []
    assert r.add_piece(piece(1, 0, 0, [6])) == []
    out = r.add_piece(piece(0, 0, 0, [1, 2], final=True))
    assert audio(out + r.finish()) == [1, 2, 6, 7, 9]
    assert r.seam_violations == 0


def test_duplicate_piece_is_dropped_and_counted():
    r = registered(block=100)
    r.add_piece(piece(0, 0, 0, [1, 2]))
    r.add_piece(piece(0, 0, 0, [1, 2]))
    r.add_piece(piece(0, 1, 2, [3], final=True))
    r.add_piece(piece(0, 1, 2, [3], final=True))  # after final
    r.add_piece(piece(0, 0, 0, [1, 2]))          # replay of the whole chunk
    assert r.violations["duplicate"] == 3
    for c in (1, 2):
        r.add_piece(piece(c, 0, 0, [0], final=True))
    assert audio(r.finish()) == [1, 2, 3, 0, 0]


def test_overlapping_piece_has_its_repeated_samples_dropped():
    r = registered(block=100)
    r.add_piece(piece(0, 0, 0, [1, 2, 3]))
    r.add_piece(piece(0, 1, 2, [3, 4], final=True))  # starts one sample early
    for c in (1, 2):
        r.add_piece(piece(c, 0, 0, [], final=True))
    assert audio(r.finish()) == [1, 2, 3, 4]
    assert r.violations["overlap"] == 1


def test_gap_is_counted_not_hidden():
    r = registered(block=100)
    r.add_piece(piece(0, 0, 0, [1]))
    r.add_piece(piece(0, 1, 5, [2], final=True))
    assert r.violations["gap"] == 1


def test_old_epoch_pieces_are_dropped_after_cancel():
    r = registered(block=2)
    r.add_piece(piece(0, 0, 0, [1]))  # held: not a whole block yet
    r.cancel(1)
    assert r.add_piece(piece(0, 1, 1, [2, 3], final=True, epoch=0)) == []
    assert r.violations["old_epoch"] == 1
    assert r.finish() == []  # the held sample is gone too: no audio after a cancel


@pytest.mark.parametrize("spans, kind", [
    ([(0, 12), (10, 20)], "span_overlap"),
    ([(0, 5), (13, 20)], "span_gap"),
])
def test_text_spans_must_be_disjoint_and_leave_nothing_out(spans, kind):
    r = Reassembler("s", 4)
    for i, (a, b) in enumerate(spans):
        r.register_chunk(i, a, b, TEXT)
    assert r.violations[kind] == 1


def test_whitespace_and_punctuation_between_spans_is_no_gap():
    r = Reassembler("s", 4)
    r.register_chunk(0, 0, 5, "Hello ... there")
    r.register_chunk(1, 10, 15, "Hello ... there")
    assert r.seam_violations == 0


def test_unknown_chunk_and_failed_chunk_are_recorded():
    r = registered(block=100)
    r.add_piece(piece(7, 0, 0, [1], final=True))
    assert r.violations["unknown_chunk"] == 1
    r.chunk_failed(0)
    r.add_piece(piece(1, 0, 0, [5], final=True))
    r.add_piece(piece(2, 0, 0, [6], final=True))
    assert audio(r.finish()) == [5, 6]
    assert r.violations["incomplete"] == 1 and r.complete


def test_restart_chunk_only_while_nothing_of_it_was_released():
    r = registered(block=100)
    r.add_piece(piece(1, 0, 0, [5]))  # held behind chunk 0
    assert r.restart_chunk(1)
    r.add_piece(piece(0, 0, 0, [1]))  # released
    assert not r.restart_chunk(0)
    r.add_piece(piece(1, 0, 0, [6], final=True))  # the new synthesis of chunk 1
    r.add_piece(piece(0, 1, 1, [2], final=True))
    r.add_piece(piece(2, 0, 0, [3], final=True))
    assert audio(r.finish()) == [1, 2, 6, 3]
    assert r.seam_violations == 0


def test_finish_records_chunks_that_never_completed():
    r = registered()
    r.add_piece(piece(0, 0, 0, [1], final=True))
    r.finish()
    assert r.violations["incomplete"] == 2
