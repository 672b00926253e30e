"""A tiny synthetic XTTS service for the integration tests (Pipecat, Wyoming), started once per session.

Random weights stop at random, so it runs under the length policy
(`--forced-tokens-per-char`): every chunk yields a known number of samples, and
a text's audio length is exact whichever path spoke it.
"""

from __future__ import annotations

import pytest

from pipeline.chunker import split_text
from pipeline.service_process import ServiceProcess

PER_CHAR = 1.54


def forced_samples(text: str) -> int:
    """Samples the tiny XTTS speaks for ``text`` under the length policy, chunk by chunk
    (N audio tokens -> 4N mel frames at 22050 Hz, resampled to 24000 Hz, 256 samples a frame)."""
    total = 0
    for chunk in split_text(text):
        tokens = max(2, round(PER_CHAR * len(chunk.text)))
        total += 256 * int(int(4 * tokens) * 24000 / 22050)
    return total


@pytest.fixture(scope="session")
def tiny_xtts_service(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-xtts-service")
    config = root / "service.toml"
    config.write_text(f'[service]\ncache_dir = "{root / "cache"}"\n')
    svc = ServiceProcess("--engine", "xtts", "--checkpoint", str(tiny_checkpoint), "--forced-tokens-per-char",
                         str(PER_CHAR), "--config", str(config),
                         ready_timeout_s=300).start()
    try:
        yield svc
    finally:
        svc.stop()
    assert not svc.orphans, "the service left processes behind"
