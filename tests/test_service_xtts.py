"""The whole service on the tiny synthetic XTTS checkpoint, through both XTTS paths.

Random weights speak noise, so these tests check the plumbing exactly: under
the length policy every chunk yields a known number of samples, and the
stream's audio is their sum, in order, with no seam violation.
"""

from __future__ import annotations

import pytest

from pipeline.processes.service_process import ServiceProcess
from pipeline.text.chunker import split_text
from service_support import run, speak

pytestmark = pytest.mark.slow

TEXT = "Hello there, friend. Good night."
PER_CHAR = 1.54


def forced_samples(chunk_text: str) -> int:
    """N audio tokens -> 4N mel frames at 22050 Hz, resampled to 24000 Hz, 256 samples a frame."""
    tokens = max(2, round(PER_CHAR * len(chunk_text)))
    return 256 * int(int(4 * tokens) * 24000 / 22050)


@pytest.mark.parametrize("path, engine", [("fast", "xtts-fast"), ("stock", "xtts-stock")])
def test_tiny_xtts_speaks_through_the_service(tiny_checkpoint, tmp_path, path, engine):
    cfg = tmp_path / "service.toml"
    cfg.write_text(f'[service]\ncache_dir = "{tmp_path / "cache"}"\n')
    args = ("--engine", "xtts", "--checkpoint", str(tiny_checkpoint), "--xtts-path", path,
            "--forced-tokens-per-char", str(PER_CHAR), "--config", str(cfg))
    with ServiceProcess(*args, ready_timeout_s=300) as svc:
        out = run(speak(svc.endpoint, TEXT))
    assert out.error is None, out.error
    out.assert_in_order()
    m = out.metrics
    assert (m["engine"], m["dtype"], m["device"], out.sample_rate) == (engine, "fp32", "cpu", 24000)
    chunks = split_text(TEXT)
    assert m["chunks"] == len(chunks) >= 2 and m["seam_violations"] == 0
    assert len(out.pcm) == sum(forced_samples(c.text) for c in chunks)
