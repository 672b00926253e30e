"""Stopping a child process: ask, then insist, then kill - the one escalation every owner of a process uses."""

from __future__ import annotations

import subprocess
from typing import Callable, Sequence

Step = tuple[str, Callable[[], None]]


def exited_within(proc: subprocess.Popen, timeout_s: float) -> bool:
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def escalate(proc: subprocess.Popen, steps: Sequence[Step], grace_s: float,
             kill: Callable[[], None] | None = None) -> str:
    """Take ``steps`` in turn, giving the process ``grace_s`` to exit after each, then ``kill``
    (SIGKILL of the process by default). Returns the name of the step it exited after,
    "sigkill", or "already_exited"."""
    if proc.poll() is not None:
        return "already_exited"
    for name, ask in steps:
        ask()
        if exited_within(proc, grace_s):
            return name
    (kill or proc.kill)()
    proc.wait()
    return "sigkill"
