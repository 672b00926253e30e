"""Test support for XTTS: the tiny synthetic checkpoint, made once per test session.

`tiny_checkpoint` is a session fixture (conftest imports it); the tiny model
and the stock engine are loaded from it once per module that asks for them.
Random weights stop at random, so XTTS tests always force a length.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic XTTS-v2 checkpoint directory (seed 0); treat it as read-only."""
    from workers.engines.synthetic import make_synthetic_checkpoint

    return make_synthetic_checkpoint(tmp_path_factory.mktemp("xtts-tiny"), size="tiny", seed=0)


def service_for(checkpoint: Path, cache_dir: Path, **values: object):
    """The default [service] settings pointed at a checkpoint and a private cache, on the CPU."""
    from pipeline.settings import load_settings

    service = load_settings(env={}).service
    return dataclasses.replace(service, checkpoint=str(checkpoint), cache_dir=str(cache_dir), device="cpu",
                               **values)


def sampling(**overrides: object) -> dict:
    """The FAST profile's sampling dict with overrides."""
    from pipeline.settings import load_settings

    return {**load_settings(env={}).profile("fast").sampling(), **overrides}


def stock_stream_samples(n_tokens: int, speed: float = 1.0) -> int:
    """Output samples coqui's HiFi-GAN makes from n latents (stock XTTS-v2: 22050 -> 24000 Hz).

    Each latent is 1024 input samples: 4 frames of hop 256, resampled to 24 kHz
    by linear interpolation (floored), times the vocoder's 256x upsampling.
    `speed` != 1 first interpolates the latents (also floored).
    """
    latents = n_tokens if speed == 1.0 else int(n_tokens * (1.0 / max(speed, 0.05)))
    return 256 * int(4 * latents * 24000 / 22050)
