"""Safe defaults for the client socket: loopback only, unless CURVE keys are set up."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .settings import SettingsError


def is_local_endpoint(endpoint: str) -> bool:
    """ipc://, inproc:// and tcp:// on a loopback address are reachable from this host only."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: not provably local
        return False


def apply_server_security(sock, endpoint: str, cache_dir: str) -> None:
    if is_local_endpoint(endpoint):
        return
    raise SettingsError(
        f"refusing to bind {endpoint}: it is not a loopback address, and a non-loopback bind needs "
        f"CURVE keys (see the README's 'Serving beyond this machine')")
