"""Run `xtts-stream serve` as a child process: for the demo, the tests and the benchmark.

The service gets its own ipc:// endpoint in a fresh directory and its HTTP
gateway a free loopback port (nothing to collide on when several run at once),
is waited for until it answers (and its gateway listens: ``http_url``), and is
stopped with the same escalation the supervisor uses on its own children.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.client import ServiceUnavailable, SyncClient

from .stopping import escalate


class ServiceProcess:
    def __init__(self, *serve_args: str, env: dict[str, str] | None = None, ready_timeout_s: float = 180.0,
                 log_path: Path | None = None, endpoint: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="xtts-svc-"))
        self.endpoint = endpoint or f"ipc://{self.dir}/client.sock"
        http = [] if "--http" in serve_args else ["--http", "127.0.0.1:0"]
        self.args = ["serve", "--endpoint", self.endpoint, *http, *serve_args]
        self.http_url = ""  # the gateway's base URL once it listens ("" with --http off)
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.log_path = log_path or self.dir / "service.log"
        self.proc: subprocess.Popen | None = None
        self.stop_step = ""
        self.orphans = False

    def start(self) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        with SyncClient(self.endpoint, timeout_s=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited with code {self.proc.returncode} before it was ready; "
                                       f"log:\n{self.log_tail()}")
                try:  # in one-second slices, so a service that exits is noticed
                    reply = client.wait_ready(timeout_s=1.0)
                    if self._gateway_known(reply.state.get("supervisor", {})):
                        return
                    time.sleep(0.05)  # the supervisor reports the gateway's address within a second
                except ServiceUnavailable as exc:
                    if exc.code == "unhealthy":
                        raise RuntimeError(f"service is unhealthy (a process keeps failing); "
                                           f"log:\n{self.log_tail()}") from None
        raise RuntimeError(f"service not ready within {self.ready_timeout_s:.0f} s; log:\n{self.log_tail()}")

    def _gateway_known(self, supervisor: dict) -> bool:
        """The gateway's address has reached the supervisor's health report (or there is no gateway)."""
        if "http" not in supervisor:
            return supervisor.get("processes") is not None  # a report without it: the gateway is off
        self.http_url = supervisor["http"]
        return bool(self.http_url)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> str:
        """SIGINT (the supervisor's stop without a drain: tests and benches end what they started),
        then SIGKILL of the whole group."""
        proc = self.proc
        self.stop_step = "already_exited"
        if proc is not None:
            self.stop_step = escalate(proc, [("sigint", lambda: proc.send_signal(signal.SIGINT))], grace_s,
                                      kill=lambda: os.killpg(proc.pid, signal.SIGKILL))
            # Nothing the service started may outlive it: record any survivor
            # (tests assert there is none), then make sure of it.
            try:
                os.killpg(proc.pid, 0)
                self.orphans = True
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.stop_step

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
