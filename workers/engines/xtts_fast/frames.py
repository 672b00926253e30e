"""GPT latents to HiFi-GAN input frames, for any frame range, exactly as stock XTTS would.

Stock XTTS stretches the latents with up to three linear interpolations before
HiFi-GAN: by 1/speed (only when speed != 1), by 4 (1024-sample codes to 256-sample
hops) and by 24000/22050 (output rate). `F.interpolate` with a scale factor maps
output index j to input position (j + 0.5) / scale - 0.5 and clamps at both ends,
so a frame's value does not depend on the total length except through the clamp
at the right end. That lets the incremental vocoder compute just the frames of a
window from just the latents it needs, identical to the whole-utterance frames
wherever the right end is not involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .transfer import to_device

HOP = 256


@dataclass(frozen=True)
class FrameChain:
    """The interpolation scales from latents to frames."""

    scales: tuple[float, ...]

    @classmethod
    def for_model(cls, code_stride: int, hop: int, in_rate: int, out_rate: int, speed: float) -> "FrameChain":
        scales: list[float] = []
        length_scale = 1.0 / max(speed, 0.05)  # stock clamps speed the same way
        if length_scale != 1.0:
            scales.append(length_scale)
        scales.append(code_stride / hop)
        if out_rate != in_rate:
            scales.append(out_rate / in_rate)
        return cls(tuple(scales))

    def frames(self, n_latents: int) -> int:
        """Frame count of a whole utterance of n latents (torch's floor(size * scale) at each stage)."""
        n = n_latents
        for s in self.scales:
            n = math.floor(float(n) * s)
        return n

    def samples(self, n_latents: int) -> int:
        return HOP * self.frames(n_latents)

    def window(self, latents: torch.Tensor, offset: int, known: int, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) as [C, stop - start].

        `latents` [n, C] hold latent indices [offset, offset + n); `known` is how many
        latents exist so far (the right-end clamp uses it, as a whole decode of `known`
        latents would). Raises ValueError if the window needs latents not given.
        """
        spans = self._spans(start, stop, known)
        lo, hi = spans[0]
        if lo < offset or hi > offset + latents.shape[0]:
            raise ValueError(f"frames [{start}, {stop}) need latents [{lo}, {hi}), given [{offset}, {offset + latents.shape[0]})")
        x = latents[lo - offset : hi - offset].transpose(0, 1)  # [C, n]
        sizes = self._sizes(known)
        for i, s in enumerate(self.scales):
            (in_lo, _), (out_lo, out_hi) = spans[i], spans[i + 1]
            x = _lerp(x, in_lo, sizes[i], sizes[i + 1], s, out_lo, out_hi)
        return x

    def latents_needed(self, start: int, stop: int, known: int) -> tuple[int, int]:
        return self._spans(start, stop, known)[0]

    def _sizes(self, known: int) -> list[int]:
        sizes = [known]
        for s in self.scales:
            sizes.append(math.floor(float(sizes[-1]) * s))
        return sizes

    def _spans(self, start: int, stop: int, known: int) -> list[tuple[int, int]]:
        """Index ranges needed at each stage, from latents (first) to frames (last)."""
        sizes = self._sizes(known)
        spans = [(start, stop)]
        for i in range(len(self.scales) - 1, -1, -1):
            lo, hi = spans[0]
            idx0, idx1, _ = _source(lo, hi, self.scales[i], sizes[i], sizes[i + 1])
            spans.insert(0, (int(idx0.min()), int(idx1.max()) + 1))
        return spans


def _source(lo: int, hi: int, scale: float, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's linear (align_corners=False) source indices and weights for outputs [lo, hi)."""
    if in_size == out_size:  # torch copies instead of interpolating when the sizes agree
        j = np.arange(lo, hi, dtype=np.int64)
        return j, j, np.zeros(hi - lo, dtype=np.float32)
    # float32 like torch's CPU and CUDA kernels, so index choices agree at the margins
    ratio = np.float32(1.0 / scale)
    j = np.arange(lo, hi, dtype=np.float32)
    src = np.maximum(ratio * (j + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    idx0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    idx1 = np.minimum(idx0 + 1, in_size - 1)
    lam = (src - np.floor(src)).astype(np.float32)
    return idx0, idx1, lam


def _lerp(x: torch.Tensor, x_lo: int, in_size: int, out_size: int, scale: float, lo: int, hi: int) -> torch.Tensor:
    idx0, idx1, lam = _source(lo, hi, scale, in_size, out_size)
    # One host-to-device copy per stage (indices are exact in float64), not three.
    table = to_device(torch.from_numpy(np.stack([idx0 - x_lo, idx1 - x_lo, lam.astype(np.float64)])), x.device)
    i0, i1 = table[0].long(), table[1].long()
    w1 = table[2].to(x.dtype)
    return x[:, i0] * (1.0 - w1) + x[:, i1] * w1
