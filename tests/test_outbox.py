"""ClientOutbox: replies waiting for a client that reads slower than they come, bounded and in order.

The bounds are checked on the outbox alone; sending goes through a real ROUTER
(ROUTER_MANDATORY, as the coordinator's client socket) to a real DEALER over
ipc:// in a temp directory, with queues small enough that a client that does
not read holds everything up after a few messages.
"""

from __future__ import annotations

import errno
import time

import pytest
import zmq

from pipeline.coordinator.outbox import MAX_CONTROL, ClientOutbox
from pipeline.wire import protocol as p
from pipeline.wire.codec import decode, encode
from pipeline.wire.frames import send_frames

RATE = 16000
PEER = b"client-1"
NOW = 1000.0


def audio(seq: int, samples: int = 1600, stream: str = "s") -> p.Audio:
    return p.Audio(stream=stream, epoch=0, seq=seq, sample_offset=seq * samples, sample_count=samples,
                   sample_rate=RATE, pcm=bytes(2 * samples))


def frames_of(msg: p.Message, identity: bytes = PEER) -> list:
    return [identity, *encode(msg)]


def size_of(msg: p.Message) -> int:
    return sum(len(f) for f in frames_of(msg))


def outbox(max_audio_s: float = 10.0, max_bytes: int = 1 << 30, patience_s: float = 5.0) -> ClientOutbox:
    return ClientOutbox(PEER, max_audio_s, max_bytes, patience_s, NOW)


def offer(box: ClientOutbox, msg: p.Message) -> bool:
    return box.offer(msg, frames_of(msg))


# -- bounds ----------------------------------------------------------------------------------------

def test_audio_is_held_up_to_its_seconds_bound_then_dropped():
    box = outbox(max_audio_s=0.5)
    accepted = [offer(box, audio(i)) for i in range(7)]  # 0.1 s each
    assert accepted == [True] * 5 + [False] * 2
    assert box.audio_s == pytest.approx(0.5)
    assert box.bytes == sum(size_of(audio(i)) for i in range(5))
    assert len(box.queue) == 5, "a dropped message leaves nothing behind"


def test_audio_is_held_up_to_its_byte_bound_then_dropped():
    three = sum(size_of(audio(i)) for i in range(3))
    box = outbox(max_audio_s=1000.0, max_bytes=three + size_of(audio(3)) // 2)
    assert [offer(box, audio(i)) for i in range(5)] == [True, True, True, False, False]
    assert box.bytes == three
    smaller = audio(9, samples=100)  # a shorter span still fits in what is left
    assert offer(box, smaller) is True
    assert box.bytes == three + size_of(smaller)


def test_replies_that_end_or_refuse_something_are_kept_past_the_audio_bounds():
    box = outbox(max_audio_s=0.1, max_bytes=size_of(audio(0)))
    assert offer(box, audio(0)) is True
    assert offer(box, audio(1)) is False, "the audio bounds are full"
    done = p.Done(stream="s", metrics={"audio_s": 0.1})
    error = p.Error(code="idle_timeout", message="no text for a while", stream="t")
    assert offer(box, done) is True and offer(box, error) is True, "a stream never loses its done"
    assert box.audio_s == pytest.approx(0.1), "control replies count no audio"


def test_control_replies_are_kept_up_to_max_control_and_audio_does_not_count_against_them():
    box = outbox()
    for i in range(MAX_CONTROL):
        assert offer(box, p.StatusReply(request=str(i), healthy=True)), i
    assert offer(box, p.Error(code="bad_frames", message="x")) is False, "one that only sends and never reads"
    assert offer(box, audio(0)) is True, "audio has bounds of its own"
    assert len(box.queue) == MAX_CONTROL + 1


# -- sending through a real socket -----------------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    """(ROUTER as the coordinator sets it up, DEALER client that reads only when told), connected."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 2)
    router.setsockopt(zmq.SNDBUF, 4096)
    endpoint = f"ipc://{tmp_path}/clients.sock"
    router.bind(endpoint)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, PEER)
    dealer.setsockopt(zmq.RCVHWM, 2)
    dealer.setsockopt(zmq.RCVBUF, 4096)
    dealer.connect(endpoint)
    dealer.send(b"hello")  # the router knows the peer once its first message is read
    assert router.poll(5000), "the client never connected"
    assert router.recv_multipart() == [PEER, b"hello"]
    yield router, dealer
    router.close()
    dealer.close()
    ctx.term()


def block_client(router: zmq.Socket) -> list[p.Message]:
    """Send audio the client does not read until its queues are full and stay full: what the
    coordinator sent before a reply first had to wait (the outbox is made at that moment)."""
    sent = []
    while True:
        msg = audio(len(sent), samples=8000)
        try:
            send_frames(router, frames_of(msg))
            sent.append(msg)
        except zmq.Again:
            # Full: unless ZeroMQ's I/O thread still moves something towards the client.
            if not router.poll(100, zmq.POLLOUT):
                assert sent, "the client took nothing at all"
                return sent


