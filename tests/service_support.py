"""Helpers for tests that talk to a running service through the real client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from pipeline.client import Client, ServiceError
from pipeline.wire import protocol as p


@dataclass
class Spoken:
    blocks: list = field(default_factory=list)
    metrics: dict | None = None
    sample_rate: int = 0
    error: ServiceError | None = None
    accepted: p.Accepted | None = None
    chunks: list[p.ChunkInfo] = field(default_factory=list)  # the stream's chunk events, as they came
    client_ttfa_ms: float | None = None  # from the request to the first block, as the client saw it

    @property
    def pcm(self) -> np.ndarray:
        return np.frombuffer(b"".join(bytes(b.pcm) for b in self.blocks), "<i2")

    def assert_in_order(self, start_seq: int = 0, start_offset: int = 0) -> None:
        offset = start_offset
        for seq, block in enumerate(self.blocks, start_seq):
            assert block.seq == seq
            assert block.sample_offset == offset
            offset += block.sample_count


async def speak(endpoint: str, text: str, **kwargs) -> Spoken:
    async with Client(endpoint, timeout_s=60) as client:
        return await collect(client.speak(text, **kwargs))


async def collect(utt) -> Spoken:
    out = Spoken()
    try:
        async for block in utt:
            out.blocks.append(block)
    except ServiceError as exc:
        out.error = exc
    out.metrics = utt.metrics
    out.sample_rate = utt.accepted.sample_rate if utt.accepted else 0
    out.accepted = utt.accepted
    out.chunks = list(utt.chunks)
    out.client_ttfa_ms = utt.client_ttfa_ms
    return out


def run(coro):
    return asyncio.run(coro)
