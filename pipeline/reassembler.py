"""The ordered reassembler: one per stream, between the worker and the sink.

Workers may finish chunks out of order and may (through a bug, a retry or a
restart) send a piece twice. The reassembler releases audio strictly in chunk
order and piece order, proves each piece starts exactly where the previous one
ended, proves consecutive chunks' text spans are disjoint and leave no speakable
text out, and re-cuts the audio into fixed-size blocks. Every violation is
logged with stream, chunk and offsets and counted: audio is never played twice
and never skipped without a record.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from .protocol import BYTES_PER_SAMPLE, AudioPiece

log = logging.getLogger("xtts_stream.reassembler")

VIOLATIONS = ("overlap", "gap", "duplicate", "old_epoch", "unknown_chunk",
              "span_overlap", "span_gap", "span_order", "incomplete")


@dataclass
class Block:
    seq: int
    sample_offset: int
    pcm: bytes

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


class Reassembler:
    def __init__(self, stream: str, block_samples: int, epoch: int = 0):
        if block_samples <= 0:
            raise ValueError("block_samples must be > 0")
        self.stream = stream
        self.block_samples = block_samples
        self.epoch = epoch
        self.violations: Counter[str] = Counter()
        self.samples_emitted = 0
        self._chunks: dict[int, _Chunk] = {}
        self._next_chunk = 0
        self._last_span_end = 0
        self._next_seq = 0
        self._pending = bytearray()  # released audio not yet cut into a block

    # -- text spans ----------------------------------------------------------

    def register_chunk(self, index: int, start: int, end: int, source: str) -> None:
        """Record a dispatched chunk's span; ``source`` is the stream's text so far."""
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
    def chunks_registered(self) -> int:
        return len(self._chunks)

    # -- audio ---------------------------------------------------------------

    def add_piece(self, piece: AudioPiece) -> list[Block]:
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

    def chunk_failed(self, index: int) -> list[Block]:
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
        self._pending.clear()

    def finish(self) -> list[Block]:
        """The stream's end: flush the last, shorter block; record chunks never completed."""
        for index in self.unfinished_chunks():
            self._violate("incomplete", index, "stream finished before the chunk's final piece")
            self._chunks[index].final = True
        if not self._pending:
            return []
        return [self._cut(len(self._pending) // BYTES_PER_SAMPLE)]

    @property
    def complete(self) -> bool:
        """Every registered chunk's audio has been released (or recorded as failed)."""
        return self._next_chunk == len(self._chunks) and all(c.final for c in self._chunks.values())

    @property
    def seam_violations(self) -> int:
        return sum(n for k, n in self.violations.items() if k != "old_epoch")

    # -- internals -----------------------------------------------------------

    def _release(self) -> list[Block]:
        while self._next_chunk in self._chunks:
            chunk = self._chunks[self._next_chunk]
            while chunk.next_piece in chunk.pieces:
                self._take(chunk, chunk.pieces.pop(chunk.next_piece))
            if not chunk.final:
                break
            self._next_chunk += 1
        return self._cut_full_blocks()

    def _take(self, chunk: _Chunk, piece: AudioPiece) -> None:
        chunk.next_piece += 1
        pcm = bytes(piece.pcm)
        if piece.sample_offset < chunk.samples_out:
            repeated = chunk.samples_out - piece.sample_offset
            self._violate("overlap", chunk.index, f"piece {piece.piece_index} starts at {piece.sample_offset}, "
                          f"{repeated} samples before {chunk.samples_out}; repeated samples dropped")
            pcm = pcm[repeated * BYTES_PER_SAMPLE:]
        elif piece.sample_offset > chunk.samples_out:
            self._violate("gap", chunk.index, f"piece {piece.piece_index} starts at {piece.sample_offset}, "
                          f"{piece.sample_offset - chunk.samples_out} samples after {chunk.samples_out}")
            chunk.samples_out = piece.sample_offset
        chunk.samples_out += len(pcm) // BYTES_PER_SAMPLE
        self._pending += pcm
        if piece.final:
            chunk.final = True

    def _cut_full_blocks(self) -> list[Block]:
        blocks = []
        while len(self._pending) >= self.block_samples * BYTES_PER_SAMPLE:
            blocks.append(self._cut(self.block_samples))
        return blocks

    def _cut(self, samples: int) -> Block:
        size = samples * BYTES_PER_SAMPLE
        block = Block(self._next_seq, self.samples_emitted, bytes(self._pending[:size]))
        del self._pending[:size]
        self._next_seq += 1
        self.samples_emitted += samples
        return block

    def _violate(self, kind: str, chunk: int, detail: str, level: int = logging.WARNING) -> None:
        self.violations[kind] += 1
        log.log(level, "seam violation %s: stream=%s chunk=%d %s", kind, self.stream, chunk, detail)
