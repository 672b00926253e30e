"""Shared fixtures: a running Piper service for the end-to-end tests.

Each service runs as real processes on an ipc:// endpoint in its own temp
directory and is stopped (and checked for survivors) at the end.
"""

from __future__ import annotations

import pytest

from integration_services import tiny_xtts_service  # noqa: F401  (tiny XTTS service + Wyoming, once per session)
from pipeline.processes.service_process import ServiceProcess
from xtts_support import tiny_checkpoint  # noqa: F401  (the tiny synthetic XTTS checkpoint, once per session)


@pytest.fixture(scope="session")
def piper_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("piper-service")
    config = root / "service.toml"
    config.write_text(f'[service]\nwav_dir = "{root / "wav"}"\n')
    svc = ServiceProcess("--engine", "piper", "--config", str(config)).start()
    svc.wav_dir = root / "wav"
    yield svc
    svc.stop()
    assert not svc.orphans, "the service left processes behind"
