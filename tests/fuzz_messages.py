"""Seeded generator of malformed, mutated and hostile client messages for the fuzz test.

Deterministic for a given seed. Every message stays below the fuzzed service's
``max_message_bytes`` (the oversize case has its own test), and the valid
requests it can produce are cheap to serve: short texts, a small pool of
stream ids, so streams keep colliding, appending to each other and cancelling.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any, Callable

import msgpack

from pipeline.wire import protocol as p
from pipeline.wire.codec import DecodeError, decode, encode

STREAMS = ("a", "b", "c", "d")
TEXTS = ("Hi.", "Ok", " ... ", "", "Yes, fine.", "\u00e9t\u00e9 \u2014 \u4e2d\u6587!", "7 $29.95 Dr.")
MAX_FRAME = 8192


class MessageFuzzer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.kinds: Counter[str] = Counter()
        self._makers: list[tuple[str, Callable[[], list[bytes]], int]] = [
            ("random_frames", self.random_frames, 10),
            ("random_header", self.random_header, 14),
            ("type_mutation", self.type_mutation, 14),
            ("unknown_field", self.unknown_field, 8),
            ("truncated", self.truncated, 10),
            ("bit_flip", self.bit_flip, 14),
            ("extra_frames", self.extra_frames, 6),
            ("stream_ops", self.stream_ops, 16),
            ("huge_stream_id", self.huge_stream_id, 4),
            ("internal_kind", self.internal_kind, 4),
        ]

    def next(self) -> list[bytes]:
        names, makers, weights = zip(*self._makers)
        i = self.rng.choices(range(len(makers)), weights=weights)[0]
        self.kinds[names[i]] += 1
        frames = makers[i]()
        assert all(len(f) <= MAX_FRAME for f in frames)
        return frames

    # -- building blocks -----------------------------------------------------

    def blob(self, max_len: int = 64) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_len))

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        pick = r.randrange(10 if depth < 3 else 7)
        if pick == 0:
            return None
        if pick == 1:
            return r.random() < 0.5
        if pick == 2:
            return r.choice((0, -1, 1, 2**31, -2**63, 2**64 - 1, r.randint(-1000, 1000)))
        if pick == 3:
            return r.choice((0.0, -1.5, 1e308, float("nan"), float("inf"), r.random()))
        if pick == 4:
            return "".join(chr(r.choice((r.randint(32, 126), r.randint(0xA0, 0xD7FF)))) for _ in range(r.randint(0, 20)))
        if pick == 5:
            return self.blob(24)
        if pick == 6:
            return r.choice(TEXTS + STREAMS)
        if pick in (7, 8):
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.key(): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def key(self) -> Any:
        return self.rng.choice(("stream", "text", "profile", "overrides", "v", "request", "x", "", "\u00fc", b"raw"))

    def valid(self) -> p.Message:
        """A well-formed, cheap client request."""
        r = self.rng
        stream = r.choice(STREAMS)
        kind = r.choice((p.Speak, p.Open, p.Append, p.End, p.Cancel, p.Status))
        if kind is p.Speak:
            return p.Speak(stream=stream, text=r.choice(TEXTS), profile=r.choice(("", "fast", "cinematic", "nope")),
                           overrides=r.choice(({}, {"block_ms": 40}, {"temperature": "hot"}, {"nope": 1})),
                           language=r.choice(("", "en", "xx")), deliver=r.choice(("client", "none", "wav:../x.wav")))
        if kind is p.Open:
            return p.Open(stream=stream, profile=r.choice(("", "fast")), deliver=r.choice(("client", "none")))
        if kind is p.Append:
            return p.Append(stream=stream, text=r.choice(TEXTS))
        if kind is p.Status:
            return p.Status(request=str(r.randint(0, 99)))
        return kind(stream=stream)

    def header_of(self, msg: p.Message) -> dict[str, Any]:
        return msgpack.unpackb(encode(msg)[1], raw=False)

    def pack(self, header: Any) -> bytes:
        return msgpack.packb(header, use_bin_type=True)

    # -- message makers ------------------------------------------------------

    def random_frames(self) -> list[bytes]:
        frames = [self.blob() for _ in range(self.rng.randint(1, 4))]
        if self.rng.random() < 0.3:
            frames[0] = self.rng.choice(list(p.BY_KIND))
        return frames

    def random_header(self) -> list[bytes]:
        r = self.rng
        kind = r.choice([m.KIND for m in p.CLIENT_REQUESTS] * 3 + list(p.BY_KIND))
        if r.random() < 0.2:
            header: Any = self.value()
        else:
            cls = p.BY_KIND[kind]
            names = [f.name for f in dataclasses.fields(cls)]
            header = {name: self.value() for name in r.sample(names, r.randint(0, len(names)))}
            header.update({self.key(): self.value() for _ in range(r.randint(0, 2))})
            if r.random() < 0.8:
                header["v"] = r.choice((1, 1, 1, 2, 0, "1", None))
        return [kind, self.pack(header)]

    def type_mutation(self) -> list[bytes]:
        msg = self.valid()
        header = self.header_of(msg)
        name = self.rng.choice([k for k in header if k != "v"] or ["v"])
        header[name] = self.value()
        return [msg.KIND, self.pack(header)]

    def unknown_field(self) -> list[bytes]:
        msg = self.valid()
        header = self.header_of(msg)
        header[self.rng.choice(("extra", "Stream", "v2", "priority", "epoch", ""))] = self.value()
        return [msg.KIND, self.pack(header)]

    def truncated(self) -> list[bytes]:
        frames = encode(self.valid())
        raw = frames[1]
        cut = self.rng.randrange(len(raw))
        return [frames[0], raw[:cut]] if self.rng.random() < 0.8 else [frames[0]]

    def bit_flip(self) -> list[bytes]:
        frames = [bytearray(f) for f in encode(self.valid())]
        target = frames[1] if self.rng.random() < 0.85 else frames[0]
        for _ in range(self.rng.randint(1, 3)):
            if target:
                i = self.rng.randrange(len(target))
                target[i] ^= 1 << self.rng.randrange(8)
        return [bytes(f) for f in frames]

    def extra_frames(self) -> list[bytes]:
        return encode(self.valid()) + [self.blob(32) for _ in range(self.rng.randint(1, 2))]

    def stream_ops(self) -> list[bytes]:
        r = self.rng
        kind = r.choice((p.Append, p.End, p.Cancel, p.Open, p.Speak))
        stream = r.choice(STREAMS + ("never-opened", "\u00e9\u4e2d", " "))
        if kind is p.Append:
            return encode(p.Append(stream=stream, text=r.choice(TEXTS)))
        if kind is p.Speak:
            return encode(p.Speak(stream=stream, text=r.choice(TEXTS)))
        if kind is p.Open:
            return encode(p.Open(stream=stream))
        return encode(kind(stream=stream))

    def huge_stream_id(self) -> list[bytes]:
        stream = "s" * self.rng.choice((201, 1000, 5000))
        kind = self.rng.choice((p.Append, p.End, p.Cancel, p.Open))
        msg = p.Append(stream=stream, text="Hi.") if kind is p.Append else kind(stream=stream)
        return encode(msg)

    def internal_kind(self) -> list[bytes]:
        """Messages only the service's own processes may send: a client gets bad_request."""
        r = self.rng
        msg = r.choice((
            p.Shutdown(reason="fuzz"), p.Hello(coordinator_pid=1), p.Heartbeat(worker="w0"),
            p.Dead(worker="w0", reason="fuzz"), p.CancelStream(stream="s1", below_epoch=9),
            p.SinkDone(stream="s1"), p.SinkClose(stream="s1"), p.Done(stream="a"),
            p.AudioPiece(stream="s1", epoch=0, chunk_index=0, piece_index=0, sample_offset=0, sample_count=2,
                         sample_rate=22050, final=True, pcm=b"\0" * 4),
        ))
        return encode(msg)


def expected_decode_error(frames: list[bytes]) -> str | None:
    """The codec's verdict on frames, as the service will reach it: the error code, or None when it decodes."""
    try:
        decode(frames)
    except DecodeError as exc:
        return exc.code
    return None
