"""The supervisor: starts the service's processes (or one host's workers) and keeps them running.

A reconcile loop compares the processes that should run with those that do and
restarts the difference, at most ``restart_limit`` times per process within
``restart_window_s``; past that it stops trying, says so loudly and reports the
service unhealthy (through the coordinator's status). Stopping escalates:
a polite Shutdown on the process's control socket, then SIGTERM, then SIGKILL,
and the step that was needed is recorded.

SIGTERM drains first (what an orchestrator's rolling update sends): the
coordinator takes no new streams and the open ones have ``drain_timeout_s`` to
finish; then everything stops in order. SIGINT (Ctrl-C) stops at once. Every
child dies with the supervisor, even one killed with SIGKILL (`lifeline.py`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import zmq

from pipeline.gateway import ADDR_FILE, read_url
from pipeline.settings import Settings
from pipeline.wire import protocol as p
from pipeline.wire.codec import encode
from pipeline.wire.runpaths import RUN_DIR_PREFIX, RunPaths, remove_stale_run_dirs, unlink_ipc

from .lifeline import PARENT_ENV
from .plan import Managed, service_processes
from .stopping import escalate

log = logging.getLogger("xtts_stream.supervisor")


class Supervisor:
    def __init__(self, settings: Settings, run_dir: Path | None = None, log_level: str = "INFO",
                 worker_env: dict[str, str] | None = None, log_dir: Path | None = None,
                 plan: Callable[[RunPaths], list[Managed]] | None = None):
        """``plan`` lists the processes for a run directory (default: the whole service)."""
        self.settings = settings
        self._own_run_dir = run_dir is None
        if self._own_run_dir:
            remove_stale_run_dirs()  # left by a supervisor that was killed (SIGKILL): nobody else will
        self.run = RunPaths(Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)))
        self.log_level = log_level
        self.log_dir = log_dir
        self.ctx = zmq.Context()
        self.stop_requested = False
        self.drain_requested = False
        self._drain_until: float | None = None
        self._last_report = 0.0
        self._health_sock: zmq.Socket | None = None
        self.processes = plan(self.run) if plan is not None else \
            service_processes(settings.service, self.run, worker_env)
        self.coordinator = next((m for m in self.processes if m.name == "coordinator"), None)
        self.http_url = ""

    # -- running -------------------------------------------------------------

    def start(self) -> None:
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.run.write_settings(self.settings)
        self.run.claim()
        for m in self.processes:
            self._spawn(m)

    def serve_forever(self, poll_s: float = 0.1) -> None:
        """Run until SIGINT (stop) or SIGTERM (drain, then stop); a second signal stops at once."""
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_drain_signal)
        try:
            self.start()
            while not self.stop_requested:
                if self.drain_requested and self._drained():
                    break
                self.reconcile()
                if any(m.given_up for m in self.processes if m.name in ("coordinator", "sink")):
                    log.critical("the %s cannot run: stopping the service",
                                 " and ".join(m.name for m in self.processes if m.given_up))
                    break
                time.sleep(poll_s)
        finally:
            self.stop()

    def _on_stop_signal(self, *_) -> None:
        self.stop_requested = True

    def _on_drain_signal(self, *_) -> None:
        if self.drain_requested or self.settings.service.drain_timeout_s <= 0:
            self.stop_requested = True  # a second SIGTERM, or draining is off: stop now
        self.drain_requested = True

    def _drained(self) -> bool:
        """Start a drain, or say whether it is over: the coordinator has exited (its streams done), or the
        deadline (drain_timeout_s plus the stop grace) has passed. Without a coordinator (a host of
        remote workers), the workers drain themselves on SIGTERM."""
        now = time.monotonic()
        svc = self.settings.service
        if self._drain_until is None:
            self._drain_until = now + svc.drain_timeout_s + svc.stop_grace_s
            log.info("draining: no new streams; open ones have %.0f s", svc.drain_timeout_s)
            if self.coordinator is not None:
                self._tell(self.coordinator.ctl, p.Drain(deadline_s=svc.drain_timeout_s))
            else:
                for m in self.processes:
                    if m.proc is not None and m.proc.poll() is None:
                        m.proc.terminate()
        watched = [self.coordinator] if self.coordinator is not None else self.processes
        done = all(m.proc is None or m.proc.poll() is not None for m in watched)
        return done or now > self._drain_until

    def reconcile(self) -> None:
        # Health goes to the coordinator on every change and once a second, so
        # a restarted coordinator learns it too.
        changed = time.monotonic() - self._last_report > 1.0 or self._http_url_changed()
        for m in self.processes:
            if self.stop_requested:  # Ctrl-C reaches every child too: they exit, and must not come back
                return
            if m.given_up or m.proc is None or m.proc.poll() is None:
                continue
            changed = True
            if self.drain_requested and (m is self.coordinator or self.coordinator is None):
                continue  # drained: it exits on purpose
            log.error("%s (pid %d) exited with code %s", m.name, m.proc.pid, m.proc.returncode)
            self._restart_or_give_up(m)
        if changed and self.coordinator is not None:
            self._report_health()

    def _restart_or_give_up(self, m: Managed) -> None:
        window = self.settings.service.restart_window_s
        now = time.monotonic()
        while m.starts and now - m.starts[0] > window:
            m.starts.popleft()
        if len(m.starts) > self.settings.service.restart_limit:
            m.given_up = True
            log.critical("%s died %d times within %.0f s; not restarting it again: the service is unhealthy",
                         m.name, len(m.starts), window)
            return
        m.restarts += 1
        self._spawn(m)

    def _http_url_changed(self) -> bool:
        url = read_url(self.run.root) if self.settings.service.http_listen else ""
        if url == self.http_url:
            return False
        self.http_url = url
        if url:
            print(f"xtts-stream: HTTP gateway on {url} (page: {url}/)", flush=True)
        return True

    @property
    def healthy(self) -> bool:
        return not any(m.given_up for m in self.processes)

    def health(self) -> dict[str, object]:
        return {
            "processes": {m.name: {"pid": m.proc.pid if m.proc else None, "restarts": m.restarts,
                                   "given_up": m.given_up} for m in self.processes},
            **({"http": self.http_url} if self.settings.service.http_listen else {}),
        }

    def _report_health(self) -> None:
        self._last_report = time.monotonic()
        msg = p.Health(healthy=self.healthy, state=self.health())
        if self._health_sock is None:  # kept open: it reconnects to a restarted coordinator by itself
            self._health_sock = self.ctx.socket(zmq.PUSH)
            self._health_sock.setsockopt(zmq.LINGER, 0)
            self._health_sock.setsockopt(zmq.SNDHWM, 4)
            self._health_sock.connect(self.coordinator.ctl)
        try:
            self._health_sock.send_multipart(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the coordinator is not up yet; the next report will reach it

    def _spawn(self, m: Managed) -> None:
        m.starts.append(time.monotonic())
        if m.name == "gateway":  # a restarted gateway on port 0 gets a new port: the old address is void
            (self.run.root / ADDR_FILE).unlink(missing_ok=True)
            self.http_url = ""
        env = {**os.environ, **(m.env or {}), PARENT_ENV: str(os.getpid())}
        argv = m.argv + ["--log-level", self.log_level]
        out = open(self.log_dir / f"{m.name}.log", "ab") if self.log_dir else None
        m.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                  start_new_session=False)
        if out:
            out.close()
        log.info("started %s (pid %d)", m.name, m.proc.pid)

    # -- stopping ------------------------------------------------------------

    def stop(self) -> dict[str, str]:
        """Front ends first (the coordinator stops taking text and tells clients, the gateway's and
        Wyoming's too), then the workers, then the sink."""
        order = [m for m in self.processes if m.role == "front"] + \
                [m for m in self.processes if m.role == "worker"] + \
                [m for m in self.processes if m.role == "sink"]
        for m in order:
            m.stop_step = self._escalate(m)
            log.info("%s stopped (%s)", m.name, m.stop_step)
        self.ctx.destroy(linger=0)
        self._health_sock = None
        for endpoint in (self.run.workers, self.run.sink_in, self.run.sink_out, self.settings.service.client_endpoint):
            unlink_ipc(endpoint)  # left behind only if the coordinator had to be killed
        if self._own_run_dir:
            shutil.rmtree(self.run.root, ignore_errors=True)
        return {m.name: m.stop_step for m in self.processes}

    def _escalate(self, m: Managed) -> str:
        proc = m.proc
        if proc is None:
            return "already_exited"
        steps = [("request", lambda: self._tell(m.ctl, p.Shutdown(reason="supervisor stopping"))),
                 ("sigterm", proc.terminate)]
        step = escalate(proc, steps, self.settings.service.stop_grace_s)
        if step == "sigkill":
            unlink_ipc(m.ctl)  # a killed process cannot remove its own socket file
        return step

    def _tell(self, endpoint: str, msg: p.Message) -> None:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDTIMEO, 500)
        sock.connect(endpoint)
        try:
            sock.send_multipart(encode(msg))
        except zmq.Again:
            log.warning("could not deliver %s to %s", type(msg).__name__, endpoint)
        finally:
            sock.close()
