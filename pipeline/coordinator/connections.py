"""Which connection each peer of a ROUTER socket came in on, and which peers a closed connection took.

ZeroMQ tells a ROUTER's owner neither when a peer connects nor when it goes. But
a received message carries the file descriptor of the connection it came on
(ZMQ_SRCFD), and the socket's monitor reports a closed connection by that same
descriptor: together they name the peers that are gone, at once, instead of at
the next failed send or a heartbeat timeout.

A peer may send and hang up before its first message is read: the disconnect is
then already reported when the message comes. The monitor's accept events say
whether the descriptor was opened again since, so such a peer is known gone as
soon as its message has been handled.
"""

from __future__ import annotations

import logging
from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from pipeline.wire.frames import readable

log = logging.getLogger("xtts_stream.coordinator")


class Connections:
    def __init__(self, sock: zmq.Socket, on_gone: Callable[[bytes], None], what: str):
        self.monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._sock = sock
        self._on_gone = on_gone
        self._what = what
        self._peers: dict[int, set[bytes]] = {}  # descriptor -> identities
        self._fd: dict[bytes, int] = {}
        self._closed: set[int] = set()  # descriptors closed and not opened again since

    def seen(self, identity: bytes, frame: zmq.Frame) -> bool:
        """A message from ``identity`` arrived in ``frame`` (received without a copy). False when its
        connection has already closed: the caller handles the message, then treats the peer as gone."""
        fd = frame.get(zmq.SRCFD)
        if self._fd.get(identity) == fd:
            return True
        # A disconnect of an earlier holder of this descriptor was queued before this
        # connection existed: apply it first, so it cannot be mistaken for this one's.
        self.read_events()
        self.forget(identity)
        if fd in self._closed:
            return False
        self._fd[identity] = fd
        self._peers.setdefault(fd, set()).add(identity)
        return True

    def read_events(self) -> None:
        while readable(self.monitor):
            event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            fd = event["value"]
            if event["event"] != zmq.EVENT_DISCONNECTED:
                self._closed.discard(fd)
                continue
            self._closed.add(fd)
            for identity in self._peers.pop(fd, set()):
                if self._fd.pop(identity, None) == event["value"]:
                    log.info("%s %s disconnected", self._what, identity.hex())
                    self._on_gone(identity)

    def forget(self, identity: bytes) -> None:
        fd = self._fd.pop(identity, None)
        if fd is not None:
            self._peers.get(fd, set()).discard(identity)

    def __len__(self) -> int:
        return len(self._peers)

    def close(self) -> None:
        self._sock.disable_monitor()
        self.monitor.close()
