"""XTTS's GPT run by our own loop: batched prefill and one-token decode over a static KV cache.

The weights are coqui-tts's own modules (the GPT-2 blocks, the mel embedding and
position table, the final norms and the mel head); this module only runs them
differently. Stock XTTS goes through Hugging Face `generate` with a growing cache
and keeps the request's prefix on the module; here every per-request value lives
in the cache rows ("slots") and in the arguments, so one model serves many
sequences at once.

A sequence in slot `s` with `c` latents produced so far has its last sampled token
at cache position `prefix_len - 1 + c` and audio position `c` (the start token sits
at audio position 0, the last prefix position). The latent paired with a token is
the final-norm hidden state that predicted it, as in stock XTTS.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .transfer import long_tensor


@dataclass(frozen=True)
class _Layer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor  # [d, 3d], GPT-2's Conv1D layout (x @ w)
    qkv_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    fc_proj_w: torch.Tensor
    fc_proj_b: torch.Tensor
    eps1: float
    eps2: float


class GptDecoder:
    """Prefill and decode for XTTS's GPT over a preallocated KV cache of `slots` rows."""

    def __init__(self, gpt: torch.nn.Module, slots: int, max_len: int) -> None:
        """`gpt` is coqui's `TTS.tts.layers.xtts.gpt.GPT`, already on its device and dtype."""
        self.gpt = gpt
        blocks = gpt.gpt.h
        self.n_layers = len(blocks)
        self.d = gpt.model_dim
        self.heads = gpt.heads
        self.head_dim = self.d // self.heads
        self.scale = self.head_dim**-0.5
        self.start_audio_token = gpt.start_audio_token
        self.stop_audio_token = gpt.stop_audio_token
        self.vocab = gpt.mel_head.out_features
        self.max_audio_pos = gpt.mel_pos_embedding.emb.num_embeddings
        self.layers = [_layer_of(b) for b in blocks]
        self.ln_f = gpt.gpt.ln_f
        self.final_norm = gpt.final_norm
        self.mel_head = gpt.mel_head
        self.mel_emb = gpt.mel_embedding.weight
        self.mel_pos = gpt.mel_pos_embedding.emb.weight
        self.dtype = self.mel_emb.dtype
        self.device = self.mel_emb.device
        self.slots = slots
        self.max_len = max_len
        shape = (self.n_layers, slots, self.heads, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    # -- inputs -------------------------------------------------------------------------

    def prefix_embedding(self, cond_latents: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """[P, d]: conditioning latents, text (with start/stop tokens and positions), audio start token.

        Same sum as coqui's `GPT.compute_embeddings` plus the start token's embedding
        that stock generate adds at its first forward.
        """
        gpt = self.gpt
        text = F.pad(text_tokens.reshape(-1).long(), (1, 1))
        text[0] = gpt.start_text_token
        text[-1] = gpt.stop_text_token
        text_emb = gpt.text_embedding(text) + gpt.text_pos_embedding.emb.weight[: text.shape[0]]
        start = self.mel_emb[self.start_audio_token] + self.mel_pos[0]
        cond = cond_latents.reshape(-1, self.d).to(self.dtype)
        return torch.cat([cond, text_emb.to(self.dtype), start[None]], dim=0)

    # -- prefill ------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slots: list[int], prefixes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the cache rows `slots` with their prefixes; return (logits [n, V], latents [n, d]).

        Prefixes of different lengths are right-padded: a row's real positions only
        attend to earlier real positions (causal), and the padded positions past a
        row's end are overwritten by its decode steps before they are ever attended.
        """
        lengths = [p.shape[0] for p in prefixes]
        longest = max(lengths)
        if longest > self.max_len:
            raise ValueError(f"prefix of {longest} positions exceeds the KV cache ({self.max_len})")
        x = torch.zeros(len(prefixes), longest, self.d, dtype=self.dtype, device=self.device)
        for i, p in enumerate(prefixes):
            x[i, : p.shape[0]] = p
        rows = long_tensor(slots, self.device)
        n, t = x.shape[0], x.shape[1]
        for li, L in enumerate(self.layers):
            h = F.layer_norm(x, (self.d,), L.ln1_w, L.ln1_b, L.eps1)
            qkv = torch.addmm(L.qkv_b, h.reshape(n * t, self.d), L.qkv_w).view(n, t, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [n, H, t, hd]
            self.k_cache[li, rows, :, :t] = k
            self.v_cache[li, rows, :, :t] = v
            with _prefill_attention(self.device):
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            x = x + self._attn_out(a.transpose(1, 2).reshape(n * t, self.d), L).view(n, t, self.d)
            x = x + self._mlp(x.reshape(n * t, self.d), L).view(n, t, self.d)
        last = long_tensor([ln - 1 for ln in lengths], self.device)
        h_last = x[torch.arange(n, device=self.device), last]
        return self._head(h_last)

    # -- decode -------------------------------------------------------------------------

    def decode_step(
        self, tokens: torch.Tensor, cache_pos: torch.Tensor, audio_pos: torch.Tensor, key_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each of slots 0..b-1; returns (logits [b, V], latents [b, d]).

        `tokens`, `cache_pos`, `audio_pos` are [b] device tensors; `key_len` bounds the
        attended cache length (static per call so the step can be captured as a graph).
        No host synchronisation happens here.
        """
        b = tokens.shape[0]
        rows = torch.arange(b, device=self.device)
        x = self.mel_emb[tokens] + self.mel_pos[audio_pos]  # [b, d]
        keys = torch.arange(key_len, device=self.device)
        mask = (keys[None, :] <= cache_pos[:, None])[:, None, None, :]  # [b, 1, 1, key_len]
        for li, L in enumerate(self.layers):
            h = F.layer_norm(x, (self.d,), L.ln1_w, L.ln1_b, L.eps1)
            qkv = torch.addmm(L.qkv_b, h, L.qkv_w).view(b, 3, self.heads, self.head_dim)
            q, k, v = qkv.unbind(1)  # each [b, H, hd]
            self.k_cache[li, rows, :, cache_pos] = k
            self.v_cache[li, rows, :, cache_pos] = v
            kc = self.k_cache[li, :b, :, :key_len]
            vc = self.v_cache[li, :b, :, :key_len]
            a = F.scaled_dot_product_attention(q[:, :, None], kc, vc, attn_mask=mask, scale=self.scale)
            x = x + self._attn_out(a.reshape(b, self.d), L)
            x = x + self._mlp(x, L)
        return self._head(x)

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy a sequence's cache rows to another slot (compaction when a sequence leaves)."""
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]

    # -- pieces -------------------------------------------------------------------------

    def _attn_out(self, a: torch.Tensor, L: _Layer) -> torch.Tensor:
        return torch.addmm(L.proj_b, a, L.proj_w)

    def _mlp(self, x: torch.Tensor, L: _Layer) -> torch.Tensor:
        h = F.layer_norm(x, (self.d,), L.ln2_w, L.ln2_b, L.eps2)
        h = F.gelu(torch.addmm(L.fc_b, h, L.fc_w), approximate="tanh")  # GPT-2's gelu_new
        return torch.addmm(L.fc_proj_b, h, L.fc_proj_w)

    def _head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.final_norm(self.ln_f(h))
        return self.mel_head(latent), latent


def _prefill_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA, attention kernels that need no per-shape setup: every prefill has a new
    length, and a backend that builds a plan per shape (cuDNN's) would pay it on the
    first-audio path of nearly every request."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _layer_of(block: torch.nn.Module) -> _Layer:
    attn, mlp = block.attn, block.mlp
    if getattr(attn, "scale_attn_by_inverse_layer_idx", False) or getattr(attn, "reorder_and_upcast_attn", False):
        raise ValueError("GPT-2 attention variants other than XTTS's plain one are not supported")
    act = getattr(mlp.act, "__class__", type(None)).__name__
    if act not in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUTanhActivation"):
        raise ValueError(f"unexpected GPT-2 activation {act}; XTTS uses gelu_new")
    return _Layer(
        ln1_w=block.ln_1.weight, ln1_b=block.ln_1.bias,
        qkv_w=attn.c_attn.weight, qkv_b=attn.c_attn.bias,
        proj_w=attn.c_proj.weight, proj_b=attn.c_proj.bias,
        ln2_w=block.ln_2.weight, ln2_b=block.ln_2.bias,
        fc_w=mlp.c_fc.weight, fc_b=mlp.c_fc.bias,
        fc_proj_w=mlp.c_proj.weight, fc_proj_b=mlp.c_proj.bias,
        eps1=block.ln_1.eps, eps2=block.ln_2.eps,
    )
