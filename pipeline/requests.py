"""What the coordinator does with each client request and each returning piece.

Split from `coordinator.py` so that the socket loops stay short: this module
holds the stream lifecycle (open, append, end, cancel, finish, fail) and the
dispatch of chunks, including dispatching them again after a worker dies.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import protocol as p
from .chunker import Chunker, base_language
from .reassembler import Block, Reassembler
from .settings import SettingsError
from .streams import StreamState

if TYPE_CHECKING:
    from .coordinator import Coordinator
    from .worker_pool import WorkerHandle

log = logging.getLogger("xtts_stream.requests")

MAX_STREAM_ID = 200
SINK_PATIENCE_S = 2.0  # a new stream waits this long for a restarting sink before it is refused
DELIVERIES = ("client", "none", "speakers")


class RequestError(Exception):
    def __init__(self, code: str, message: str, stream: str = ""):
        super().__init__(message)
        self.code = code
        self.stream = stream


def _inside(root_dir: str, name: str) -> Path | None:
    """``name`` resolved inside ``root_dir``, or None when it is absolute, escapes it or is not a path."""
    if not name or "\x00" in name or Path(name).is_absolute():
        return None
    root = Path(root_dir).expanduser().resolve()
    path = (root / name).resolve()
    return path if root in path.parents else None


class StreamRequests:
    def __init__(self, coordinator: "Coordinator"):
        self.c = coordinator
        self.by_client: dict[tuple[bytes, str], StreamState] = {}
        self._next_sid = 0
        self._boot = f"{os.getpid():x}"
        self.wav_paths: set[str] = set()  # held by open streams: one writer per file

    # -- requests ------------------------------------------------------------

    async def handle(self, identity: bytes, msg: p.Message) -> None:
        if isinstance(msg, p.Speak):
            self._check_whole_text(msg)
            st = await self._open(identity, msg)
            if not st.error:  # the client may have vanished while it was accepted
                await self._append(st, msg.text)
                await self._end(st)
        elif isinstance(msg, p.Open):
            await self._open(identity, msg)
        elif isinstance(msg, p.Append):
            await self._append(self._stream(identity, msg.stream), msg.text)
        elif isinstance(msg, p.End):
            await self._end(self._stream(identity, msg.stream))
        elif isinstance(msg, p.Cancel):
            await self._cancel(self._stream(identity, msg.stream))
        elif isinstance(msg, p.Status):
            await self.c.reply(identity, p.StatusReply(request=msg.request, healthy=bool(self.c.health.get("healthy")),
                                                       state=self.c.status()))
        else:
            raise RequestError("bad_request", f"'{msg.KIND.decode()}' is not a client request")

    def _check_whole_text(self, msg: p.Speak) -> None:
        """What can be refused before a stream opens is refused before it opens."""
        limit = self.c.settings.service.max_text_chars
        if len(msg.text) > limit:
            raise RequestError("text_too_long", f"text has {len(msg.text)} characters; the limit is {limit}", msg.stream)
        if not msg.text.strip():
            raise RequestError("nothing_to_speak", "the text is empty", msg.stream)

    def _stream(self, identity: bytes, stream: str) -> StreamState:
        st = self.by_client.get((identity, stream))
        if st is None:
            raise RequestError("unknown_stream", f"no open stream '{stream[:MAX_STREAM_ID]}' on this connection", stream)
        return st

    async def _open(self, identity: bytes, msg: p.Speak | p.Open) -> StreamState:
        svc = self.c.settings.service
        if not self.c.serving:
            raise RequestError("starting", "the service is starting: no worker is ready yet; retry shortly "
                               "(status shows serving: true once it is)", msg.stream)
        if not msg.stream or len(msg.stream) > MAX_STREAM_ID:
            raise RequestError("bad_stream_id", f"stream id must be 1..{MAX_STREAM_ID} characters")
        if (identity, msg.stream) in self.by_client:
            raise RequestError("stream_exists", f"stream '{msg.stream}' is already open on this connection", msg.stream)
        if sum(1 for key in self.by_client if key[0] == identity) >= svc.max_streams_per_client:
            raise RequestError("too_many_streams", f"at most {svc.max_streams_per_client} open streams per client", msg.stream)
        try:
            profile = self.c.settings.profile(msg.profile or None, msg.overrides)
        except SettingsError as exc:
            raise RequestError("bad_profile", str(exc), msg.stream) from None
        language = msg.language or svc.language
        limits = self._char_limits()
        if limits and base_language(language) not in limits:
            raise RequestError("bad_language", f"language '{language}' is not supported by this engine; "
                               f"valid: {', '.join(sorted(limits))}", msg.stream)
        st = self._new_stream(identity, msg, profile, language, limits, self._deliver(msg), self._voice(msg))
        if not await self.c.send_sink(p.SinkOpen(stream=st.sid, sample_rate=st.sample_rate,
                                                 prebuffer_ms=profile.prebuffer_ms, block_ms=profile.block_ms,
                                                 deliver=st.deliver, t_accept=st.t_accept),
                                      patience_s=SINK_PATIENCE_S):
            self._forget(st)
            raise RequestError("sink_unavailable", "the audio sink is restarting; send the request again shortly",
                               msg.stream)
        await self.c.reply(identity, p.Accepted(stream=msg.stream, profile=profile.name, sample_rate=st.sample_rate,
                                                block_samples=st.reassembler.block_samples))
        return st

    def _deliver(self, msg: p.Speak | p.Open) -> str:
        if msg.deliver in DELIVERIES:
            return msg.deliver
        name = msg.deliver[4:] if msg.deliver.startswith("wav:") else ""
        path = _inside(self.c.settings.service.wav_dir, name)
        if path is None or not name.endswith(".wav"):
            raise RequestError("bad_deliver", f"deliver must be one of {', '.join(DELIVERIES)} or wav:NAME.wav "
                               f"(a relative path inside the service's wav_dir)", msg.stream)
        if str(path) in self.wav_paths:
            raise RequestError("bad_deliver", f"wav:{name} is being written by another stream", msg.stream)
        return f"wav:{path}"

    def _voice(self, msg: p.Speak | p.Open) -> str:
        """A speaker name, or a reference file inside voices_dir: a client never names an arbitrary file."""
        if not msg.voice:
            return self.c.settings.service.voice
        if self.c.engine_info.get("engine") == "piper":
            raise RequestError("bad_voice", "the Piper engine has one voice; leave voice empty", msg.stream)
        if "/" not in msg.voice and "\\" not in msg.voice and not msg.voice.endswith(".wav"):
            return msg.voice
        path = _inside(self.c.settings.service.voices_dir, msg.voice)
        if path is None:
            raise RequestError("bad_voice", "voice must be a speaker name or NAME.wav inside the service's "
                               "voices_dir", msg.stream)
        return str(path)

    def _new_stream(self, identity, msg, profile, language, limits, deliver: str, voice: str) -> StreamState:
        self._next_sid += 1
        # Unique across coordinator restarts: a stale stream of a dead coordinator,
        # still known to a worker or the sink, can never be mistaken for a new one.
        sid = f"{self._boot}.{self._next_sid}"
        rate = self.c.sample_rate
        block_samples = max(1, rate * profile.block_ms // 1000)
        st = StreamState(sid=sid, client=identity, client_stream=msg.stream, profile=profile, language=language,
                         voice=voice, deliver=deliver,
                         chunker=Chunker(profile, language, stream=sid, char_limits=limits or None),
                         reassembler=Reassembler(sid, block_samples), sample_rate=rate)
        self.c.streams[sid] = st
        self.by_client[(identity, msg.stream)] = st
        if deliver.startswith("wav:"):
            self.wav_paths.add(deliver[4:])
        log.debug("stream %s opened for client %s stream %r (profile %s)", sid, identity.hex(), msg.stream, profile.name)
        return st

    def _char_limits(self) -> dict[str, int]:
        worker = self.c.pool.any_ready()
        return dict(worker.ready.char_limits) if worker else {}

    async def _append(self, st: StreamState, text: str) -> None:
        if st.cancelled or st.error:
            return  # deltas still in flight after a barge-in: nobody will hear them
        if st.ended:
            raise RequestError("stream_ended", f"stream '{st.client_stream}' has already ended", st.client_stream)
        limit = self.c.settings.service.max_text_chars
        if len(st.text) + len(text) > limit:
            await self.fail(st, "text_too_long", f"text exceeds {limit} characters per stream")
            return
        st.text += text
        st.t_last_text = time.monotonic()
        for chunk in st.chunker.feed(text):
            await self._dispatch(st, chunk)

    async def _end(self, st: StreamState) -> None:
        if st.cancelled or st.error:
            return
        if st.ended:
            raise RequestError("stream_ended", f"stream '{st.client_stream}' has already ended", st.client_stream)
        for chunk in st.chunker.flush():
            await self._dispatch(st, chunk)
        st.ended = True
        if st.chunks == 0:
            await self.fail(st, "nothing_to_speak", "the text has nothing speakable (empty, or only symbols)")
            return
        await self._maybe_finish(st)

    async def _cancel(self, st: StreamState) -> None:
        if st.cancelled or st.closed:
            return  # already cancelled, or all its audio is out and its done is on the way
        st.cancelled = True
        st.epoch += 1
        st.reassembler.cancel(st.epoch)
        self.c.backlog = [(t, ch) for t, ch in self.c.backlog if ch.stream != st.sid]
        await self.c.pool.cancel(st.sid, st.epoch)
        await self._close(st, cancelled=True)

    # -- dispatch ------------------------------------------------------------

    async def _dispatch(self, st: StreamState, chunk) -> None:
        st.reassembler.register_chunk(chunk.index, chunk.start, chunk.end, st.text)
        st.chunks += 1
        per_char = self.c.settings.service.forced_tokens_per_char
        forced = max(2, round(per_char * len(chunk.text))) if per_char > 0 else 0
        await self.send_chunk(st, p.SynthChunk(
            stream=st.sid, epoch=st.epoch, chunk_index=chunk.index, text=chunk.text, language=st.language,
            voice=st.voice, sampling=st.profile.sampling(), priority=chunk.index, forced_tokens=forced))

    async def send_chunk(self, st: StreamState, chunk: p.SynthChunk) -> None:
        worker = self.c.pool.workers.get(st.worker) if st.worker else None
        worker = worker or self.c.pool.pick()
        if worker is None:
            self.c.backlog.append((time.monotonic(), chunk))
            return
        st.worker = worker.identity
        await self.c.pool.dispatch(worker, chunk)

    async def send_chunk_by_sid(self, chunk: p.SynthChunk) -> None:
        st = self.c.streams.get(chunk.stream)
        if st is not None and st.epoch == chunk.epoch and not st.cancelled:
            await self.send_chunk(st, chunk)

    async def redispatch(self, worker: "WorkerHandle", reason: str) -> None:
        for (sid, epoch, index), chunk in sorted(worker.inflight.items(), key=lambda kv: kv[1].priority):
            st = self.c.streams.get(sid)
            if st is None or st.epoch != epoch or st.cancelled or st.closed:
                continue
            st.worker = None
            if st.reassembler.restart_chunk(index):
                await self.send_chunk(st, chunk)
            else:
                await self.fail(st, "worker_died", f"worker {worker.name} died ({reason}) while chunk {index} "
                                f"was partly delivered; the stream cannot continue without a seam")
        worker.inflight.clear()

    async def expire_idle(self) -> None:
        timeout = self.c.settings.service.stream_idle_timeout_s
        now = time.monotonic()
        for st in [s for s in self.c.streams.values() if not s.ended and now - s.t_last_text > timeout]:
            await self.fail(st, "idle_timeout", f"no text or end for {timeout:.0f} s; the stream was closed")

    async def expire_backlog(self) -> None:
        """Chunks that no worker took in time fail their streams instead of waiting forever."""
        if not self.c.backlog or self.c.pool.workers:
            return
        timeout = self.c.settings.service.worker_ready_timeout_s
        now = time.monotonic()
        for sid in {ch.stream for t, ch in self.c.backlog if now - t > timeout}:
            st = self.c.streams.get(sid)
            if st is not None:
                await self.fail(st, "no_worker", f"no worker became available within {timeout:.0f} s")

    # -- audio back ----------------------------------------------------------

    async def on_piece(self, piece: p.AudioPiece) -> None:
        st = self.c.streams.get(piece.stream)
        if st is None or st.closed:
            return
        await self._emit(st, st.reassembler.add_piece(piece))
        await self._maybe_finish(st)

    async def on_chunk_failed(self, msg: p.ChunkFailed) -> None:
        st = self.c.streams.get(msg.stream)
        if st is None or st.closed or msg.epoch != st.epoch:
            return
        log.warning("stream %s chunk %d failed: %s", st.sid, msg.chunk_index, msg.message)
        await self.c.reply(st.client, p.Error(code="chunk_failed", stream=st.client_stream,
                                              message=f"chunk {msg.chunk_index} could not be spoken: {msg.message}"))
        await self._emit(st, st.reassembler.chunk_failed(msg.chunk_index))
        await self._maybe_finish(st)

    async def _emit(self, st: StreamState, blocks: list[Block]) -> None:
        for block in blocks:
            now = time.monotonic()
            st.t_first_block = st.t_first_block or now
            st.t_last_block = now
            st.blocks += 1
            sent = await self.c.send_sink(p.AudioBlock(stream=st.sid, epoch=st.epoch, seq=block.seq,
                                                       sample_offset=block.sample_offset,
                                                       sample_count=block.sample_count,
                                                       sample_rate=st.sample_rate, pcm=block.pcm))
            if not sent:
                await self.fail(st, "sink_unavailable", "the audio sink stopped taking audio; the stream cannot "
                                "finish, send it again")
                return

    async def _maybe_finish(self, st: StreamState) -> None:
        if st.ended and not st.closed and st.reassembler.complete:
            await self._emit(st, st.reassembler.finish())
            await self._close(st)

    async def _close(self, st: StreamState, cancelled: bool = False, error: str = "") -> None:
        st.closed = True
        await self.c.send_sink(p.SinkClose(stream=st.sid, cancelled=cancelled, error=error))

    async def deliver_block(self, block: p.AudioBlock) -> None:
        st = self.c.streams.get(block.stream)
        if st is None or st.cancelled or block.epoch != st.epoch:
            return
        block.stream = st.client_stream
        if not await self.c.reply(st.client, block):
            st.blocks_dropped += 1

    async def on_sink_done(self, msg: p.SinkDone) -> None:
        st = self.c.streams.get(msg.stream)
        if st is None:
            return
        self._forget(st)
        if st.error:
            return
        if msg.metrics.get("error"):
            await self.c.reply(st.client, p.Error(code="delivery_failed", stream=st.client_stream,
                                                  message=f"the sink could not deliver: {msg.metrics['error']}"))
            return
        # The coordinator's own figures win where both name one (audio_s, blocks, ...).
        metrics = {**msg.metrics, **st.metrics(self.c.engine_info)}
        await self.c.reply(st.client, p.Done(stream=st.client_stream, metrics=metrics))

    # -- failure -------------------------------------------------------------

    async def fail(self, st: StreamState, code: str, message: str) -> None:
        """End a stream with an error: the client hears why, the sink and workers let go of it."""
        if st.error:
            return
        st.error = code
        log.warning("stream %s failed (%s): %s", st.sid, code, message)
        if not st.cancelled:
            st.epoch += 1
            await self.c.pool.cancel(st.sid, st.epoch)
        self.c.backlog = [(t, ch) for t, ch in self.c.backlog if ch.stream != st.sid]
        if not st.closed:
            await self._close(st, error=code)
        self._forget(st)
        await self.c.reply(st.client, p.Error(code=code, message=message, stream=st.client_stream))

    async def abandon(self, st: StreamState) -> None:
        """The client vanished: free everything the stream holds, tell nobody."""
        st.error = st.error or "client_gone"
        st.epoch += 1
        await self.c.pool.cancel(st.sid, st.epoch)
        if not st.closed:
            await self._close(st, cancelled=True)
        self._forget(st)

    def _forget(self, st: StreamState) -> None:
        self.c.streams.pop(st.sid, None)
        if st.deliver.startswith("wav:"):
            self.wav_paths.discard(st.deliver[4:])
        if self.by_client.get((st.client, st.client_stream)) is st:
            del self.by_client[(st.client, st.client_stream)]
