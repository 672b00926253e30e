"""Which engine a worker builds from the settings.

Imports the engine modules (and with them torch) only when one is built, so the
worker's start-up cost is paid in the worker and nowhere else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.settings import ServiceSettings

from .engines.base import Engine, EngineError

log = logging.getLogger("xtts_stream.worker")

ENGINES = ("auto", "piper", "xtts", "null")
XTTS_PATHS = ("fast", "stock")


def build_engine(service: ServiceSettings) -> Engine:
    if service.engine not in ENGINES:
        raise EngineError(f"unknown engine '{service.engine}'; valid: {', '.join(ENGINES)}")
    if service.engine == "null":
        from .engines.null_engine import build_null
        return build_null(service)
    checkpoint = _checkpoint(service) if service.engine in ("auto", "xtts") else None
    if service.engine == "xtts" and checkpoint is None:
        raise EngineError("engine 'xtts' needs a checkpoint: set service.checkpoint, XTTS_STREAM_CHECKPOINT "
                          "or --checkpoint DIR (a real XTTS-v2 directory, or one from `xtts-stream make-synthetic`)")
    if checkpoint is None:
        log.info("no XTTS checkpoint configured or found: speaking with the bundled Piper voice (en_US-joe-medium)")
        from .engines.piper_engine import PiperEngine
        return PiperEngine()
    if service.xtts_path not in XTTS_PATHS:
        raise EngineError(f"unknown xtts_path '{service.xtts_path}'; valid: {', '.join(XTTS_PATHS)}")
    if service.xtts_path == "stock":
        from .engines.xtts_stock import build_xtts_stock
        return build_xtts_stock(service, checkpoint)
    from .engines.xtts_fast.engine import build_xtts_fast
    return build_xtts_fast(service, checkpoint)


def _checkpoint(service: ServiceSettings) -> Path | None:
    from .engines.xtts_model import find_checkpoint
    return find_checkpoint(service.checkpoint or None)
