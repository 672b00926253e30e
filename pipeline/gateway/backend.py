"""The gateway's connections to the coordinator: one ZeroMQ client per caller.

The coordinator counts streams per connection (``max_streams_per_client``), so
each caller (an API key, or everyone on loopback) gets its own connection and
the ZeroMQ side's limits apply per caller, not to the gateway as a whole.
Callers are few: the keys in the keys file, or "local".
"""

from __future__ import annotations

from typing import Any

from pipeline.client import Client, ServiceError, ServiceUnavailable
from pipeline.settings import Settings
from pipeline.wire import protocol as p

STATUS_TIMEOUT_S = 2.0


class Backend:
    def __init__(self, settings: Settings):
        svc = settings.service
        self.endpoint = svc.client_endpoint
        self.curve: dict[str, Any] = {}
        if svc.curve_keys_dir:
            from pipeline.wire.security import client_keys
            server_key, pair = client_keys(svc.curve_keys_dir)
            self.curve = {"curve_server_key": server_key, "curve_client_keys": pair}
        # An open stream may wait for text up to the service's idle timeout; the
        # service fails it then, so the client library must not give up first.
        self.timeout_s = svc.stream_idle_timeout_s + 30.0
        self._clients: dict[str, Client] = {}

    def client(self, caller: str) -> Client:
        client = self._clients.get(caller)
        if client is None:
            client = self._clients[caller] = Client(self.endpoint, timeout_s=self.timeout_s, **self.curve)
        return client

    async def status(self) -> p.StatusReply:
        """The coordinator's status; ServiceUnavailable when it does not answer in time."""
        return await self.client("status").status(STATUS_TIMEOUT_S)

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


__all__ = ["Backend", "ServiceError", "ServiceUnavailable"]
