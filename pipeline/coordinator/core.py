"""The coordinator's core: every stream decision, with no socket and no event loop.

Each entry point takes a message (or an event: a tick, a client gone, a worker's
process exited) and the current time, and appends what must be sent to
``self.out`` as ``(destination, address, message)``; the shell
(`pipeline.coordinator.shell`) drains it onto the sockets. So the whole stream
lifecycle - open, append, end, cancel, reassembly, pacing, worker death and
re-dispatch, slow and vanished clients - runs in plain unit tests.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from pipeline.settings import Settings
from pipeline.text.chunker import Chunk, Chunker
from pipeline.text.limits import forced_tokens
from pipeline.wire import protocol as p
from pipeline.wire.codec import DecodeError, decode

from .admission import Refused, delivery_for, language_for, profile_for, voice_for
from .metrics import ServiceMetrics
from .stream import Stream
from .workers import WorkerHandle, WorkerRegistry

log = logging.getLogger("xtts_stream.coordinator")

CLIENT, WORKER, SINK, KILL = "client", "worker", "sink", "kill"
TEXT_SLICE = 4096  # characters chunked per turn of the event loop: long text never stalls it
MAX_REMEMBERED_CANCELS = 4096
SPEED_MARGIN = 0.8  # the measured speed varies with the machine's load; plan for less
MIN_WAKE_GAP_S = 0.001


class CoordinatorCore:
    def __init__(self, settings: Settings, boot_id: str, pid: int = 0):
        self.settings = settings
        self.svc = settings.service
        self.streams: dict[str, Stream] = {}
        self.by_client: dict[tuple[bytes, str], Stream] = {}
        self.per_client: Counter[bytes] = Counter()
        self.workers = WorkerRegistry(self.svc.heartbeat_timeout_s)
        self.backlog: list[tuple[float, p.SynthChunk]] = []  # chunks waiting for any worker to be ready
        self.unchunked: dict[str, Stream] = {}  # streams with text waiting to be chunked, in turn order
        self.out: list[tuple[str, Any, p.Message]] = []
        # The `done` metrics of streams that ended since the last take(), and of those in the batch the
        # shell is sending now: audio of that batch dropped for a slow client is still counted in them.
        self._ending: dict[tuple[bytes, str], dict[str, Any]] = {}
        self._sending_done: dict[tuple[bytes, str], dict[str, Any]] = {}
        self.engine_info: dict[str, Any] = {}
        self.voices: list[str] = []
        self.char_limits: dict[str, int] = {}
        self.sample_rate = 0
        self.health: dict[str, Any] = {"healthy": True}
        self.counters: Counter[str] = Counter()  # events for status (clients gone, audio dropped, ...)
        self.metrics = ServiceMetrics()  # histograms and counters for monitoring (the gateway's /metrics)
        self.stopping = False
        self.draining = False
        self.drain_deadline = 0.0
        self._boot = boot_id
        self.pid = pid
        self._sids = itertools.count(1)
        self._wakes: list[tuple[float, int, str]] = []
        self._wake_seq = itertools.count()
        self._cancelled: OrderedDict[tuple[bytes, str], None] = OrderedDict()
        self._greeted: set[bytes] = set()
        self._sink_pid: int | None = None
        self._wav_paths: set[str] = set()

    @property
    def serving(self) -> bool:
        return self.sample_rate > 0

    def take(self) -> list[tuple[str, Any, p.Message]]:
        out, self.out = self.out, []
        self._sending_done, self._ending = self._ending, {}
        return out

    def reply(self, identity: bytes, msg: p.Message) -> None:
        self.out.append((CLIENT, identity, msg))

    # -- client requests -------------------------------------------------------

    def client_frames(self, identity: bytes, frames: list, now: float) -> None:
        try:
            msg = decode(frames)
        except DecodeError as exc:
            self._refuse(identity, exc.code, str(exc), exc.stream)
            return
        self.client_message(identity, msg, now)

    def client_message(self, identity: bytes, msg: p.Message, now: float) -> None:
        try:
            self._route_request(identity, msg, now)
        except Refused as exc:
            self._refuse(identity, exc.code, str(exc), exc.stream)

    def _refuse(self, identity: bytes, code: str, message: str, stream: str = "") -> None:
        self.metrics.observe_error(code, ends_stream=False)
        self.reply(identity, p.Error(code=code, message=message, stream=stream))

    def _route_request(self, identity: bytes, msg: p.Message, now: float) -> None:
        if isinstance(msg, p.Speak):
            self._check_whole_text(msg)
            st = self._open(identity, msg, now)
            st.take_text(msg.text, now)
            st.end_pending = True
            self._chunk(st, now)
        elif isinstance(msg, p.Open):
            self._open(identity, msg, now)
        elif isinstance(msg, p.Status):
            self.reply(identity, p.StatusReply(request=msg.request, healthy=bool(self.health.get("healthy")),
                                               state=self.status(now)))
        elif isinstance(msg, (p.Append, p.End, p.Cancel)):
            st = self._stream(identity, msg)
            if st is not None:
                self._stream_request(st, msg, now)
        else:
            raise Refused("bad_request", f"'{msg.KIND.decode()}' is not a client request")

    def _stream(self, identity: bytes, msg: p.Append | p.End | p.Cancel) -> Stream | None:
        st = self.by_client.get((identity, msg.stream))
        if st is not None:
            return st
        if (identity, msg.stream) in self._cancelled:
            return None  # deltas still on their way after a barge-in: nobody will hear them
        raise Refused("unknown_stream", f"no open stream '{msg.stream}' on this connection", msg.stream)

    def _stream_request(self, st: Stream, msg: p.Append | p.End | p.Cancel, now: float) -> None:
        if isinstance(msg, p.Cancel):
            if st.live:  # a closing stream's audio is all out: its done is on the way
                self.cancel(st, now)
            return
        if st.end_pending or st.ended:
            raise Refused("stream_ended", f"stream '{st.client_stream}' has already ended", st.client_stream)
        if isinstance(msg, p.End):
            st.end_pending = True
            st.t_last_text = now
        else:
            limit = self.svc.max_text_chars
            if st.text_chars + len(msg.text) > limit:
                self.fail(st, "text_too_long", f"text exceeds {limit} characters per stream")
                return
            st.take_text(msg.text, now)
        self._chunk(st, now)

    def _check_whole_text(self, msg: p.Speak) -> None:
        """What can be refused before a stream opens is refused before it opens."""
        limit = self.svc.max_text_chars
        if len(msg.text) > limit:
            raise Refused("text_too_long", f"text has {len(msg.text)} characters; the limit is {limit}", msg.stream)
        if msg.text.isspace() or not msg.text:
            raise Refused("nothing_to_speak", "the text is empty", msg.stream)

    # -- opening ---------------------------------------------------------------

    def _open(self, identity: bytes, msg: p.Speak | p.Open, now: float) -> Stream:
        self._check_capacity(identity, msg)
        profile = profile_for(self.settings, msg)
        language = language_for(msg, self.svc.language, self.char_limits)
        deliver, wav_path = delivery_for(msg, self.svc.wav_dir, self._wav_paths)
        voice = voice_for(msg, self.svc.voice, self.voices, self.svc.voices_dir)
        sid = f"{self._boot}.{next(self._sids)}"
        chunker = Chunker(profile, language, stream=sid, char_limits=self.char_limits or None,
                          engine_chars_per_s=self._chunk_engine_speed())
        st = Stream(sid=sid, client=identity, client_stream=msg.stream, profile=profile, language=language,
                    voice=voice, deliver=deliver, wav_path=wav_path, chunker=chunker, sample_rate=self.sample_rate,
                    t_accept=now)
        self.streams[sid] = st
        self.by_client[(identity, msg.stream)] = st
        self.per_client[identity] += 1
        self._cancelled.pop((identity, msg.stream), None)
        if wav_path:
            self._wav_paths.add(wav_path)
        self.counters["streams_opened"] += 1
        self.reply(identity, p.Accepted(stream=msg.stream, profile=profile.name, sample_rate=st.sample_rate,
                                        block_samples=st.block_samples,
                                        max_lead_ms=round(st.pacer.max_lead * 1000 / st.sample_rate)))
        if st.to_sink:
            self.out.append((SINK, None, p.SinkOpen(stream=sid, sample_rate=st.sample_rate,
                                                    prebuffer_ms=profile.prebuffer_ms,
                                                    deliver=p.WAV_PREFIX + wav_path if wav_path else deliver)))
        log.debug("stream %s opened for client %s stream %r (profile %s)", sid, identity.hex(), msg.stream, profile.name)
        return st

    def _chunk_engine_speed(self) -> float | None:
        """For an engine that speaks a chunk whole (Piper): the characters a second it can give this
        stream, so the chunker keeps a short first chunk's successor small enough to be ready in time.
        Measured by the workers, shared among the streams, with a margin; None for streaming engines."""
        workers = [w for w in self.workers.workers.values() if not w.ready.streaming and w.chars_per_s > 0]
        if not workers:
            return None
        speed = min(w.chars_per_s for w in workers) * len(workers)
        return SPEED_MARGIN * speed / (len(self.streams) + 1)

    def _check_capacity(self, identity: bytes, msg: p.Speak | p.Open) -> None:
        svc = self.svc
        if self.stopping:
            raise Refused("shutting_down", "the service is shutting down", msg.stream)
        if self.draining:
            raise Refused("shutting_down", "the service is draining (a restart or an update): it finishes the "
                          "streams it has and takes no new ones; connect to another instance, or retry shortly",
                          msg.stream)
        if not self.serving:
            raise Refused("starting", "the service is starting: no worker is ready yet; retry shortly "
                          "(status shows serving: true once it is)", msg.stream)
        if not msg.stream:
            raise Refused("bad_stream_id", "stream id must be 1 to 200 characters")
        if (identity, msg.stream) in self.by_client:
            raise Refused("stream_exists", f"stream '{msg.stream}' is already open on this connection", msg.stream)
        if self.per_client[identity] >= svc.max_streams_per_client:
            raise Refused("too_many_streams", f"at most {svc.max_streams_per_client} open streams per client",
                          msg.stream)
        if len(self.streams) >= svc.max_streams:
            raise Refused("service_busy", f"the service holds its limit of {svc.max_streams} open streams; "
                          f"retry shortly", msg.stream)
        if not self.per_client[identity] and len(self.per_client) >= svc.max_clients:
            raise Refused("service_busy", f"the service serves its limit of {svc.max_clients} client connections "
                          f"with open streams; retry shortly", msg.stream)

    # -- text to chunks --------------------------------------------------------

    def _chunk(self, st: Stream, now: float) -> None:
        """Chunk what the stream has waiting, one slice now; the rest on later turns (`pump`)."""
        for chunk in st.chunk_some(TEXT_SLICE):
            self._dispatch(st, chunk, now)
        if not st.live:
            return
        if st.unfed:
            self.unchunked[st.sid] = st
            return
        self.unchunked.pop(st.sid, None)
        if st.end_pending and not st.ended:
            self._end(st, now)

    def pump(self, now: float) -> bool:
        """One slice of waiting text for the next stream in turn; True while more waits."""
        if self.unchunked:
            sid = next(iter(self.unchunked))
            st = self.unchunked.pop(sid)
            if st.live:
                self._chunk(st, now)  # put back at the end of the turn order if text is left
        return bool(self.unchunked)

    def _end(self, st: Stream, now: float) -> None:
        for chunk in st.chunker.flush():
            self._dispatch(st, chunk, now)
        st.ended = True
        if st.chunks == 0:
            self.fail(st, "nothing_to_speak", "the text has nothing speakable (empty, or only symbols)")
            return
        self._maybe_finish(st, now)

    def _dispatch(self, st: Stream, chunk: Chunk, now: float) -> None:
        if not st.live:
            return
        st.register(chunk, now)
        st.estimate(chunk)
        per_char = self.svc.forced_tokens_per_char
        forced = forced_tokens(chunk.text, per_char) if per_char > 0 else 0
        st.waiting.append(p.SynthChunk(
            stream=st.sid, epoch=st.epoch, chunk_index=chunk.index, text=chunk.text, language=st.language,
            voice=st.voice, sampling=st.profile.sampling(), priority=chunk.index, forced_tokens=forced))
        self._deliver(st, now)  # sends it now, or schedules the wake-up that will

    def _send_waiting(self, st: Stream, now: float) -> float | None:
        """Send the stream's built chunks whose audio is needed within the dispatch horizon (all of them
        for an unpaced stream: nobody can interrupt it and its audio does not wait here). Returns when
        the next one will be, if one still waits."""
        horizon_ms = self.svc.dispatch_ahead_s * 1000
        while st.waiting:
            chunk = st.waiting[0]
            due = st.due_ms(chunk.chunk_index, now)
            if st.pacer.paced and horizon_ms > 0 and chunk.chunk_index > 0 and due > horizon_ms:
                return now + (due - horizon_ms) / 1000
            st.waiting.popleft()
            st.t_progress = now
            self._send_chunk(st, chunk, now)
        return None

    def _send_chunk(self, st: Stream, chunk: p.SynthChunk, now: float) -> None:
        """To the stream's worker (or the one with most room); its deadline as of now, also when it is
        sent again after a worker died or came back."""
        chunk.due_ms = round(st.due_ms(chunk.chunk_index, now), 3) if chunk.chunk_index in st.audio_before else 0.0
        worker = self.workers.workers.get(st.worker) if st.worker else None
        if worker is None or worker.draining:  # a stream stays on its worker unless that one leaves
            worker = self.workers.pick()
        if worker is None:
            self.backlog.append((now, chunk))
            return
        st.worker = worker.identity
        self.workers.dispatch(worker, chunk)
        self.out.append((WORKER, worker.identity, chunk))

    # -- workers ---------------------------------------------------------------

    def worker_frames(self, identity: bytes, frames: list, now: float) -> None:
        try:
            msg = decode(frames)
        except DecodeError as exc:
            log.error("undecodable message from worker %r: %s", identity, exc)
            return
        self.worker_message(identity, msg, now)

    def worker_message(self, identity: bytes, msg: p.Message, now: float) -> None:
        if isinstance(msg, p.Ready):
            self._greeted.discard(identity)
            self._worker_ready(identity, msg, now)
            return
        worker = self.workers.beat(identity, now, msg if isinstance(msg, p.Heartbeat) else None)
        if worker is None:
            if isinstance(msg, p.Heartbeat) and identity not in self._greeted:
                # A worker that outlived a previous coordinator: ask for its handshake.
                self._greeted.add(identity)
                self.out.append((WORKER, identity, p.Hello(coordinator_pid=self.pid)))
            return
        if isinstance(msg, p.AudioPiece):
            if msg.final:
                self.workers.settle(worker, (msg.stream, msg.epoch, msg.chunk_index))
            self.on_piece(msg, now)
        elif isinstance(msg, p.ChunkFailed):
            self.workers.settle(worker, (msg.stream, msg.epoch, msg.chunk_index))
            self._chunk_failed(msg, now)
        elif isinstance(msg, p.Dead):
            self.worker_dead(worker, f"reported: {msg.reason}", now)

    def _worker_ready(self, identity: bytes, msg: p.Ready, now: float) -> None:
        self.workers.ready(identity, msg, now)
        self.engine_info = {"engine": msg.engine, "model": msg.model, "dtype": msg.dtype, "device": msg.device}
        self.voices = list(msg.voices)
        self.char_limits = dict(msg.char_limits)
        if not self.serving:
            log.info("serving: the first worker is ready")
        self.sample_rate = msg.sample_rate
        backlog, self.backlog = self.backlog, []
        for _, chunk in backlog:
            st = self.streams.get(chunk.stream)
            if st is not None and st.epoch == chunk.epoch and st.live:
                self._send_chunk(st, chunk, now)

    def worker_dead(self, worker: WorkerHandle, reason: str, now: float, kill: bool = False) -> None:
        """Hand a dead worker's chunks to another, unless one was partly heard (no seam can be proven).
        ``kill``: it may still run (hung), so it is killed (or, elsewhere, asked to stop)."""
        if not self.workers.remove(worker, reason, time.time()):
            return
        if kill:
            self.out.append((KILL, (worker.identity, worker.ready.pid), p.Shutdown(reason=reason)))
        for (sid, epoch, index), chunk in sorted(worker.inflight.items(), key=lambda kv: kv[1].priority):
            st = self.streams.get(sid)
            if st is None or st.epoch != epoch or not st.live:
                continue
            st.worker = None
            if st.reassembler.restart_chunk(index):
                self._send_chunk(st, chunk, now)
            else:
                self.fail(st, "worker_died", f"worker {worker.name} died ({reason}) while chunk {index} "
                          f"was partly delivered; the stream cannot continue without a seam")
        worker.inflight.clear()

    def worker_lost(self, identity: bytes, reason: str, now: float) -> None:
        worker = self.workers.workers.get(identity)
        if worker is not None:
            self.worker_dead(worker, reason, now)

    def worker_exited(self, identity: bytes, pid: int, now: float) -> None:
        worker = self.workers.workers.get(identity)
        if worker is not None and worker.ready.pid == pid:
            self.worker_dead(worker, "process exited", now)

    # -- audio -----------------------------------------------------------------

    def on_piece(self, piece: p.AudioPiece, now: float) -> None:
        st = self.streams.get(piece.stream)
        if st is None or not st.live:
            return
        if piece.chunk_index == 0 and piece.piece_index == 0 and piece.epoch == st.epoch:
            st.t_first_piece = now
            st.engine_stage_ms = (round(piece.queued_ms, 3), round(piece.engine_ms, 3))
        if piece.final and piece.epoch == st.epoch:
            st.chunk_finished(piece.chunk_index, piece.sample_offset + piece.sample_count)
        st.released(st.reassembler.add_piece(piece), now)
        self._deliver(st, now)
        self._maybe_finish(st, now)

    def _chunk_failed(self, msg: p.ChunkFailed, now: float) -> None:
        st = self.streams.get(msg.stream)
        if st is None or not st.live or msg.epoch != st.epoch:
            return
        log.warning("stream %s chunk %d failed: %s", st.sid, msg.chunk_index, msg.message)
        self.metrics.observe_error("chunk_failed", ends_stream=False)
        self.reply(st.client, p.Error(code="chunk_failed", stream=st.client_stream,
                                      message=f"chunk {msg.chunk_index} could not be spoken: {msg.message}"))
        st.released(st.reassembler.chunk_failed(msg.chunk_index), now)
        self._deliver(st, now)
        self._maybe_finish(st, now)

    def _deliver(self, st: Stream, now: float) -> None:
        dispatch_at = self._send_waiting(st, now) if st.waiting else None
        for msg in st.outgoing(now):
            if st.deliver == "client":
                self.reply(st.client, msg)
            elif st.to_sink and isinstance(msg, p.Audio):
                self.out.append((SINK, None, msg))
        wake = min((t for t in (st.pacer.wake_at(now), dispatch_at) if t is not None), default=None)
        if wake is not None:
            wake = max(wake, now + MIN_WAKE_GAP_S)  # a tick always moves time on: it cannot spin in place
        if wake is not None and wake != st.wake:
            st.wake = wake
            heapq.heappush(self._wakes, (wake, next(self._wake_seq), st.sid))

    def tick(self, now: float) -> None:
        """Let paced audio leave whose time has come."""
        while self._wakes and self._wakes[0][0] <= now:
            wake, _, sid = heapq.heappop(self._wakes)
            st = self.streams.get(sid)
            if st is None or st.wake != wake or not st.live:
                continue
            st.wake = None
            self._deliver(st, now)
            self._maybe_finish(st, now)

    def next_wake(self) -> float | None:
        while self._wakes:
            wake, _, sid = self._wakes[0]
            st = self.streams.get(sid)
            if st is not None and st.wake == wake:
                return wake
            heapq.heappop(self._wakes)
        return None

    def _maybe_finish(self, st: Stream, now: float) -> None:
        if not st.live or not st.all_out:
            return
        st.clock.close(now)  # a stream shorter than the pre-buffer starts playing now
        if st.to_sink:
            st.closing = True
            self.out.append((SINK, None, p.SinkClose(stream=st.sid)))
        else:
            self._done(st, now, {})

    def sink_done(self, msg: p.SinkDone, now: float) -> None:
        st = self.streams.get(msg.stream)
        if st is None or not st.closing:
            return
        error = msg.metrics.get("error")
        if error:
            self.metrics.observe_error("delivery_failed")
            self.reply(st.client, p.Error(code="delivery_failed", stream=st.client_stream,
                                          message=f"the sink could not deliver: {error}"))
            self._forget(st)
            return
        self._done(st, now, {f"sink_{k}" if k in ("note",) else k: v for k, v in msg.metrics.items()
                             if k not in ("error", "cancelled")})

    def _done(self, st: Stream, now: float, extra: dict[str, Any]) -> None:
        metrics = {**extra, **st.metrics(self.engine_info, now)}
        worker = self.workers.workers.get(st.worker) if st.worker else None
        metrics["worker"] = worker.name if worker is not None else None  # the one that spoke its last chunk
        self.metrics.observe_done(metrics)
        self.reply(st.client, p.Done(stream=st.client_stream, metrics=metrics))
        self._ending[(st.client, st.client_stream)] = metrics
        self._forget(st)

    # -- ending early ----------------------------------------------------------

    def cancel(self, st: Stream, now: float) -> None:
        """Barge-in: nothing of the stream leaves after this; the confirming ``done`` goes at once."""
        st.cancelled = True
        self._stop_synthesis(st)
        st.reassembler.cancel(st.epoch)
        st.pacer.clear()
        if st.to_sink:
            self.out.append((SINK, None, p.SinkClose(stream=st.sid, cancelled=True)))
        self.counters["streams_cancelled"] += 1
        self._remember_cancel(st)
        self._done(st, now, {})

    def fail(self, st: Stream, code: str, message: str) -> None:
        """End a stream with an error: the client hears why, the sink and workers let go of it."""
        if st.error:
            return
        log.warning("stream %s failed (%s): %s", st.sid, code, message)
        self._abandon(st, code)
        self.metrics.observe_error(code, profile=st.profile.name)
        self.reply(st.client, p.Error(code=code, message=message, stream=st.client_stream))

    def _abandon(self, st: Stream, code: str) -> None:
        st.error = code
        self._remember_cancel(st)  # deltas still on their way get no error of their own
        if not st.cancelled:
            self._stop_synthesis(st)
        if st.to_sink:
            self.out.append((SINK, None, p.SinkClose(stream=st.sid, cancelled=True, error=code)))
        self._forget(st)

    def _stop_synthesis(self, st: Stream) -> None:
        st.epoch += 1
        for worker in self.workers.holding(st.sid, st.epoch):
            self.out.append((WORKER, worker.identity, p.CancelStream(stream=st.sid, below_epoch=st.epoch)))
        if any(ch.stream == st.sid for _, ch in self.backlog):
            self.backlog = [(t, ch) for t, ch in self.backlog if ch.stream != st.sid]
        self.unchunked.pop(st.sid, None)

    def _forget(self, st: Stream) -> None:
        if self.streams.pop(st.sid, None) is None:
            return
        self.unchunked.pop(st.sid, None)
        self._wav_paths.discard(st.wav_path)
        if self.by_client.get((st.client, st.client_stream)) is st:
            del self.by_client[(st.client, st.client_stream)]
        self.per_client[st.client] -= 1
        if self.per_client[st.client] <= 0:
            del self.per_client[st.client]

    def _remember_cancel(self, st: Stream) -> None:
        self._cancelled[(st.client, st.client_stream)] = None
        while len(self._cancelled) > MAX_REMEMBERED_CANCELS:
            self._cancelled.popitem(last=False)

    def client_gone(self, identity: bytes, now: float) -> None:
        """The client vanished: free everything its streams hold, tell nobody."""
        if not self.per_client.get(identity):
            return
        for st in [s for s in self.streams.values() if s.client == identity]:
            log.info("stream %s: its client is gone; freed", st.sid)
            self.metrics.observe_abandoned(st.profile.name)
            self._abandon(st, "client_gone")
        self.counters["clients_gone"] += 1

    def audio_dropped(self, identity: bytes, msg: p.Audio) -> None:
        """The shell could not hand a slow client this audio in time: count it against the stream."""
        st = self.by_client.get((identity, msg.stream))
        self.counters["messages_dropped_slow_client"] += 1
        # The open stream of that name, if the message is its own: an id reused in the same round (cancel,
        # then speak) names a new stream whose first message is still to come.
        if st is not None and msg.epoch == st.epoch and msg.seq < st.messages:
            st.samples_dropped += msg.sample_count
            st.messages_dropped += 1
            return
        done = self._sending_done.get((identity, msg.stream))
        if done is not None:  # its last audio and its `done` are in the batch being sent: the done is not encoded yet
            seconds = msg.sample_count / msg.sample_rate
            done["audio_dropped_slow_client_s"] = round(done.get("audio_dropped_slow_client_s", 0) + seconds, 6)
            done["messages_dropped_slow_client"] = done.get("messages_dropped_slow_client", 0) + 1
            self.metrics.counters["audio_dropped_slow_client_s"].inc(seconds)
            self.metrics.counters["messages_dropped_slow_client"].inc(1)

    def sink_unreachable(self, msg: p.Message) -> None:
        st = self.streams.get(getattr(msg, "stream", ""))
        if st is not None and st.live:
            self.fail(st, "sink_unavailable", "the audio sink is not running (it may be restarting); "
                      "send the request again shortly")

    # -- housekeeping ------------------------------------------------------------

    def housekeeping(self, now: float) -> None:
        for worker in self.workers.hung(now):
            self.worker_dead(worker, f"no heartbeat for {now - worker.last_beat:.1f} s (hung); killed", now,
                             kill=True)
        self._expire_backlog(now)
        timeout = self.svc.stream_idle_timeout_s
        for st in [s for s in self.streams.values() if s.live and not s.end_pending and not s.ended
                   and now - s.t_last_text > timeout]:
            self.fail(st, "idle_timeout", f"no text or end for {timeout:.0f} s; the stream was closed")
        stall = self.svc.stall_timeout_s
        for st in [s for s in self.streams.values() if s.ended and now - s.t_progress > stall]:
            # Nothing came out for that long although all the text is in: a message was lost somewhere
            # (or a sink never answered). Waiting longer would hold the stream's place for ever.
            self.fail(st, "stalled", f"no audio came for {stall:.0f} s although the stream had ended; "
                      f"it was closed (the service's log says more)")

    def _expire_backlog(self, now: float) -> None:
        """Chunks that no worker took in time fail their streams instead of waiting forever."""
        if not self.backlog or self.workers.workers:
            return
        timeout = self.svc.worker_ready_timeout_s
        for sid in {ch.stream for t, ch in self.backlog if now - t > timeout}:
            st = self.streams.get(sid)
            if st is not None:
                self.fail(st, "no_worker", f"no worker became available within {timeout:.0f} s")

    def supervisor_health(self, msg: p.Health) -> None:
        self.health = {"healthy": msg.healthy, **msg.state}
        sink = msg.state.get("processes", {}).get("sink", {})
        pid = sink.get("pid") if isinstance(sink, dict) else None
        if self._sink_pid is not None and pid != self._sink_pid:
            for st in [s for s in self.streams.values() if s.to_sink]:
                self.fail(st, "sink_restarted", "the audio sink died and was restarted; this stream's audio "
                          "cannot be completed, send it again")
        self._sink_pid = pid

    def drain(self, deadline_s: float, now: float) -> None:
        """Take no new streams; the open ones have until the deadline (then `drained` says stop)."""
        if not self.draining:
            log.info("draining: %d open stream(s), at most %.0f s", len(self.streams), deadline_s)
            self.draining = True
            self.drain_deadline = now + deadline_s

    def drained(self, now: float) -> bool:
        return self.draining and (not self.streams or now >= self.drain_deadline)

    def shutdown(self) -> None:
        self.stopping = True
        for st in list(self.streams.values()):
            self.fail(st, "shutting_down", "the service is shutting down")

    def status(self, now: float) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "draining": self.draining,
            "streams": len(self.streams),
            "clients": len(self.per_client),
            "text_waiting": len(self.unchunked),
            "backlog": len(self.backlog),
            "workers": [w.describe(now) for w in self.workers.workers.values()],
            "worker_deaths": self.workers.deaths,
            "last_worker_death": self.workers.last_death,
            "engine": {**self.engine_info, "voices": self.voices[:100], "languages": sorted(self.char_limits)},
            "sample_rate": self.sample_rate,
            "counters": dict(self.counters),
            "supervisor": self.health,
            "metrics": self.metrics.snapshot(
                gauges={"open_streams": len(self.streams),
                        "queue_depth": len(self.backlog) + sum(len(w.inflight) for w in self.workers.workers.values()),
                        "gpu_memory_bytes": {w.name: w.gpu_memory_bytes for w in self.workers.workers.values()
                                             if w.gpu_memory_bytes}},
                totals={"worker_deaths": self.workers.deaths,
                        "worker_restarts": sum(proc.get("restarts", 0) for proc in
                                               self.health.get("processes", {}).values() if isinstance(proc, dict))}),
        }
