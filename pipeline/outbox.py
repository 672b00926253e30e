"""Replies waiting for a client whose ZeroMQ queue is full.

A burst (a whole chunk's blocks at once) can outrun ZeroMQ's send queue even
for a client that reads as fast as it can, so audio waits here, bounded in
seconds of audio, and is sent as the client drains. Past the bound the client
is reading slower than real time: further blocks are dropped and counted.
Replies that end or refuse something are kept (up to a cap) so a stream never
loses its `done`; a client that takes nothing for `patience_s` is given up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

import zmq

from .protocol import AudioBlock

log = logging.getLogger("xtts_stream.outbox")

MAX_CONTROL = 256  # non-audio replies held per client (a client that only sends and never reads)


class ClientOutbox:
    def __init__(self, sock: zmq.Socket, identity: bytes, max_audio_s: float, patience_s: float,
                 on_gone: Callable[[bytes], Any], on_empty: Callable[[], Any]):
        self.sock = sock
        self.identity = identity
        self.max_audio_s = max_audio_s
        self.patience_s = patience_s
        self.on_gone = on_gone
        self.on_empty = on_empty
        self.queue: deque[tuple[list, float, bool]] = deque()  # frames, seconds of audio, is audio
        self.audio_s = 0.0
        self.control = 0
        self.dropped_blocks = 0
        self.dropped_control = 0
        self.task: asyncio.Task | None = None

    def offer(self, msg, frames: list) -> bool:
        """Queue a reply; False when it had to be dropped."""
        audio = isinstance(msg, AudioBlock)
        seconds = msg.sample_count / msg.sample_rate if audio else 0.0
        if audio and self.audio_s + seconds > self.max_audio_s:
            self.dropped_blocks += 1
            return False
        if not audio and self.control >= MAX_CONTROL:
            self.dropped_control += 1
            return False
        self.audio_s += seconds
        self.control += 0 if audio else 1
        self.queue.append((frames, seconds, audio))
        return True

    async def drain(self) -> None:
        """Send what waits, oldest first, as fast as the client takes it."""
        last_progress = time.monotonic()
        pause = 0.002
        while self.queue:
            frames, seconds, audio = self.queue[0]
            try:
                await self.sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                if time.monotonic() - last_progress > self.patience_s:
                    log.warning("client %s took nothing for %.0f s; %d replies dropped, client given up",
                                self.identity.hex(), self.patience_s, len(self.queue))
                    self.queue.clear()
                    self.on_empty()
                    await self.on_gone(self.identity)
                    return
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            except zmq.ZMQError:
                self.queue.clear()
                self.on_empty()
                await self.on_gone(self.identity)
                return
            self.queue.popleft()
            self.audio_s -= seconds
            self.control -= 0 if audio else 1
            last_progress = time.monotonic()
            pause = 0.002
        self.on_empty()  # no await between the empty check and this: nothing can slip in
