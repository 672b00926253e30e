"""Resident memory, open files and threads of a process and its descendants (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def children_of(root: int) -> list[int]:
    """``root`` and every descendant, parents before children."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    order, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        order.append(pid)
        todo.extend(sorted(parents.get(pid, [])))
    return order


def stats(pid: int) -> dict[str, object] | None:
    proc = Path(f"/proc/{pid}")
    try:
        status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        fds = len(os.listdir(proc / "fd"))
    except OSError:
        return None
    module = next((cmdline[i + 1].decode() for i, a in enumerate(cmdline[:-1]) if a == b"-m"), cmdline[0].decode())
    name = next((cmdline[i + 1].decode() for i, a in enumerate(cmdline[:-1]) if a == b"--name"), "")
    return {
        "pid": pid, "process": f"{module}{'[' + name + ']' if name else ''}",
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1) if "VmRSS" in status else None,
        "fds": fds, "threads": int(status.get("Threads", "0")),
    }


def process_tree_stats(root: int) -> list[dict[str, object]]:
    return [s for s in (stats(pid) for pid in children_of(root)) if s is not None]
