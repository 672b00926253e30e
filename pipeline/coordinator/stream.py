"""One stream inside the coordinator: its text, chunker, reassembler, playback clock and pacer.

A stream only computes; it never sends. What it decides to send it returns, and
the core routes it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.playback import PlaybackClock
from pipeline.settings import Profile
from pipeline.text.chunker import Chunk, Chunker
from pipeline.wire.protocol import DELIVER_CLIENT, DELIVER_SPEAKERS, Audio, ChunkInfo, Message

from .pacing import Pacer
from .reassembler import Reassembler, Span

CLIENT_DELIVERIES = ("client", "none")  # audio goes (or would go) back on the client's connection
MAX_MESSAGE_PCM = 65536  # bytes of audio joined into one message (a piece larger than this goes alone)


class TextBuffer:
    """The stream's text not yet covered by a chunk's span, addressed by offsets into all text received.

    Deltas are kept as parts and joined only when a slice is asked for, so a
    stream fed one character at a time costs linear time, not quadratic.
    """

    def __init__(self) -> None:
        self.base = 0
        self.parts: list[str] = []
        self.length = 0  # characters received in all

    def append(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def __getitem__(self, span: slice) -> str:
        text = self._joined()
        return text[max(0, span.start - self.base):max(0, span.stop - self.base)]

    def trim(self, upto: int) -> None:
        if upto > self.base:
            text = self._joined()
            self.parts = [text[upto - self.base:]]
            self.base = upto

    def _joined(self) -> str:
        if len(self.parts) != 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0]


@dataclass
class Stream:
    sid: str  # unique inside the service
    client: bytes  # ROUTER identity of the client connection
    client_stream: str  # the id the client chose
    profile: Profile
    language: str
    voice: str
    deliver: str  # client | none | speakers | wav
    wav_path: str
    chunker: Chunker
    sample_rate: int
    t_accept: float
    reassembler: Reassembler = field(init=False)
    clock: PlaybackClock = field(init=False)
    pacer: Pacer = field(init=False)
    text: TextBuffer = field(default_factory=TextBuffer)
    unfed: deque = field(default_factory=deque)  # deltas received but not yet chunked
    unfed_chars: int = 0
    end_pending: bool = False  # End received while deltas wait to be chunked
    t_last_text: float = 0.0
    epoch: int = 0
    ended: bool = False  # every delta chunked and the chunker flushed
    closing: bool = False  # all audio out; waiting for the sink to finish
    cancelled: bool = False
    error: str = ""
    worker: bytes | None = None
    chunks: int = 0
    messages: int = 0  # audio messages sent
    est_audio_s: float = 0.0  # audio the registered chunks should give (profile's speaking rate)
    est_error_s: float = 0.0  # for the chunks finished so far: their real audio minus their estimate
    chunk_est: dict[int, float] = field(default_factory=dict)  # each unfinished chunk's estimate
    audio_before: dict[int, float] = field(default_factory=dict)  # estimated audio before each chunk (s)
    t_progress: float = 0.0  # the last time audio came out or a chunk went to a worker
    samples_dropped: int = 0  # not taken by a client that reads too slowly
    messages_dropped: int = 0
    t_first_chunk: float | None = None
    t_first_piece: float | None = None
    t_first_release: float | None = None
    t_last_release: float | None = None
    t_first_send: float | None = None
    engine_stage_ms: tuple[float, float] | None = None  # (queued, engine) of the first piece
    chunk_texts: dict[int, Chunk] = field(default_factory=dict)  # until the chunk's first audio leaves
    wake: float | None = None  # when the pacer next lets held audio out (the core's timer entry)
    # Chunks built but not sent: a paced stream's chunks wait until their audio is needed within the
    # dispatch horizon, so a barge-in wastes little synthesis and the coordinator holds little audio.
    waiting: deque = field(default_factory=deque)  # SynthChunks built but not sent

    def __post_init__(self) -> None:
        p = self.profile
        self.block_samples = max(1, self.sample_rate * p.block_ms // 1000)
        self.reassembler = Reassembler(self.sid)
        self.clock = PlaybackClock(self.sample_rate, p.prebuffer_ms, self.t_accept)
        paced = self.deliver in (DELIVER_CLIENT, DELIVER_SPEAKERS)
        # The pre-buffer must fit in the lead, or playback could never start.
        floor_s = (p.prebuffer_ms + p.block_ms) / 1000
        lead = round(max(p.max_lead_s, floor_s) * self.sample_rate) if paced and p.max_lead_s > 0 else 0
        self.pacer = Pacer(self.clock, lead, self.block_samples)
        self.t_last_text = self.t_accept
        self.t_progress = self.t_accept

    # -- text ----------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Still taking text and audio: not cancelled, failed or finishing."""
        return not (self.cancelled or self.error or self.closing)

    @property
    def to_sink(self) -> bool:
        return self.deliver in (DELIVER_SPEAKERS, "wav")

    @property
    def wire_name(self) -> str:
        """The stream's name on its audio's way out: the client's id, or the service's for the sink."""
        return self.sid if self.to_sink else self.client_stream

    @property
    def text_chars(self) -> int:
        return self.text.length + self.unfed_chars

    def take_text(self, text: str, now: float) -> None:
        if text:
            self.unfed.append(text)
            self.unfed_chars += len(text)
        self.t_last_text = now

    def chunk_some(self, budget: int) -> list[Chunk]:
        """Feed at most ``budget`` characters of waiting text to the chunker (the rest waits its turn)."""
        chunks: list[Chunk] = []
        while self.unfed and budget > 0:
            delta = self.unfed.popleft()
            if len(delta) > budget:
                delta, rest = delta[:budget], delta[budget:]
                self.unfed.appendleft(rest)
            self.unfed_chars -= len(delta)
            budget -= len(delta)
            self.text.append(delta)
            chunks += self.chunker.feed(delta)
        return chunks

    def register(self, chunk: Chunk, now: float) -> None:
        self.reassembler.register_chunk(chunk.index, chunk.start, chunk.end, self.text)
        self.text.trim(self.reassembler.covered_to)
        self.chunk_texts[chunk.index] = chunk
        self.chunks += 1
        if self.t_first_chunk is None:
            self.t_first_chunk = now

    def due_ms(self, index: int, now: float) -> float:
        """How soon the listener needs chunk ``index``'s first audio: once the audio before it has played
        (estimated from the text, corrected by the real length of every chunk finished so far)."""
        if index == 0:
            return 0.0
        start = self.clock.start if self.clock.start is not None else self.t_accept + self.profile.prebuffer_ms / 1000
        return max(0.0, (start + self.audio_before[index] + self.est_error_s - now) * 1000)

    def estimate(self, chunk: Chunk) -> None:
        est = len(chunk.text) / self.profile.chars_per_second / self.profile.speed
        self.audio_before[chunk.index] = self.est_audio_s
        self.chunk_est[chunk.index] = est
        self.est_audio_s += est

    def chunk_finished(self, index: int, samples: int) -> None:
        """A chunk's real length is known: later deadlines move by what its estimate was off."""
        est = self.chunk_est.pop(index, None)
        self.audio_before.pop(index, None)
        if est is not None:
            self.est_error_s += samples / self.sample_rate - est

    # -- audio ---------------------------------------------------------------

    def released(self, spans: list[Span], now: float) -> None:
        if not spans:
            return
        self.t_progress = now
        if self.t_first_release is None:
            self.t_first_release = now
        self.t_last_release = now
        for span in spans:
            self.pacer.push(span)

    def outgoing(self, now: float) -> list[Message]:
        """Audio (and chunk events) that may leave now, clock advanced as it leaves: spans that leave
        together are joined into messages of at most MAX_MESSAGE_PCM bytes."""
        spans = self.pacer.take(now)
        if not spans:
            return []
        self.t_progress = now
        if self.t_first_send is None:
            self.t_first_send = now
        out: list[Message] = []
        group: list[Span] = []
        size = 0
        for span in spans:
            if group and size + len(span.pcm) > MAX_MESSAGE_PCM:
                out.append(self._audio(group, now))
                group, size = [], 0
            if span.chunk_start is not None:
                out.append(self._chunk_info(span))
            group.append(span)
            size += len(span.pcm)
        out.append(self._audio(group, now))
        return out

    def _audio(self, spans: list[Span], now: float) -> Audio:
        pcm = spans[0].pcm if len(spans) == 1 else b"".join(s.pcm for s in spans)
        count = sum(s.sample_count for s in spans)
        self.clock.accept(self.epoch, self.messages, count, now)
        msg = Audio(stream=self.wire_name, epoch=self.epoch, seq=self.messages, sample_offset=spans[0].sample_offset,
                    sample_count=count, sample_rate=self.sample_rate, pcm=pcm)
        self.messages += 1
        return msg

    def _chunk_info(self, span: Span) -> ChunkInfo:
        chunk = self.chunk_texts.pop(span.chunk_start)
        return ChunkInfo(stream=self.client_stream, index=chunk.index, text=chunk.text, text_start=chunk.start,
                         text_end=chunk.end, sample_offset=span.sample_offset)

    @property
    def all_out(self) -> bool:
        """Every chunk spoken (or failed) and every sample sent."""
        return self.ended and self.reassembler.complete and not self.pacer.held

    # -- metrics -------------------------------------------------------------

    def metrics(self, engine_info: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        audio_s = self.reassembler.samples_released / self.sample_rate
        ttfa = _ms(self.t_first_release, self.t_accept)
        last = self.t_last_release if self.t_last_release is not None else (now if now is not None else time.monotonic())
        elapsed = last - self.t_accept
        out = {
            **self.clock.metrics(),
            "ttfa_ms": ttfa,
            "first_send_ms": _ms(self.t_first_send, self.t_accept),
            "rtf": round(elapsed / audio_s, 4) if audio_s else None,
            "audio_s": round(audio_s, 6),
            "chunks": self.chunks,
            "messages": self.messages,
            "blocks": -(-self.clock.samples // self.block_samples),
            "max_lead_ms": round(self.pacer.max_lead * 1000 / self.sample_rate),
            "audio_dropped_slow_client_s": round(self.samples_dropped / self.sample_rate, 6),
            "messages_dropped_slow_client": self.messages_dropped,
            "seam_violations": self.reassembler.seam_violations,
            "violations": dict(self.reassembler.violations),
            "profile": self.profile.name,
            "deliver": self.deliver,
            "epoch": self.epoch,
            "cancelled": self.cancelled,
            "stages_ms": self.stages_ms(),
            # The engine speed the chunker sized chunks by (None: a streaming engine, no budget).
            "chunk_budget_chars_per_s": self.chunker.engine_chars_per_s,
            **engine_info,
        }
        return out

    def stages_ms(self) -> dict[str, float | None]:
        """Where the time to first audio went (first chunk only)."""
        queued, engine = self.engine_stage_ms or (None, None)
        transport = None
        if None not in (self.t_first_chunk, self.t_first_piece, queued, engine):
            transport = round((self.t_first_piece - self.t_first_chunk) * 1000 - queued - engine, 3)
        return {
            "chunker": _ms(self.t_first_chunk, self.t_accept),
            "queue_wait": queued,
            "engine_first_piece": engine,
            "transport": transport,
            "reassembler": _ms(self.t_first_release, self.t_first_piece),
            "delivery": _ms(self.t_first_send, self.t_first_release),
        }


def _ms(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier) * 1000, 3)
