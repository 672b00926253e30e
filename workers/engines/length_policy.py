"""A forced-length policy for benchmarks on random-weight checkpoints.

Random weights stop at random (often only at the 600-token cap), which makes
timings meaningless. Real XTTS speaks about 14 characters per second and one
audio token is 1024 samples at 22050 Hz (21.53 tokens per second), so a
realistic length is about 1.54 tokens per character (`pipeline.text.limits.forced_tokens`,
which the coordinator also uses to ask for it). The processor masks the
stop token until N-1 tokens have been generated and then forces it: the GPT
emits exactly N tokens, the stop token being the N-th (coqui's stream generator
yields it with its latent, so N latents reach the vocoder). Off unless a job
sets `forced_tokens`.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class ForcedLengthProcessor(LogitsProcessor):
    """Make HF generation produce exactly `n_tokens` tokens, the last one `stop_token`.

    The prompt length is taken from the first call (before any token exists),
    so the processor needs no knowledge of how the prompt was built. One
    instance serves one generation.
    """

    def __init__(self, n_tokens: int, stop_token: int) -> None:
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        self.n_tokens = n_tokens
        self.stop_token = stop_token
        self._prompt_len: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[-1]
        generated = input_ids.shape[-1] - self._prompt_len
        scores = scores.clone()
        if generated >= self.n_tokens - 1:
            stop_score = torch.zeros_like(scores[:, self.stop_token])
            scores.fill_(float("-inf"))
            scores[:, self.stop_token] = stop_score
        else:
            scores[:, self.stop_token] = float("-inf")
        return scores
