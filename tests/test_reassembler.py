"""The reassembler: order, contiguous spans, and every seam violation counted, never played."""

import numpy as np
import pytest

from pipeline.coordinator.reassembler import Reassembler
from pipeline.wire.protocol import AudioPiece

TEXT = "Hello there, friend. How are you?"
SPANS = [(0, 12), (13, 20), (21, 33)]


def piece(chunk, index, offset, samples, final=False, epoch=0):
    pcm = np.asarray(samples, "<i2").tobytes()
    return AudioPiece(stream="s", epoch=epoch, chunk_index=chunk, piece_index=index, sample_offset=offset,
                      sample_count=len(pcm) // 2, sample_rate=8, final=final, pcm=pcm)


def registered():
    r = Reassembler("s")
    for i, (a, b) in enumerate(SPANS):
        r.register_chunk(i, a, b, TEXT)
    return r


def audio(spans):
    return [int(x) for s in spans for x in np.frombuffer(bytes(s.pcm), "<i2")]


def assert_contiguous(spans):
    offset = 0
    for span in spans:
        assert span.sample_offset == offset
        offset += span.sample_count


def test_in_order_pieces_are_released_as_contiguous_spans_without_copies():
    r = registered()
    first = piece(0, 0, 0, [1, 2, 3])
    out = r.add_piece(first)
    out += r.add_piece(piece(0, 1, 3, [4, 5], final=True))
    out += r.add_piece(piece(1, 0, 0, [6, 7, 8], final=True))
    out += r.add_piece(piece(2, 0, 0, [9], final=True))
    assert audio(out) == list(range(1, 10))
    assert_contiguous(out)
    assert out[0].pcm is first.pcm, "a released piece's PCM is handed on, not copied"
    assert [s.chunk_start for s in out] == [0, None, 1, 2]
    assert r.complete and r.seam_violations == 0 and r.samples_released == 9


def test_out_of_order_chunks_and_pieces_are_held_until_their_turn():
    r = registered()
    assert r.add_piece(piece(2, 0, 0, [9], final=True)) == []
    assert r.add_piece(piece(1, 1, 1, [7], final=True)) == []
    assert r.add_piece(piece(1, 0, 0, [6])) == []
    out = r.add_piece(piece(0, 0, 0, [1, 2], final=True))
    assert audio(out) == [1, 2, 6, 7, 9]
    assert_contiguous(out)
    assert r.seam_violations == 0 and r.complete


def test_duplicate_piece_is_dropped_and_counted():
    r = registered()
    out = r.add_piece(piece(0, 0, 0, [1, 2]))
    out += r.add_piece(piece(0, 0, 0, [1, 2]))
    out += r.add_piece(piece(0, 1, 2, [3], final=True))
    out += r.add_piece(piece(0, 1, 2, [3], final=True))  # after final
    out += r.add_piece(piece(0, 0, 0, [1, 2]))          # replay of the whole chunk
    assert r.violations["duplicate"] == 3
    for c in (1, 2):
        out += r.add_piece(piece(c, 0, 0, [0], final=True))
    assert audio(out) == [1, 2, 3, 0, 0]


def test_overlapping_piece_has_its_repeated_samples_dropped():
    r = registered()
    out = r.add_piece(piece(0, 0, 0, [1, 2, 3]))
    out += r.add_piece(piece(0, 1, 2, [3, 4], final=True))  # starts one sample early
    for c in (1, 2):
        out += r.add_piece(piece(c, 0, 0, [], final=True))
    assert audio(out) == [1, 2, 3, 4]
    assert_contiguous(out)
    assert r.violations["overlap"] == 1


def test_gap_is_counted_not_hidden():
    r = registered()
    r.add_piece(piece(0, 0, 0, [1]))
    r.add_piece(piece(0, 1, 5, [2], final=True))
    assert r.violations["gap"] == 1


def test_old_epoch_pieces_are_dropped_after_cancel():
    r = registered()
    r.add_piece(piece(1, 0, 0, [1]))  # held behind chunk 0
    r.cancel(1)
    assert r.add_piece(piece(0, 0, 0, [2, 3], final=True, epoch=0)) == []
    assert r.violations["old_epoch"] == 1
    assert r.samples_released == 0


@pytest.mark.parametrize("spans, kind", [
    ([(0, 12), (10, 20)], "span_overlap"),
    ([(0, 5), (13, 20)], "span_gap"),
    ([(0, 5)], None),
])
def test_text_spans_must_be_disjoint_and_leave_nothing_out(spans, kind):
    r = Reassembler("s")
    for i, (a, b) in enumerate(spans):
        r.register_chunk(i, a, b, TEXT)
    assert r.violations[kind] == 1 if kind else r.seam_violations == 0


def test_whitespace_and_punctuation_between_spans_is_no_gap():
    r = Reassembler("s")
    r.register_chunk(0, 0, 5, "Hello ... there")
    r.register_chunk(1, 10, 15, "Hello ... there")
    assert r.seam_violations == 0 and r.covered_to == 15


def test_unknown_chunk_and_failed_chunk_are_recorded():
    r = registered()
    r.add_piece(piece(7, 0, 0, [1], final=True))
    assert r.violations["unknown_chunk"] == 1
    out = r.chunk_failed(0)
    out += r.add_piece(piece(1, 0, 0, [5], final=True))
    out += r.add_piece(piece(2, 0, 0, [6], final=True))
    assert audio(out) == [5, 6]
    assert r.violations["incomplete"] == 1 and r.complete


def test_restart_chunk_only_while_nothing_of_it_was_released():
    r = registered()
    out = r.add_piece(piece(1, 0, 0, [5]))  # held behind chunk 0
    assert r.restart_chunk(1)
    out += r.add_piece(piece(0, 0, 0, [1]))  # released
    assert not r.restart_chunk(0)
    out += r.add_piece(piece(1, 0, 0, [6], final=True))  # the new synthesis of chunk 1
    out += r.add_piece(piece(0, 1, 1, [2], final=True))
    out += r.add_piece(piece(2, 0, 0, [3], final=True))
    assert audio(out) == [1, 2, 6, 3]
    assert r.seam_violations == 0


def test_finish_records_chunks_that_never_completed():
    r = registered()
    r.add_piece(piece(0, 0, 0, [1], final=True))
    r.finish()
    assert r.violations["incomplete"] == 2
