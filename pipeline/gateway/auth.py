"""API keys for the gateway: required beyond loopback, checked in constant time.

The keys file holds one key per line (blank lines and lines starting with
``#`` are ignored); a key is at least 16 characters. Every request and
WebSocket handshake then needs ``Authorization: Bearer KEY``; a browser's
WebSocket, which cannot set headers, may offer the subprotocol
``bearer.KEY`` instead. `/health`, `/ready` and the page's own files stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path
from typing import Any

from pipeline.settings import SettingsError

MIN_KEY_CHARS = 16
CALLER_SCOPE_KEY = "xtts_stream.caller"
SUBPROTOCOL_PREFIX = "bearer."
# /health and /ready answer orchestrators' probes, which cannot carry a secret; they tell only up or not.
OPEN_PATHS = ("/health", "/ready", "/", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:8000)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"the HTTP address must be HOST:PORT (e.g. 127.0.0.1:8000), got '{listen}'")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_keys(path: str) -> list[bytes]:
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the HTTP API keys file {file}: {exc}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    short = [i + 1 for i, key in enumerate(keys) if len(key) < MIN_KEY_CHARS]
    if short:
        raise SettingsError(f"{file}: keys must be at least {MIN_KEY_CHARS} characters (key(s) {short} are not)")
    if not keys:
        raise SettingsError(f"{file} holds no API key (one per line)")
    return [key.encode() for key in keys]


def check_listen_allowed(host: str, keys_file: str) -> list[bytes] | None:
    """The keys to require (None: none needed on loopback); an error for a bare non-loopback listen."""
    if keys_file:
        return load_keys(keys_file)
    if is_loopback(host):
        return None
    raise SettingsError(f"refusing to serve HTTP on {host}: it is not a loopback address, and the gateway needs "
                        f"API keys beyond loopback: set service.http_api_keys_file (one key per line), or "
                        f"`xtts-stream serve --http-keys FILE`")


class BearerAuth:
    """ASGI middleware: the caller's key index goes into the scope, so each caller gets its own service connection."""

    def __init__(self, app, keys: list[bytes] | None):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.keys is None:
            scope[CALLER_SCOPE_KEY] = "local"
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if scope["type"] == "http" and (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)):
            scope[CALLER_SCOPE_KEY] = "anonymous"
            return await self.app(scope, receive, send)
        caller = self.caller(scope)
        if caller is None:
            return await _refuse(scope, send)
        scope[CALLER_SCOPE_KEY] = caller
        return await self.app(scope, receive, send)

    def caller(self, scope) -> str | None:
        for token in _tokens(scope):
            match = None
            for i, key in enumerate(self.keys):  # every key compared: the time does not tell which matched
                if hmac.compare_digest(token, key):
                    match = i
            if match is not None:
                return f"key-{match}"
        return None


def _tokens(scope) -> list[bytes]:
    out = []
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                out.append(token.strip())
    for proto in scope.get("subprotocols", []) if scope["type"] == "websocket" else []:
        if proto.startswith(SUBPROTOCOL_PREFIX):
            out.append(proto[len(SUBPROTOCOL_PREFIX):].encode())
    return out


async def _refuse(scope, send) -> None:
    body = json.dumps({"error": {"message": "missing or wrong API key: send Authorization: Bearer KEY",
                                 "type": "authentication_error", "param": None, "code": "unauthorized"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
               (b"content-length", str(len(body)).encode())]
    prefix = "websocket.http." if scope["type"] == "websocket" else "http."
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": prefix + "response.start", "status": 401, "headers": headers})
    await send({"type": prefix + "response.body", "body": body})


def accepted_subprotocol(scope: dict[str, Any]) -> str | None:
    """A browser that offered ``bearer.KEY`` must see it accepted, or it drops the connection."""
    for proto in scope.get("subprotocols", []):
        if proto.startswith(SUBPROTOCOL_PREFIX):
            return proto
    return None
