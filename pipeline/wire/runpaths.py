"""Where a running service's processes meet: one run directory of ipc:// sockets.

The coordinator binds every internal socket; workers and the sink connect, so a
restarted process finds the others where they were. Each process also binds a
control socket of its own, on which the supervisor asks it to shut down.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq

from pipeline.settings import Settings, settings_from_dict

log = logging.getLogger("xtts_stream.runpaths")

RUN_DIR_PREFIX = "xtts-stream-"
OWNER_FILE = "supervisor.pid"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def ipc(self, name: str) -> str:
        return f"ipc://{self.root / (name + '.sock')}"

    @property
    def workers(self) -> str:
        return self.ipc("workers")

    @property
    def sink_in(self) -> str:
        return self.ipc("sink-in")

    @property
    def sink_out(self) -> str:
        return self.ipc("sink-out")

    def ctl(self, process: str) -> str:
        return self.ipc(f"ctl-{process}")

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.json"

    def write_settings(self, settings: Settings) -> None:
        tmp = self.settings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings.to_dict()))
        os.replace(tmp, self.settings_file)

    def read_settings(self) -> Settings:
        return settings_from_dict(json.loads(self.settings_file.read_text()))

    def claim(self) -> None:
        """Mark the directory as this supervisor's: a later one removes it if this one dies unannounced."""
        (self.root / OWNER_FILE).write_text(str(os.getpid()))


def remove_stale_run_dirs(parent: Path | None = None) -> list[Path]:
    """Delete run directories of ours whose supervisor is dead (killed before it could clean up)."""
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"):
        try:
            if path.stat().st_uid != os.getuid() or not path.is_dir():
                continue
            pid = int((path / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or not claimed (yet): leave it
        if _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the run directory %s of a supervisor (pid %d) that is gone", path, pid)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unlink_ipc(endpoint: str) -> None:
    """Remove the socket file an ipc:// bind left behind."""
    if endpoint.startswith("ipc://"):
        try:
            os.unlink(endpoint[len("ipc://"):])
        except FileNotFoundError:
            pass


def claim_ipc_path(endpoint: str) -> str | None:
    """The file an ipc:// bind will create, after checking that binding destroys nothing.

    ZeroMQ unlinks whatever is at the path before it binds. That is right for a
    socket file left by a killed sink, wrong for any other file and for a socket
    another process still serves; those raise ZMQError (EADDRINUSE).
    """
    if not endpoint.startswith("ipc://") or endpoint[6:].startswith("@"):  # "@": abstract, no file
        return None
    path = endpoint[6:]
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(mode):
        raise zmq.ZMQError(errno.EADDRINUSE, f"{path} exists and is not a socket; not replacing it")
    if served(path):
        raise zmq.ZMQError(errno.EADDRINUSE, f"another process is serving {path}")
    return path  # nobody listens: a stale file, safe to replace


def served(path: str) -> bool:
    """Whether a process listens on the unix socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


@dataclass
class SocketFile:
    """The file an ipc:// bind made, which ZeroMQ leaves behind. Another process may have bound the
    path since, and a file system may give its file our freed inode number: `remove` deletes the
    file only while it has our inode number and nobody serves it. Call it once the socket is
    closed and its context terminated (until then our own listener still answers)."""

    path: str
    inode: int

    def remove(self) -> None:
        try:
            if os.stat(self.path).st_ino == self.inode and not served(self.path):
                os.unlink(self.path)
        except OSError as exc:
            log.debug("leaving %s: %s", self.path, exc)


def bind_claimed(sock: zmq.Socket, endpoint: str) -> SocketFile | None:
    """Bind ``sock`` to ``endpoint`` after `claim_ipc_path` has checked that this destroys nothing."""
    path = claim_ipc_path(endpoint)
    sock.bind(endpoint)
    return SocketFile(path, os.stat(path).st_ino) if path else None
