"""python -m pipeline.coordinator --run-dir DIR: one coordinator process."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from pipeline.processes.lifeline import die_with_parent
from pipeline.wire.runpaths import RunPaths

from .shell import CoordinatorShell

log = logging.getLogger("xtts_stream.coordinator")


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m pipeline.coordinator")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s coordinator %(levelname)s %(name)s: %(message)s")
    run = RunPaths(args.run_dir)
    shell = CoordinatorShell(run.read_settings(), run)
    try:
        import uvloop
        run_loop = uvloop.run
    except ImportError:
        log.info("uvloop not installed; using the default asyncio loop")
        run_loop = asyncio.run
    run_loop(shell.serve())
    return shell.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
