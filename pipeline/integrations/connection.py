"""One way for an integration to reach the service: a `Client`, with CURVE keys when given."""

from __future__ import annotations

from pipeline.client import Client


def make_client(endpoint: str, keys_dir: str | None = None, timeout_s: float = 60.0) -> Client:
    """A client of the service at ``endpoint``; ``keys_dir`` is a directory made by `xtts-stream keys`."""
    curve = {}
    if keys_dir:
        from pipeline.wire.security import client_keys
        server_key, pair = client_keys(keys_dir)
        curve = {"curve_server_key": server_key, "curve_client_keys": pair}
    return Client(endpoint, timeout_s=timeout_s, **curve)


def service_language(code: str) -> str:
    """A language tag as the service's engines know it: "en-US" -> "en", "pt_BR" -> "pt"."""
    return code.strip().lower().replace("_", "-").split("-")[0]
