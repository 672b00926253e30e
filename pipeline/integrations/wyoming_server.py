"""The Wyoming server process: waits for the service, listens, stops on a signal or a Shutdown.

It listens only once the service is ready, so the first `describe` already
names the service's real voice and languages (a client that connects earlier is
refused and retries, as Home Assistant does). One `Client` carries every
connection's streams.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable, TypeVar

from wyoming.server import AsyncServer

from pipeline.processes.control import watch_for_shutdown

from .connection import make_client
from .wyoming_handler import SpeechHandler, SpeechService
from .wyoming_info import Catalog

log = logging.getLogger("xtts_stream.wyoming")
T = TypeVar("T")


async def serve(uri: str, endpoint: str, keys_dir: str | None = None, profile: str = "",
                ready_timeout_s: float = 300.0, ctl: str | None = None,
                announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT/SIGTERM or a Shutdown on ``ctl``; ``announce`` gets the URI actually bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(watch_for_shutdown(ctl, stop.set)) if ctl else None
    client = make_client(endpoint, keys_dir)
    server: AsyncServer | None = None
    try:
        log.info("waiting for the service at %s", endpoint)
        ready = await _unless_stopped(stop, client.wait_ready(ready_timeout_s))
        if ready is None:
            return
        service = SpeechService(client, Catalog.from_status(ready.state), profile)
        server = AsyncServer.from_uri(uri)
        await server.start(lambda reader, writer: SpeechHandler(reader, writer, service))
        announce(bound_uri(server, uri))
        await stop.wait()
        log.info("stopping")
    finally:
        if server is not None:
            await _stop_server(server)
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await client.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def bound_uri(server: AsyncServer, uri: str) -> str:
    """``uri`` with the port the system chose for port 0 (the wyoming package keeps its asyncio server private)."""
    listener = getattr(server, "_server", None)
    if not uri.startswith("tcp://") or listener is None or not listener.sockets:
        return uri
    host, port = listener.sockets[0].getsockname()[:2]
    return f"tcp://{host}:{port}"


async def _stop_server(server: AsyncServer) -> None:
    """Close every connection (their speech is cancelled at the service), then the listener."""
    handlers = list(getattr(server, "_handlers", {}))
    await server.stop()
    if handlers:
        await asyncio.wait(handlers, timeout=5.0)


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    stopper.cancel()
    return task.result()
