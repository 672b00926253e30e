"""`XttsStreamTTSService`: xtts-stream as a Pipecat TTS service (`pip install 'xtts-stream[pipecat]'`).

    tts = XttsStreamTTSService(endpoint="tcp://127.0.0.1:5555", profile="fast")
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, transport.output(), assistant_agg])

Built the way Pipecat's own streaming services (Cartesia, Deepgram Flux) are:
text goes out token by token (`TextAggregationMode.TOKEN`: Pipecat does not
wait for sentences; the service's chunker decides the cuts), audio comes back on
a receive task and is appended to Pipecat's audio context of the same id, and an
interruption cancels the server-side context. Here a Pipecat audio context is
one xtts-stream stream: the turn's first token opens it (`Client.open_stream`),
every token is a delta (`send`), the end of the LLM turn ends it, and an
interruption cancels it (`cancel`: the service sends nothing after the next
block, and the client library drops what was already on the wire).

Pipecat's TTFB clock starts when the first token of a context reaches this
service, and the stream is opened at that same moment, so it measures the
interval the service reports as `ttfa_ms` (from accepting the stream to its
first block) plus the transport at both ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

try:
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.frames.frames import CancelFrame, EndFrame, ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TextAggregationMode, TTSService
    from pipecat.transcriptions.language import Language
    from pipecat.utils.types import NOT_GIVEN, NotGiven
except ModuleNotFoundError as exc:  # say how to get it, not just what is missing
    raise ModuleNotFoundError(f"{exc}; XttsStreamTTSService needs pip install 'xtts-stream[pipecat]'",
                              name=exc.name) from exc

from pipeline.client import Client, ServiceError, Utterance

from .connection import make_client, service_language


@dataclass
class XttsStreamTTSSettings(TTSSettings):
    """Runtime settings; a change applies from the next utterance on.

    Parameters:
        profile: the service profile (`fast`, `cinematic`, or one of its config); None = its default.
    """

    profile: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass
class _Stream:
    """One Pipecat audio context's stream on the service."""

    utt: Utterance
    task: asyncio.Task | None = None
    resampler: Any = None
    ended: bool = False


