"""Which ROUTER peers are gone, told by the socket's monitor (real sockets on ipc://)."""

from __future__ import annotations

import time

import pytest
import zmq

from pipeline.coordinator.connections import Connections


@pytest.fixture
def router(tmp_path):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/router"
    sock.bind(endpoint)
    gone: list[bytes] = []
    conns = Connections(sock, gone.append, "client")
    yield ctx, sock, endpoint, conns, gone
    conns.close()
    sock.close(linger=0)
    ctx.term()


def dealer(ctx, endpoint, identity: bytes):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(endpoint)
    return sock


def receive(sock) -> list:
    assert sock.poll(5000), "nothing arrived"
    return sock.recv_multipart(copy=False)


def wait_until(ready, what: str = "the condition") -> None:
    """Until ``ready()`` holds; the monitor's events come from ZeroMQ's I/O thread."""
    deadline = time.monotonic() + 5
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within 5 s"
        time.sleep(0.01)


def open_connections(endpoint: str) -> int:
    """Connections the router holds open on its ipc:// path (accepted sockets carry the listener's path
    in /proc/net/unix, state 03: connected)."""
    path = endpoint[len("ipc://"):]
    with open("/proc/net/unix") as table:
        return sum(1 for line in table if line.split()[5:6] == ["03"] and line.rstrip("\n").endswith(" " + path))


def wait_until_closed_by_router(endpoint: str) -> None:
    """Until ZeroMQ has closed the router's end of every connection. It queues the monitor's
    disconnect event before it closes the descriptor, so the event is waiting by then."""
    wait_until(lambda: open_connections(endpoint) == 0, "the router closing its end of the connection")


def test_a_peer_that_hangs_up_after_it_was_seen_is_reported_gone(router):
    ctx, sock, endpoint, conns, gone = router
    peer = dealer(ctx, endpoint, b"a")
    peer.send(b"hello")
    frames = receive(sock)
    assert conns.seen(b"a", frames[0]) is True
    peer.close(linger=1000)

    def reported():
        conns.read_events()
        return gone == [b"a"]
    wait_until(reported)


def test_a_peer_that_hung_up_before_its_message_was_read_is_known_gone_at_once(router):
    ctx, sock, endpoint, conns, gone = router
    peer = dealer(ctx, endpoint, b"quick")
    peer.send(b"speak, then vanish")
    peer.close(linger=1000)
    assert sock.poll(5000), "its request never arrived"  # so its connection was accepted; the request waits unread
    wait_until_closed_by_router(endpoint)  # the disconnect is queued on the monitor before the message is read
    frames = receive(sock)
    assert conns.seen(b"quick", frames[0]) is False, "its connection closed before we read its request"
    assert gone == [], "the caller handles the message first, then treats the peer as gone"
    # A new connection may reuse the descriptor: it is open, and its peer is not gone.
    other = dealer(ctx, endpoint, b"next")
    other.send(b"hi")
    frames = receive(sock)
    assert conns.seen(b"next", frames[0]) is True
    conns.read_events()
    assert gone == []
    other.close(linger=0)


def test_a_disconnect_of_an_earlier_holder_of_a_descriptor_is_not_blamed_on_the_next(router):
    ctx, sock, endpoint, conns, gone = router
    first = dealer(ctx, endpoint, b"first")
    first.send(b"1")
    assert conns.seen(b"first", receive(sock)[0])
    first.close(linger=1000)
    wait_until_closed_by_router(endpoint)  # its descriptor is free for the next connection to reuse
    second = dealer(ctx, endpoint, b"second")
    second.send(b"2")
    frames = receive(sock)
    assert conns.seen(b"second", frames[0]) is True
    assert gone == [b"first"]
    second.close(linger=0)
