"""One stream's replies, taken from the client library as fast as they come, for a reader that may be slower.

The HTTP or WebSocket peer reads at its own pace; the relay holds what it has
not taken yet, at most ``max_backlog_s`` of audio (the service's
``max_client_backlog_s``), so a slow reader never makes the gateway's memory
grow. Past that bound the stream is cancelled and the reader told why, since
dropping audio in the middle of a file would corrupt it. Audio is forwarded as
it comes, whatever the size of each piece.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from pipeline.client import ServiceError, Utterance, within
from pipeline.wire.protocol import Accepted, ChunkInfo

log = logging.getLogger("xtts_stream.gateway")
CANCEL_PATIENCE_S = 1.0  # a cancel that cannot even be sent (no coordinator) is given up


@dataclass
class Item:
    kind: str                      # "accepted", "audio", "chunk", "done" or "error"
    pcm: bytes = b""
    sample_rate: int = 0
    chunk: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: ServiceError | None = None


class Relay:
    def __init__(self, utt: Utterance, max_backlog_s: float):
        self.utt = utt
        self.max_backlog_s = max_backlog_s
        self.held = 0
        self.finished = False  # a done or an error came: the stream is over at the service
        self._items: asyncio.Queue[Item] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> "Relay":
        self._task = asyncio.get_running_loop().create_task(self._pull())
        return self

    async def next(self) -> list[Item]:
        """Everything that arrived since the last call (waits for at least one item); adjacent audio joined."""
        items = [await self._items.get()]
        while not self._items.empty():
            items.append(self._items.get_nowait())
        out: list[Item] = []
        for item in items:
            if item.kind == "audio":
                self.held -= len(item.pcm)
                if out and out[-1].kind == "audio":
                    out[-1].pcm += item.pcm
                    continue
            out.append(item)
        return out

    def sample_rate(self, items: list[Item]) -> int:
        """The stream's rate: from its acceptance, else from its audio."""
        if self.utt.accepted is not None:
            return self.utt.accepted.sample_rate
        return next((i.sample_rate for i in items if i.kind == "audio"), 0)

    async def close(self) -> None:
        """The reader is gone or done: a stream still running at the service is cancelled there."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not self.finished:
            self.finished = True
            await self.cancel()

    async def cancel(self) -> None:
        try:
            await within(self.utt.cancel(), CANCEL_PATIENCE_S)
        except (asyncio.TimeoutError, TimeoutError, ServiceError):
            log.warning("could not cancel stream %s at the service", self.utt.stream)

    async def _pull(self) -> None:
        try:
            # Audio as the service sent it (spans), with each chunk's record just before its first audio.
            async for msg in self.utt.messages():
                if isinstance(msg, Accepted):
                    self._items.put_nowait(Item("accepted", sample_rate=msg.sample_rate))
                    continue
                if isinstance(msg, ChunkInfo):
                    self._items.put_nowait(Item("chunk", chunk=chunk_record(msg)))
                    continue
                pcm = bytes(msg.pcm)
                self.held += len(pcm)
                self._items.put_nowait(Item("audio", pcm=pcm, sample_rate=msg.sample_rate))
                if self.held > self.max_backlog_s * 2 * msg.sample_rate:
                    await self._too_slow()
                    return
            self.finished = True
            self._items.put_nowait(Item("done", metrics=dict(self.utt.metrics or {})))
        except ServiceError as exc:
            self.finished = True
            self._items.put_nowait(Item("error", error=exc))
        except Exception as exc:  # a bug here must end this stream, not hang its reader
            log.exception("relaying stream %s failed", self.utt.stream)
            self.finished = True
            self._items.put_nowait(Item("error", error=ServiceError("internal", f"gateway error: {exc}")))

    async def _too_slow(self) -> None:
        self.finished = True
        await self.cancel()
        self._items.put_nowait(Item("error", error=ServiceError(
            "slow_client", f"the reader fell more than {self.max_backlog_s:g} s of audio behind the service "
            f"(max_client_backlog_s); the stream was cancelled")))


CHUNK_FIELDS = ("index", "text", "text_start", "text_end", "sample_offset")


def chunk_record(record: ChunkInfo) -> dict[str, Any]:
    return {k: getattr(record, k) for k in CHUNK_FIELDS}
