"""The decode step, eager or replayed from CUDA graphs captured per (batch, key length) bucket.

A captured graph replays the whole 30-layer step as one launch instead of
hundreds of small kernels (docs/benchmarks.md: 1.83 ms a step at batch 1 on an
H200). Graphs need static shapes
and addresses, so inputs are copied into fixed buffers, the batch is padded up to
a bucket (padding rows read and write only free cache slots, whose contents a
later prefill overwrites), and the attended key length is rounded up to a bucket.
"""

from __future__ import annotations

import bisect

import torch

from .gpt_decoder import GptDecoder

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DecodeRunner:
    def __init__(self, decoder: GptDecoder, use_graphs: bool, key_bucket: int = 128) -> None:
        self.decoder = decoder
        self.use_graphs = use_graphs and decoder.device.type == "cuda"
        self.key_bucket = key_bucket if self.use_graphs else 16
        slots, dev = decoder.slots, decoder.device
        self.batch_buckets = tuple(b for b in BATCH_BUCKETS if b < slots) + (slots,)
        self.tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        self.cache_pos = torch.zeros(slots, dtype=torch.long, device=dev)
        self.audio_pos = torch.zeros(slots, dtype=torch.long, device=dev)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = None

    def key_len(self, longest: int) -> int:
        k = -(-longest // self.key_bucket) * self.key_bucket
        return min(k, self.decoder.max_len)

    def batch_len(self, b: int) -> int:
        if not self.use_graphs:
            return b
        return self.batch_buckets[bisect.bisect_left(self.batch_buckets, b)]

    def run(self, b: int, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode rows 0..b-1 from the input buffers; `longest` is max(cache_pos) + 1 over them."""
        key_len = self.key_len(longest)
        if not self.use_graphs:
            return self.decoder.decode_step(self.tokens[:b], self.cache_pos[:b], self.audio_pos[:b], key_len)
        bb = self.batch_len(b)
        if b < bb:  # padding rows: token 0 at position 0 of their (free) slots
            self.tokens[b:bb].zero_()
            self.cache_pos[b:bb].zero_()
            self.audio_pos[b:bb].zero_()
        graph, logits, latents = self._graph(bb, key_len)
        graph.replay()
        return logits[:b], latents[:b]

    def capture_all(self, max_len: int | None = None) -> int:
        """Capture every bucket up to key length `max_len` now, so no request pays for a capture."""
        if not self.use_graphs:
            return 0
        top = self.key_len(max_len or self.decoder.max_len)
        for bb in self.batch_buckets:
            for k in range(self.key_bucket, top + 1, self.key_bucket):
                self._graph(bb, min(k, self.decoder.max_len))
        return len(self._graphs)

    def _graph(self, bb: int, key_len: int):
        key = (bb, key_len)
        if key not in self._graphs:
            self._graphs[key] = self._capture(bb, key_len)
        return self._graphs[key]

    @torch.inference_mode()
    def _capture(self, bb: int, key_len: int):
        dec = self.decoder
        args = (self.tokens[:bb], self.cache_pos[:bb], self.audio_pos[:bb], key_len)
        saved = (self.tokens.clone(), self.cache_pos.clone(), self.audio_pos.clone())
        # Warm-up and capture really run and write K/V: aim them at the last cache position,
        # which a row only reaches on its final step and writes before it attends to it.
        self.cache_pos[:bb].fill_(dec.max_len - 1)
        self.audio_pos[:bb].zero_()
        self.tokens[:bb].zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                dec.decode_step(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits, latents = dec.decode_step(*args)
        if self._pool is None:
            self._pool = graph.pool()
        self.tokens.copy_(saved[0])
        self.cache_pos.copy_(saved[1])
        self.audio_pos.copy_(saved[2])
        return graph, logits, latents
