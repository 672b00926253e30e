"""Misbehaviour on purpose, for the tests that prove supervision and the seams.

Set ``XTTS_STREAM_FAULTS`` to a comma-separated list; a fault with a number
takes it after ``=``. Unset (the default) nothing here changes behaviour.

- ``duplicate_chunks``: after a chunk's last piece, send all its pieces again (the reassembler must drop them)
- ``fail_start``: exit with an error before the ready handshake
- ``hang_after=N``: stop answering (no pieces, no heartbeats) after N chunks
- ``exit_after=N``: die abruptly (os._exit) after N chunks, mid-stream
- ``ignore_shutdown``: ignore the polite shutdown request
- ``ignore_sigterm``: ignore SIGTERM too (only SIGKILL stops it)
- ``slow_start=S``: sleep S seconds before the ready handshake

With ``XTTS_STREAM_FAULTS_ONCE=/path/marker`` a fault that kills or hangs the
worker fires once: it creates the marker, and a restarted worker that finds it
runs clean (so a test can watch recovery).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV = "XTTS_STREAM_FAULTS"
ONCE_ENV = "XTTS_STREAM_FAULTS_ONCE"


@dataclass(frozen=True)
class Faults:
    duplicate_chunks: bool = False
    fail_start: bool = False
    hang_after: int = 0
    exit_after: int = 0
    ignore_shutdown: bool = False
    ignore_sigterm: bool = False
    slow_start: float = 0.0
    once_marker: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Faults":
        env = os.environ if env is None else env
        marker = env.get(ONCE_ENV, "")
        if marker and os.path.exists(marker):
            return cls()
        spec = env.get(ENV, "")
        values: dict[str, object] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, arg = item.partition("=")
            if name not in cls.__dataclass_fields__:
                raise ValueError(f"unknown fault '{name}' in {ENV}; valid: {', '.join(cls.__dataclass_fields__)}")
            kind = cls.__dataclass_fields__[name].type
            values[name] = True if kind == "bool" else (float(arg) if kind == "float" else int(arg))
        return cls(**values, once_marker=marker)

    def fire(self) -> None:
        """A fatal fault is about to act: leave the marker so the next start runs clean."""
        if self.once_marker:
            open(self.once_marker, "w").close()
