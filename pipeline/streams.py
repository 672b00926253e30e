"""One stream's state in the coordinator: its text, chunker, reassembler and clocks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .chunker import Chunker
from .reassembler import Reassembler
from .settings import Profile


@dataclass
class StreamState:
    sid: str                 # unique inside the service
    client: bytes            # ROUTER identity of the client connection
    client_stream: str       # the id the client chose
    profile: Profile
    language: str
    voice: str
    deliver: str
    chunker: Chunker
    reassembler: Reassembler
    sample_rate: int
    t_accept: float = field(default_factory=time.monotonic)
    t_last_text: float = field(default_factory=time.monotonic)
    text: str = ""
    epoch: int = 0
    ended: bool = False       # the client sent End (or Speak)
    closed: bool = False      # SinkClose sent; waiting for SinkDone
    cancelled: bool = False
    error: str = ""
    worker: bytes | None = None
    chunks: int = 0
    blocks: int = 0
    blocks_dropped: int = 0   # not taken by a client that reads too slowly
    t_first_block: float | None = None
    t_last_block: float | None = None

    def audio_s(self) -> float:
        return self.reassembler.samples_emitted / self.sample_rate

    def metrics(self, worker_info: dict[str, Any]) -> dict[str, Any]:
        audio_s = self.audio_s()
        ttfa = (self.t_first_block - self.t_accept) * 1000 if self.t_first_block else None
        elapsed = (self.t_last_block or time.monotonic()) - self.t_accept
        return {
            "ttfa_ms": round(ttfa, 3) if ttfa is not None else None,
            "rtf": round(elapsed / audio_s, 4) if audio_s else None,
            "audio_s": round(audio_s, 6),
            "chunks": self.chunks,
            "blocks": self.blocks,
            "blocks_dropped_slow_client": self.blocks_dropped,
            "seam_violations": self.reassembler.seam_violations,
            "violations": dict(self.reassembler.violations),
            "profile": self.profile.name,
            "epoch": self.epoch,
            "cancelled": self.cancelled,
            **worker_info,
        }