class XttsStreamTTSService(TTSService):
    """Speaks through a running xtts-stream service.

    Event handlers (besides TTSService's):
        on_utterance_done(service, context_id, metrics): a stream finished (also
            after an interruption); ``metrics`` are the service's `done` metrics
            (`ttfa_ms`, `audio_s`, `cancelled`, ...; see docs/protocol.md) and
            `client_ttfa_ms`: from opening the stream to its first block here.
    """

    Settings = XttsStreamTTSSettings
    _settings: XttsStreamTTSSettings

    def __init__(self, *, endpoint: str = "tcp://127.0.0.1:5555", profile: str = "", voice: str = "",
                 language: str = "", overrides: dict[str, Any] | None = None, keys_dir: str | None = None,
                 ready_timeout_s: float = 60.0, reply_timeout_s: float = 60.0, sample_rate: int | None = None,
                 settings: XttsStreamTTSSettings | None = None, **kwargs: Any):
        """
        Args:
            endpoint: the service's client endpoint (`tcp://...` or `ipc://...`).
            profile, voice, language: as in `Client.open_stream`; empty = the service's defaults.
            overrides: profile fields to override for every utterance (e.g. ``{"temperature": 0.6}``).
            keys_dir: CURVE keys directory (`xtts-stream keys`) for a service beyond loopback.
            ready_timeout_s: how long setup waits for the service to be ready.
            reply_timeout_s: the longest silence from the service before an utterance fails.
            sample_rate: resample to this rate; None = the service's own rate (no resampling,
                the output transport converts if it must).
        """
        store = self.Settings(model=None, voice=voice or None, language=language or None, profile=profile or None)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(
            text_aggregation_mode=TextAggregationMode.TOKEN,
            push_text_frames=True,     # no word timestamps: text frames follow their sentence's audio
            push_start_frame=True,     # the base opens the audio context (and starts TTFB) at the first token
            push_stop_frames=False,    # TTSStoppedFrame is appended when the service says `done`
            pause_frame_processing=False,  # audio carries its context id: turns may overlap
            # Every context ends explicitly (done, error or cancel); the base's idle
            # timeout is only a safety net, so it matches the client's own.
            stop_frame_timeout_s=reply_timeout_s,
            sample_rate=sample_rate,
            settings=store,
            **kwargs,
        )
        self._endpoint = endpoint
        self._keys_dir = keys_dir
        self._overrides = dict(overrides or {})
        self._ready_timeout_s = ready_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._client: Client | None = None
        self._service_rate = 0
        self._streams: dict[str, _Stream] = {}
        # Contexts whose stream the service failed: later tokens of the turn are dropped,
        # not sent as a new stream each (bounded: a failed turn ends soon).
        self._failed: deque[str] = deque(maxlen=64)
        self._register_event_handler("on_utterance_done")

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def supports_processing_metrics(self) -> bool:
        return False  # run_tts hands text over; audio arrives on the receive task (TTFB carries the latency)

    def language_to_service_language(self, language: Language) -> str | None:
        return service_language(str(language.value if isinstance(language, Language) else language))

    # -- lifecycle -------------------------------------------------------------

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        self._client = make_client(self._endpoint, self._keys_dir, self._reply_timeout_s)
        reply = await self._client.wait_ready(self._ready_timeout_s)
        self._service_rate = int(reply.state.get("sample_rate") or 0)
        if not self._init_sample_rate and self._service_rate:
            self._sample_rate = self._service_rate  # the service's own rate: nothing to resample
        model = (reply.state.get("engine") or {}).get("model")
        if isinstance(model, str) and model:
            self._settings.model = model
            self._sync_model_name_to_metrics()

    async def stop(self, frame: EndFrame):
        for stream in list(self._streams.values()):
            await self._end(stream)  # a graceful end speaks the text it was given
        await super().stop(frame)  # plays every open context to its end: their streams are done
        await self._close()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close()

    async def cleanup(self):
        await super().cleanup()
        await self._close()

    async def _close(self) -> None:
        for context_id in list(self._streams):
            await self._abandon(context_id)
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- text in ---------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        if context_id in self._failed:
            yield None
            return
        stream = self._streams.get(context_id)
        if stream is None:
            try:
                stream = self._open(context_id)
            except ValueError as exc:  # a settings value the client refuses before sending
                yield ErrorFrame(error=f"{self}: cannot open a stream: {exc}")
                return
        if stream.ended:
            yield None
            return
        await stream.utt.send(text)
        await self.start_tts_usage_metrics(text)
        if context_id != self._turn_context_id:
            # Text outside an LLM turn (a bare TextFrame) is a whole utterance:
            # no end-of-turn will come to end it.
            await self._end(stream)
        yield None  # the audio arrives on the stream's receive task

    def _open(self, context_id: str) -> _Stream:
        if self._client is None:
            raise ValueError("the service is not connected (setup has not run, or the pipeline stopped)")
        s = self._settings
        utt = self._client.open_stream(profile=s.profile or "", overrides=self._overrides,
                                       language=s.language or "", voice=s.voice or "")
        stream = _Stream(utt)
        self._streams[context_id] = stream
        stream.task = self.create_task(self._receive(context_id, stream), name=f"xtts-stream-{context_id}")
        return stream

    async def flush_audio(self, context_id: str | None = None):
        """The end of the turn: the service speaks the rest of the text and finishes the stream."""
        stream = self._streams.get(context_id or self.get_active_audio_context_id() or "")
        if stream is not None:
            await self._end(stream)

    async def _end(self, stream: _Stream) -> None:
        if not stream.ended:
            stream.ended = True
            await stream.utt.end()

    # -- audio out -------------------------------------------------------------

    async def _receive(self, context_id: str, stream: _Stream) -> None:
        try:
            async for block in stream.utt:
                # TTFB ends here, as the first audio frame is made, not when Pipecat's
                # audio-context task gets round to pushing it (only the first call counts).
                await self.stop_ttfb_metrics()
                audio = await self._output_audio(stream, bytes(block.pcm), block.sample_rate)
                await self._append_audio(context_id, audio)
            await self._append_audio(context_id, await self._flush_resampler(stream))
            await self._call_event_handler("on_utterance_done", context_id,
                                           {**(stream.utt.metrics or {}), "client_ttfa_ms": stream.utt.client_ttfa_ms})
        except ServiceError as exc:
            self._failed.append(context_id)
            await self.push_error(error_msg=f"{self}: the service failed the utterance: {exc}", exception=exc)
        finally:
            self._streams.pop(context_id, None)
            if not stream.utt.cancelled and self.audio_context_available(context_id):
                await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
                await self.remove_audio_context(context_id)

    async def _append_audio(self, context_id: str, audio: bytes) -> None:
        if audio:
            await self.append_to_audio_context(
                context_id, TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=context_id))

    async def _output_audio(self, stream: _Stream, pcm: bytes, rate: int) -> bytes:
        if rate == self.sample_rate:
            return pcm
        if stream.resampler is None:
            stream.resampler = create_stream_resampler(clear_after_secs=None)
        return await stream.resampler.resample(pcm, rate, self.sample_rate)

    async def _flush_resampler(self, stream: _Stream) -> bytes:
        return await stream.resampler.flush() if stream.resampler is not None else b""

    # -- interruptions ---------------------------------------------------------

    async def on_audio_context_interrupted(self, context_id: str):
        stream = self._streams.get(context_id)
        if stream is not None:
            await stream.utt.cancel()  # barge-in: nothing of this stream is yielded any more
        await super().on_audio_context_interrupted(context_id)

    async def _abandon(self, context_id: str) -> None:
        """Cancel a stream and stop waiting for it (the pipeline is going away)."""
        stream = self._streams.pop(context_id, None)
        if stream is None:
            return
        if self._client is not None and not stream.utt.cancelled:
            await stream.utt.cancel()
        if stream.task is not None and stream.task is not asyncio.current_task():
            await self.cancel_task(stream.task)
