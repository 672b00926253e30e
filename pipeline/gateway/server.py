"""The gateway process: ``python -m pipeline.gateway --run-dir DIR [--listen HOST:PORT]``.

It reads the service's settings from the run directory (as the coordinator
does), refuses a non-loopback address without an API keys file, binds the
listening socket itself (port 0 picks a free port) and writes the address it
got to ``RUN/http.addr``, where the supervisor reads it for its health report.
It stops on SIGTERM/SIGINT or on a `shutdown` message on its control socket
``ctl-gateway.sock``, like every process of the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import socket
import sys
from pathlib import Path

from pipeline.processes.control import watch_for_shutdown
from pipeline.processes.lifeline import die_with_parent
from pipeline.settings import SettingsError
from pipeline.wire.runpaths import RunPaths

from . import ADDR_FILE
from .app import Gateway, build_app
from .auth import check_listen_allowed, parse_listen

log = logging.getLogger("xtts_stream.gateway")
NAME = "gateway"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_addr(run: RunPaths, url: str) -> None:
    tmp = run.root / (ADDR_FILE + ".tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, run.root / ADDR_FILE)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    ap = argparse.ArgumentParser(prog="python -m pipeline.gateway", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--listen", default=None, help="HOST:PORT (default: the settings' service.http_listen)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    run = RunPaths(args.run_dir)
    try:
        settings = run.read_settings()
        host, port = parse_listen(args.listen or settings.service.http_listen)
        keys = check_listen_allowed(host, settings.service.http_api_keys_file)
        sock = bind(host, port)
    except SettingsError as exc:
        print(f"xtts-stream gateway: {exc}", file=sys.stderr)
        return 2
    return serve(settings, run, keys, sock, args.log_level)


def serve(settings, run: RunPaths, keys, sock: socket.socket, log_level: str) -> int:
    import uvicorn

    url = url_of(sock)

    @contextlib.asynccontextmanager
    async def around():
        # The socket is bound and listening already: a connection made from now on waits in its backlog.
        control = asyncio.get_running_loop().create_task(
            watch_for_shutdown(run.ctl(NAME), lambda: setattr(server, "should_exit", True)))
        write_addr(run, url)
        log.info("listening on %s%s", url, " (API keys required)" if keys else "")
        try:
            yield
        finally:
            (run.root / ADDR_FILE).unlink(missing_ok=True)
            control.cancel()
            await asyncio.gather(control, return_exceptions=True)

    app = build_app(Gateway(settings, keys, around=around))
    server = uvicorn.Server(uvicorn.Config(
        app, loop=_loop(), http="httptools", ws="websockets-sansio", lifespan="on",
        log_config=None, log_level=log_level.lower(), access_log=False, server_header=False, proxy_headers=False,
        ws_max_size=settings.service.max_message_bytes, ws_per_message_deflate=False,
        timeout_graceful_shutdown=max(0.5, settings.service.stop_grace_s / 2)))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the whole process group; uvicorn raises it again after its graceful stop
    finally:
        sock.close()
    return 0 if server.started else 1


def _loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
