"""Batched token sampling on the device with per-row parameters.

The order follows Hugging Face `generate`, which stock XTTS uses: repetition
penalty, then temperature, top-k and top-p, then a draw. Rows with temperature 0
are greedy. The state for each slot (its parameters, which tokens it has seen,
how many tokens it must produce) lives in device tensors indexed by slot, so one
call serves the whole batch without host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from pipeline.settings import SAMPLING_BOUNDS, out_of_bounds

from .transfer import to_device

# A profile's bounds, and temperature 0 (greedy: the same tokens every run), which tests rely on.
GREEDY_ALLOWED = {**SAMPLING_BOUNDS, "temperature": (0.0, SAMPLING_BOUNDS["temperature"][1])}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.75
    top_k: int = 50
    top_p: float = 0.85
    repetition_penalty: float = 5.0

    @classmethod
    def from_job(cls, sampling: Mapping[str, Any]) -> "SamplingParams":
        """Read the profile's sampling dict; bad values raise ValueError with the field's name."""
        problem = out_of_bounds(sampling, GREEDY_ALLOWED)
        if problem:
            raise ValueError(problem)
        return cls(
            temperature=float(sampling.get("temperature", cls.temperature)),
            top_k=int(sampling.get("top_k", cls.top_k)),
            top_p=float(sampling.get("top_p", cls.top_p)),
            repetition_penalty=float(sampling.get("repetition_penalty", cls.repetition_penalty)),
        )


class Sampler:
    """Per-slot sampling state and the batched draw."""

    def __init__(self, slots: int, vocab: int, stop_token: int, device: torch.device, seed: int = 0) -> None:
        self.vocab = vocab
        self.stop_token = stop_token
        self.device = device
        self.temperature = torch.ones(slots, device=device)
        self.top_k = torch.full((slots,), vocab, dtype=torch.long, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.penalty = torch.ones(slots, device=device)
        self.seen = torch.zeros(slots, vocab, dtype=torch.bool, device=device)
        # The stop token may only be drawn while allow_stop is set (cleared for forced lengths).
        self.allow_stop = torch.ones(slots, dtype=torch.bool, device=device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._ranks = torch.arange(vocab, device=device)

    def reset(self, slot: int, params: SamplingParams, seen: list[int], allow_stop: bool) -> None:
        """Set a slot for a new sequence; `seen` are the ids the repetition penalty starts with."""
        self.reset_rows([slot], [params], seen, [allow_stop])

    def reset_rows(self, slots: list[int], params: list[SamplingParams], seen: list[int],
                   allow_stop: list[bool]) -> None:
        """Set many slots at once: one host-to-device copy and a few kernels, whatever their number."""
        table = torch.tensor([[slot, p.temperature, p.top_k if 0 < p.top_k < self.vocab else self.vocab, p.top_p,
                               p.repetition_penalty, float(stop)]
                              for slot, p, stop in zip(slots, params, allow_stop)], dtype=torch.float64)
        table = to_device(table, self.device)  # slots and top-k are exact in float64
        rows = table[:, 0].long()
        self.temperature[rows] = table[:, 1].float()
        self.top_k[rows] = table[:, 2].long()
        self.top_p[rows] = table[:, 3].float()
        self.penalty[rows] = table[:, 4].float()
        self.allow_stop[rows] = table[:, 5].bool()
        self.seen[rows] = False
        for token in seen:  # a Python index: no host-to-device copy
            self.seen[rows, token] = True

    def move(self, src: int, dst: int) -> None:
        for t in (self.temperature, self.top_k, self.top_p, self.penalty, self.seen, self.allow_stop):
            t[dst] = t[src]

    def sample(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Draw one token for each row; `logits` [n, V] belong to slots `rows` [n]. Returns [n] long."""
        x = logits.float()
        penalty = self.penalty[rows, None]
        seen = self.seen[rows]
        penalised = torch.where(x < 0, x * penalty, x / penalty)
        x = torch.where(seen, penalised, x)
        stop_ok = self.allow_stop[rows]
        x[:, self.stop_token] = torch.where(stop_ok, x[:, self.stop_token], float("-inf"))
        temp = self.temperature[rows]
        greedy = temp <= 0.0
        x = x / torch.where(greedy, 1.0, temp)[:, None]
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        sorted_x = sorted_x.masked_fill(self._ranks[None, :] >= self.top_k[rows, None], float("-inf"))
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        drop = before >= self.top_p[rows, None]
        drop[:, 0] = False
        probs = probs.masked_fill(drop, 0.0)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p (up to normalisation),
        # with a fixed number of kernels and no host sync, unlike torch.multinomial.
        race = torch.empty_like(probs).exponential_(generator=self.generator).clamp_min_(1e-20)
        drawn = torch.argmax(probs / race, dim=-1)
        pick = torch.where(greedy, torch.zeros_like(drawn), drawn)
        tokens = order.gather(1, pick[:, None]).squeeze(1)
        self.seen[rows, tokens] = True
        return tokens