def receive(dealer: zmq.Socket) -> p.Message:
    assert dealer.poll(5000), "nothing arrived"
    return decode(dealer.recv_multipart())


def pump(router: zmq.Socket, dealer: zmq.Socket, box: ClientOutbox, until, now: float = NOW) -> list[p.Message]:
    """The client reads whatever arrives and the outbox is drained as the coordinator does (whenever
    the client's queue has room), until ``until(received)`` holds."""
    got: list[p.Message] = []
    deadline = time.monotonic() + 10
    while True:
        result = box.drain(router, now)
        assert result is not None, "a client that reads is never given up"
        if until(got):
            return got
        assert time.monotonic() < deadline, f"stuck after {len(got)} replies, {len(box.queue)} still waiting"
        if dealer.poll(0):
            got.append(decode(dealer.recv_multipart()))
        else:
            router.poll(10, zmq.POLLOUT)  # until ZeroMQ has moved something on and there is room


def test_an_empty_outbox_drains_at_once(pair):
    router, _ = pair
    assert outbox().drain(router, NOW) is True


def test_replies_wait_in_order_behind_the_blocked_ones_and_leave_as_the_client_reads(pair):
    router, dealer = pair
    before = block_client(router)
    box = outbox(max_audio_s=100.0)
    waiting = [audio(len(before) + i) for i in range(20)] + [p.Done(stream="s")]
    assert all(offer(box, m) for m in waiting)
    assert box.drain(router, NOW + 1) is False, "the client still holds things up"
    assert len(box.queue) == len(waiting), "nothing left while the client reads nothing"

    got = pump(router, dealer, box, lambda got: len(got) == len(before) + len(waiting))
    assert got == before + waiting, "every reply once, oldest first"
    assert box.drain(router, NOW) is True and not box.queue
    assert not dealer.poll(50), "nothing more than what was sent"
    assert box.audio_s == pytest.approx(0.0) and box.bytes == 0
    assert offer(box, audio(99)) is True, "room again once drained"


def test_what_has_left_frees_room_for_more_audio(pair):
    router, dealer = pair
    before = block_client(router)
    one = audio(0, samples=8000)  # 0.5 s
    box = outbox(max_audio_s=1.0)
    first = [audio(len(before) + i, samples=8000) for i in range(2)]
    assert all(offer(box, m) for m in first)
    assert offer(box, audio(len(before) + 2, samples=8000)) is False, "full"
    # The client reads what was sent directly, then the outbox moves on.
    pump(router, dealer, box, lambda got: box.audio_s < 0.5 + 1e-9)
    assert offer(box, one) is True, "a sent reply's seconds no longer count"


def test_a_client_that_takes_nothing_for_patience_s_is_given_up(pair):
    router, dealer = pair
    before = block_client(router)
    box = outbox(patience_s=5.0)  # made at NOW, as the coordinator makes it when a send first blocks
    offer(box, audio(len(before)))
    assert box.drain(router, NOW + 4.9) is False
    assert box.drain(router, NOW + 5.1) is None
    assert len(box.queue) == 1, "what it never took is dropped by the caller, not sent"


def test_patience_counts_from_the_last_reply_that_left(pair):
    router, dealer = pair
    before = block_client(router)
    box = outbox(max_audio_s=100.0, patience_s=5.0)
    waiting = [audio(len(before) + i, samples=8000) for i in range(60)]
    assert all(offer(box, m) for m in waiting)
    for _ in before:
        receive(dealer)
    assert router.poll(5000, zmq.POLLOUT), "room for more once the client has read"
    assert box.drain(router, NOW + 4.0) is False, "some left at NOW + 4, then it blocks again"
    while router.poll(100, zmq.POLLOUT):  # until the client's queues are full again and stay full
        assert box.drain(router, NOW + 4.0) is False
    assert len(box.queue) < len(waiting)
    assert box.drain(router, NOW + 8.0) is False, "4 s since the last progress: still patient"
    assert box.drain(router, NOW + 9.1) is None


def test_an_unreachable_client_is_given_up_at_once(pair):
    router, _ = pair
    box = ClientOutbox(b"nobody", 10.0, 1 << 20, 60.0, NOW)
    msg = p.Done(stream="s")
    assert box.offer(msg, frames_of(msg, b"nobody"))
    with pytest.raises(zmq.ZMQError) as exc:  # what the outbox meets: ROUTER_MANDATORY's refusal
        send_frames(router, frames_of(msg, b"nobody"))
    assert exc.value.errno == errno.EHOSTUNREACH
    assert box.drain(router, NOW) is None, "gone, however patient"
