"""`xtts-stream wyoming`: serve the running service to Home Assistant (and any Wyoming client).

    xtts-stream wyoming --uri tcp://127.0.0.1:10200 [--endpoint ZMQ_ENDPOINT] [--keys DIR]
    xtts-stream serve --wyoming tcp://127.0.0.1:10200     # the same, one more process of the service

Kept apart from the server itself so that building the CLI's parser imports
nothing but argparse: the `wyoming` package is loaded only to serve.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
from urllib.parse import urlparse

from pipeline.processes.lifeline import die_with_parent
from pipeline.settings import SettingsError, load_settings
from pipeline.wire.security import is_local_endpoint

DEFAULT_URI = "tcp://127.0.0.1:10200"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--uri", default=DEFAULT_URI,
                    help="where Wyoming clients connect: tcp://HOST:PORT (port 0: any free port) or unix:///path")
    ap.add_argument("--endpoint", default=None, help="the service's client endpoint (default: from the config)")
    ap.add_argument("--keys", default=None, help="CURVE keys directory (from `xtts-stream keys`)")
    ap.add_argument("--config", default=None)
    ap.add_argument("--profile", default="", help="the service profile to speak with (default: the service's)")
    ap.add_argument("--allow-remote", action="store_true",
                    help="listen beyond loopback: Wyoming has no authentication, so anyone who reaches the port "
                         "can make the service speak")
    ap.add_argument("--ready-timeout", type=float, default=300.0,
                    help="seconds to wait for the service to be ready before giving up")
    ap.add_argument("--ctl", default=None, help=argparse.SUPPRESS)  # the supervisor's control socket
    ap.add_argument("--log-level", default="INFO")


def require_wyoming() -> None:
    """A SettingsError, not an ImportError deep in a child process, when the extra is missing."""
    if importlib.util.find_spec("wyoming") is None:
        raise SettingsError("the Wyoming server needs the wyoming package: pip install 'xtts-stream[wyoming]'")


def check_uri(uri: str, allow_remote: bool) -> None:
    """A SettingsError naming the problem, before anything is bound."""
    parsed = urlparse(uri)
    if parsed.scheme == "unix":
        if not parsed.path:
            raise SettingsError(f"Wyoming URI {uri!r} names no socket path (unix:///path/to/socket)")
        return
    if parsed.scheme != "tcp":
        raise SettingsError(f"Wyoming URI {uri!r}: use tcp://HOST:PORT or unix:///path")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise SettingsError(f"Wyoming URI {uri!r} needs a host and a port, e.g. {DEFAULT_URI}")
    if not allow_remote and not is_local_endpoint(f"tcp://{parsed.hostname}:{port}"):
        raise SettingsError(f"Wyoming URI {uri!r} is beyond loopback, and Wyoming has no authentication: "
                            "anyone who reaches it can make the service speak. Pass --allow-remote "
                            "(serve: --wyoming-allow-remote) on a trusted network")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s wyoming %(levelname)s %(name)s: %(message)s")
    try:
        check_uri(args.uri, args.allow_remote)
        require_wyoming()
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"xtts-stream wyoming: {exc}", file=sys.stderr)
        return 2
    endpoint = args.endpoint or settings.service.client_endpoint
    keys = args.keys or settings.service.curve_keys_dir or None
    from pipeline.client import ServiceUnavailable

    from .wyoming_server import serve
    try:
        asyncio.run(serve(args.uri, endpoint, keys, args.profile, args.ready_timeout, args.ctl,
                          announce=lambda uri: print(f"xtts-stream wyoming: listening on {uri}", flush=True)))
    except ServiceUnavailable as exc:
        print(f"xtts-stream wyoming: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the address is taken, or the socket path cannot be made
        print(f"xtts-stream wyoming: cannot listen on {args.uri}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    ap = argparse.ArgumentParser(prog="python -m pipeline.integrations.wyoming_cli")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
