"""Replies waiting for a client whose ZeroMQ queue is full, bounded in seconds of audio and in bytes.

A burst can outrun ZeroMQ's send queue even for a client that reads as fast as
it can, so replies wait here, in order, and leave as the client drains. Past
``max_audio_s`` of audio or ``max_bytes`` in all, the client reads slower than
real time: further audio is dropped (and counted by the caller); replies that
end or refuse something are kept up to a cap so a stream never loses its
``done``. A client that takes nothing for ``patience_s`` is given up.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import zmq

from pipeline.wire.frames import send_frames
from pipeline.wire.protocol import Audio, Message

MAX_CONTROL = 256  # non-audio replies held per client (one that only sends and never reads)


class ClientOutbox:
    def __init__(self, identity: bytes, max_audio_s: float, max_bytes: int, patience_s: float, now: float):
        self.identity = identity
        self.max_audio_s = max_audio_s
        self.max_bytes = max_bytes
        self.patience_s = patience_s
        self.queue: deque[tuple[list[Any], float, int, bool]] = deque()  # frames, audio s, bytes, is audio
        self.audio_s = 0.0
        self.bytes = 0
        self.control = 0
        self.last_progress = now

    def offer(self, msg: Message, frames: list[Any]) -> bool:
        """Queue a reply; False when it had to be dropped."""
        audio = isinstance(msg, Audio)
        seconds = msg.sample_count / msg.sample_rate if audio else 0.0
        size = sum(len(f) for f in frames)
        if audio and (self.audio_s + seconds > self.max_audio_s or self.bytes + size > self.max_bytes):
            return False
        if not audio and self.control >= MAX_CONTROL:
            return False
        self.audio_s += seconds
        self.bytes += size
        self.control += 0 if audio else 1
        self.queue.append((frames, seconds, size, audio))
        return True

    def drain(self, sock: zmq.Socket, now: float) -> bool | None:
        """Send what waits, oldest first, without blocking: True when empty, False when the client
        still holds things up, None when it is gone (unreachable, or no progress for ``patience_s``)."""
        while self.queue:
            frames, seconds, size, audio = self.queue[0]
            try:
                send_frames(sock, frames)
            except zmq.Again:
                return None if now - self.last_progress > self.patience_s else False
            except zmq.ZMQError:
                return None
            self.queue.popleft()
            self.audio_s -= seconds
            self.bytes -= size
            self.control -= 0 if audio else 1
            self.last_progress = now
        return True
