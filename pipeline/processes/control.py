"""A process's control socket: where the supervisor's polite stop (a Shutdown message) arrives."""

from __future__ import annotations

import logging
from typing import Callable

import zmq
import zmq.asyncio

from pipeline.wire import protocol as p
from pipeline.wire.codec import DecodeError, decode
from pipeline.wire.runpaths import bind_claimed

log = logging.getLogger("xtts_stream.control")


async def watch_for_shutdown(endpoint: str, stop: Callable[[], None]) -> None:
    """Bind ``endpoint`` and call ``stop`` when a Shutdown arrives; anything else is logged and ignored.
    Returns after the Shutdown; the socket and its file are gone when it returns, is cancelled or
    cannot bind (a live process already serves the endpoint: ZMQError)."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    owned = None
    try:
        owned = bind_claimed(sock, endpoint)
        while True:
            try:
                msg = decode(await sock.recv_multipart())
            except DecodeError as exc:
                log.warning("ignoring an undecodable control message: %s", exc)
                continue
            if isinstance(msg, p.Shutdown):
                log.info("shutdown requested: %s", msg.reason or "no reason given")
                stop()
                return
            log.warning("ignoring '%s' on the control socket", msg.KIND.decode())
    finally:
        sock.close()
        ctx.term()
        if owned is not None:
            owned.remove()
