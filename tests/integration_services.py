"""A tiny synthetic XTTS service for the integration tests (Pipecat, Wyoming), started once per session.

Random weights stop at random, so it runs under the length policy
(`--forced-tokens-per-char`): every chunk yields a known number of samples, and
a text's audio length is exact whichever path spoke it. It also serves Wyoming
on a unix socket through the supervisor (`serve --wyoming`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.processes.service_process import ServiceProcess
from pipeline.text.chunker import split_text

PER_CHAR = 1.54


def forced_samples(text: str) -> int:
    """Samples the tiny XTTS speaks for ``text`` under the length policy, chunk by chunk
    (N audio tokens -> 4N mel frames at 22050 Hz, resampled to 24000 Hz, 256 samples a frame)."""
    total = 0
    for chunk in split_text(text):
        tokens = max(2, round(PER_CHAR * len(chunk.text)))
        total += 256 * int(int(4 * tokens) * 24000 / 22050)
    return total


def wait_for_path(path: Path, svc: ServiceProcess, timeout_s: float = 60.0) -> None:
    """Until the service's Wyoming process has bound its socket (it binds once the service is ready)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if svc.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no Wyoming socket at {path}; log:\n{svc.log_tail()}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def tiny_xtts_service(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-xtts-service")
    config = root / "service.toml"
    config.write_text(f'[service]\ncache_dir = "{root / "cache"}"\n')
    wyoming = root / "wyoming.sock"
    svc = ServiceProcess("--engine", "xtts", "--checkpoint", str(tiny_checkpoint), "--forced-tokens-per-char",
                         str(PER_CHAR), "--config", str(config), "--wyoming", f"unix://{wyoming}",
                         ready_timeout_s=300).start()
    try:
        wait_for_path(wyoming, svc)
        svc.wyoming_socket = wyoming
        yield svc
    finally:
        svc.stop()
    assert not svc.orphans, "the service left processes behind"
