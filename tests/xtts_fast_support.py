"""Test support for the XTTS fast path: a tiny XTTS built in memory from coqui's config.

Used where the on-disk synthetic checkpoint is not needed (GPT and vocoder maths):
building it takes well under a second, and it is coqui's own `Xtts` with the
real v2 structure (perceiver, 1026 audio tokens, full-width HiFi-GAN), only
with a small GPT.
"""

from __future__ import annotations

import torch


def tiny_xtts(seed: int = 0, layers: int = 2, dim: int = 64, heads: int = 4):
    """A seeded coqui `Xtts` in eval mode with a small GPT and the real HiFi-GAN."""
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.models.xtts import Xtts

    args = XttsArgs(
        gpt_layers=layers,
        gpt_n_model_channels=dim,
        gpt_n_heads=heads,
        gpt_number_text_tokens=120,
        gpt_start_text_token=118,
        gpt_stop_text_token=0,
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_use_perceiver_resampler=True,
        gpt_max_audio_tokens=605,
        gpt_max_text_tokens=402,
        decoder_input_dim=dim,
    )
    torch.manual_seed(seed)
    model = Xtts(XttsConfig(model_args=args))
    _spread_weights(model, seed)
    model.eval()
    return model


def _spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Give norms and biases non-trivial values so a wrong wiring shows in the numbers."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.gpt.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        # Default GPT-2 init makes every audio token nearly equally likely; sharpen the
        # head so greedy decoding is well separated from ties.
        model.gpt.mel_head.weight.mul_(8.0)


def cond_and_speaker(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random but fixed conditioning latents [1, 32, d] and speaker embedding [1, 512, 1]."""
    g = torch.Generator().manual_seed(seed + 7)
    d = model.gpt.model_dim
    return torch.randn(1, 32, d, generator=g), torch.randn(1, 512, 1, generator=g) * 0.1


def text_tokens(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 11)
    return torch.randint(3, 110, (1, n), generator=g, dtype=torch.int32)
