"""Safe defaults for the client socket: loopback only, unless CURVE keys are set up.

`xtts-stream keys DIR` writes a server key pair and client key pairs with
ZeroMQ's own certificate format. The service, told ``curve_keys_dir = DIR``,
encrypts its client socket and admits only clients whose public key lies in
``DIR/clients``; a client needs the server's public key and its own pair.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

from pipeline.settings import SettingsError

SERVER = "server"


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


def check_bind_allowed(endpoint: str, keys_dir: str) -> Path | None:
    """The keys directory to use, None for a local bind; an error for a bare non-loopback bind."""
    if keys_dir:
        return _keys_dir(keys_dir)
    if is_local_endpoint(endpoint):
        return None
    raise SettingsError(
        f"refusing to bind {endpoint}: it is not a loopback address, and a non-loopback bind needs CURVE keys: "
        f"run `xtts-stream keys DIR` and set service.curve_keys_dir = DIR (README: 'Serving beyond this machine')")


def apply_server_security(sock: zmq.Socket, endpoint: str, keys_dir: str, auth=None):
    """Configure CURVE on ``sock`` when needed; returns the authenticator to keep alive (or None).

    One authenticator serves every socket of a context (ZeroMQ's ZAP handler is per context): pass
    the one a first call returned when securing a second socket."""
    directory = check_bind_allowed(endpoint, keys_dir)
    if directory is None:
        return auth
    if auth is None:
        from zmq.auth.asyncio import AsyncioAuthenticator
        auth = AsyncioAuthenticator(sock.context)
        auth.start()
        auth.configure_curve(domain="*", location=str(directory / "clients"))
    public, secret = zmq.auth.load_certificate(str(directory / f"{SERVER}.key_secret"))
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, secret
    return auth


def client_keys(keys_dir: str, name: str = "client-1") -> tuple[bytes, tuple[bytes, bytes]]:
    """(server public key, (client public, client secret)) for `Client(curve_...)`.

    A client's directory needs only the server's public key and its own pair: a worker or client on
    another host is never given the server's secret key."""
    directory = Path(keys_dir).expanduser()
    needed = [directory / f"{SERVER}.key", directory / f"{name}.key_secret"]
    if not all(path.is_file() for path in needed):
        raise SettingsError(f"keys directory {directory} has no {SERVER}.key and {name}.key_secret "
                            f"(make them with `xtts-stream keys DIR` and copy those two files)")
    server_public, _ = zmq.auth.load_certificate(str(needed[0]))
    public, secret = zmq.auth.load_certificate(str(needed[1]))
    return server_public, (public, secret)


def generate_keys(directory: Path, clients: int = 1) -> list[str]:
    directory = Path(directory)
    (directory / "clients").mkdir(parents=True, exist_ok=True)
    lines = []
    public, _ = zmq.auth.create_certificates(str(directory), SERVER)
    lines.append(f"server key pair: {public} (+ .key_secret; keep the secret on the server)")
    for i in range(1, clients + 1):
        name = f"client-{i}"
        public, secret = zmq.auth.create_certificates(str(directory), name)
        Path(public).replace(directory / "clients" / Path(public).name)
        lines.append(f"client key pair: {secret} (give it to that client); its public key is in {directory / 'clients'}")
    return lines


def _keys_dir(keys_dir: str) -> Path:
    directory = Path(keys_dir).expanduser()
    if not (directory / f"{SERVER}.key_secret").is_file() or not (directory / "clients").is_dir():
        raise SettingsError(f"curve_keys_dir {directory} has no {SERVER}.key_secret and clients/ "
                            f"(make them with `xtts-stream keys {directory}`)")
    return directory
