"""Children die with their supervisor, even when it is killed with SIGKILL.

The supervisor puts its PID in the environment of every process it starts;
each child asks the kernel for SIGKILL when its parent goes (Linux
PR_SET_PDEATHSIG) and then checks that the parent is still the one it was
started by, closing the race where the parent died before the request.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

PARENT_ENV = "XTTS_STREAM_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("xtts_stream.lifeline")


def die_with_parent() -> None:
    """Call first thing in a supervised process's main(); does nothing when not supervised."""
    expected = os.environ.get(PARENT_ENV)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("cannot ask to die with the supervisor: errno %d", ctypes.get_errno())
    if str(os.getppid()) != expected:
        log.error("the supervisor (pid %s) is already gone; exiting", expected)
        os._exit(3)
