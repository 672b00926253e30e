"""The ordered reassembler: one per stream, between the workers and the listener.

Workers may finish chunks out of order and may (through a bug, a retry or a
restart) send a piece twice. The reassembler releases audio strictly in chunk
order and piece order, proves each piece starts exactly where the previous one
ended, proves consecutive chunks' text spans are disjoint and leave no speakable
text out, and hands the released audio on as spans (one per piece, never copied:
a span's PCM is the worker's frame). Every violation is logged with stream,
chunk and offsets and counted: audio is never played twice and never skipped
without a record.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.wire.protocol import BYTES_PER_SAMPLE, AudioPiece

log = logging.getLogger("xtts_stream.reassembler")

VIOLATIONS = ("overlap", "gap", "duplicate", "old_epoch", "unknown_chunk",
              "span_overlap", "span_gap", "span_order", "incomplete")


@dataclass(slots=True)
class Span:
    """Contiguous released audio: it starts at ``sample_offset`` in the stream."""

    sample_offset: int
    pcm: Any  # bytes-like s16le
    chunk_start: int | None = None  # the chunk whose first audio begins this span, if any

    @property
    def sample_count(self) -> int:
        return len(self.pcm) // BYTES_PER_SAMPLE


@dataclass
class _Chunk:
    index: int
    start: int
    end: int
    pieces: dict[int, AudioPiece] = field(default_factory=dict)
    next_piece: int = 0
    samples_out: int = 0  # of this chunk, released so far
    final: bool = False
    failed: bool = False
    heard: bool = False  # some of its audio was released


class Reassembler:
    def __init__(self, stream: str, epoch: int = 0):
        self.stream = stream
        self.epoch = epoch
        self.violations: Counter[str] = Counter()
        self.samples_released = 0
        self._chunks: dict[int, _Chunk] = {}
        self._next_chunk = 0
        self._last_span_end = 0

    # -- text spans ----------------------------------------------------------

    def register_chunk(self, index: int, start: int, end: int, source: Any) -> None:
        """Record a dispatched chunk's span; ``source[a:b]`` gives the stream's text between offsets."""
        prior = max(self._chunks, default=-1)
        if index != prior + 1:
            self._violate("span_order", index, f"chunk index {index} after {prior}")
        elif start < self._last_span_end:
            self._violate("span_overlap", index, f"span [{start}, {end}) starts before previous end {self._last_span_end}")
        elif any(ch.isalnum() for ch in source[self._last_span_end:start]):
            self._violate("span_gap", index, f"text [{self._last_span_end}, {start}) belongs to no chunk")
        self._last_span_end = max(self._last_span_end, end)
        self._chunks[index] = _Chunk(index, start, end)

    @property
    def covered_to(self) -> int:
        """Text before this offset is in a registered chunk's span or between spans: never needed again."""
        return self._last_span_end

    # -- audio ---------------------------------------------------------------

    def add_piece(self, piece: AudioPiece) -> list[Span]:
        if piece.epoch != self.epoch:
            self._violate("old_epoch", piece.chunk_index, f"piece {piece.piece_index} of epoch {piece.epoch}, current {self.epoch}",
                          level=logging.DEBUG)
            return []
        chunk = self._chunks.get(piece.chunk_index)
        if chunk is None:
            self._violate("unknown_chunk", piece.chunk_index, f"piece {piece.piece_index} for an unregistered chunk")
            return []
        if piece.piece_index < chunk.next_piece or piece.piece_index in chunk.pieces or chunk.final:
            self._violate("duplicate", chunk.index, f"piece {piece.piece_index} at offset {piece.sample_offset} again")
            return []
        chunk.pieces[piece.piece_index] = piece
        return self._release()

    def chunk_failed(self, index: int) -> list[Span]:
        """A chunk the worker gave up on: skip it, on the record."""
        chunk = self._chunks.get(index)
        if chunk is None or chunk.final:
            return []
        chunk.failed = chunk.final = True
        chunk.pieces.clear()
        self._violate("incomplete", index, "chunk failed; its text is not spoken")
        return self._release()

    def restart_chunk(self, index: int) -> bool:
        """Forget a chunk's unreleased pieces before it is synthesized again.

        Only possible while none of its audio was released: a new synthesis
        differs, so splicing it after released audio would repeat or skip words.
        """
        chunk = self._chunks.get(index)
        if chunk is None or chunk.final:
            return chunk is not None
        if chunk.samples_out > 0 or chunk.next_piece > 0:
            return False
        chunk.pieces.clear()
        return True

    def unfinished_chunks(self) -> list[int]:
        return [c.index for c in self._chunks.values() if not c.final]

    def cancel(self, new_epoch: int) -> None:
        """Barge-in: drop everything held; later pieces of older epochs are dropped."""
        self.epoch = new_epoch
        for chunk in self._chunks.values():
            chunk.pieces.clear()

    def finish(self) -> None:
        """The stream's end: record chunks never completed."""
        for index in self.unfinished_chunks():
            self._violate("incomplete", index, "stream finished before the chunk's final piece")
            self._chunks[index].final = True

    @property
    def complete(self) -> bool:
        """Every registered chunk's audio has been released (or recorded as failed)."""
        return self._next_chunk == len(self._chunks) and all(c.final for c in self._chunks.values())

    @property
    def seam_violations(self) -> int:
        return sum(n for k, n in self.violations.items() if k != "old_epoch")

    # -- internals -----------------------------------------------------------

    def _release(self) -> list[Span]:
        out: list[Span] = []
        while self._next_chunk in self._chunks:
            chunk = self._chunks[self._next_chunk]
            while chunk.next_piece in chunk.pieces:
                span = self._take(chunk, chunk.pieces.pop(chunk.next_piece))
                if span is not None:
                    out.append(span)
            if not chunk.final:
                break
            self._next_chunk += 1
        return out

    def _take(self, chunk: _Chunk, piece: AudioPiece) -> Span | None:
        chunk.next_piece += 1
        pcm = piece.pcm
        if piece.sample_offset < chunk.samples_out:
            repeated = chunk.samples_out - piece.sample_offset
            self._violate("overlap", chunk.index, f"piece {piece.piece_index} starts at {piece.sample_offset}, "
                          f"{repeated} samples before {chunk.samples_out}; repeated samples dropped")
            pcm = memoryview(pcm)[repeated * BYTES_PER_SAMPLE:]
        elif piece.sample_offset > chunk.samples_out:
            self._violate("gap", chunk.index, f"piece {piece.piece_index} starts at {piece.sample_offset}, "
                          f"{piece.sample_offset - chunk.samples_out} samples after {chunk.samples_out}")
            chunk.samples_out = piece.sample_offset
        if piece.final:
            chunk.final = True
        count = len(pcm) // BYTES_PER_SAMPLE
        if count <= 0:
            return None
        span = Span(self.samples_released, pcm, None if chunk.heard else chunk.index)
        chunk.heard = True
        chunk.samples_out += count
        self.samples_released += count
        return span

    def _violate(self, kind: str, chunk: int, detail: str, level: int = logging.WARNING) -> None:
        self.violations[kind] += 1
        log.log(level, "seam violation %s: stream=%s chunk=%d %s", kind, self.stream, chunk, detail)
