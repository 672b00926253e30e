"""One Wyoming connection: `describe`, `synthesize`, and streaming synthesis, spoken by the service.

- `describe` -> `info` with the service's voice, languages and speakers.
- `synthesize` -> `audio-start`, an `audio-chunk` per block as it arrives, `audio-stop`.
- `synthesize-start`, `synthesize-chunk`... , `synthesize-stop` -> one service stream fed
  the chunks as deltas (the service's chunker cuts them); audio flows while text
  still arrives, then `audio-stop` and `synthesize-stopped`. A `synthesize` sent
  inside a stream (Home Assistant repeats the whole text for older servers) is ignored.

A request that fails gets an `error` event (`code` is the service's error code,
or `bad_event` / `bad_voice` / `busy` from here) and the connection is closed,
so a client that ignores error events (Home Assistant's does) stops waiting.
Speech runs in a task while events are still read, so a client that hangs up
cancels its stream at the service.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from pipeline.client import Client, ServiceError, Utterance

from .wyoming_events import EventError, read_event
from .wyoming_info import Catalog, VoiceRequestError

log = logging.getLogger("xtts_stream.wyoming")

WIDTH, CHANNELS = 2, 1  # the service's audio: s16le mono


class SpeechService:
    """What every connection shares: one client of the service, and what it speaks with."""

    def __init__(self, client: Client, catalog: Catalog, profile: str = "",
                 overrides: dict[str, Any] | None = None):
        self.client = client
        self.catalog = catalog
        self.profile = profile
        self.overrides = dict(overrides or {})

    async def describe(self) -> Catalog:
        """Asked afresh (the service may have been restarted on another engine); the last answer if it is busy."""
        try:
            self.catalog = Catalog.from_status((await self.client.status(timeout_s=2.0)).state)
        except ServiceError as exc:
            log.warning("describe: no status from the service (%s); answering with the last catalog", exc)
        return self.catalog


class RequestFailed(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


class SpeechHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: SpeechService):
        super().__init__(reader, writer)
        self.service = service
        self._utt: Utterance | None = None
        self._task: asyncio.Task | None = None
        self._streaming = False
        self._text_complete = False  # the current speech has all its text (plain, or after synthesize-stop)

    async def run(self) -> None:
        """The package's loop, reading with bounds; no error here ends more than this connection."""
        self._is_running = True
        try:
            while self._is_running:
                try:
                    event = await read_event(self.reader)
                    if event is None:
                        await self._hung_up()
                        break
                    if not await self.handle_event(event):
                        break
                except (EventError, RequestFailed) as exc:
                    code = exc.code if isinstance(exc, RequestFailed) else "bad_event"
                    await self._send_error(code, str(exc))
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:
            log.exception("Wyoming connection failed")
            await self._send_error("internal", "internal error in the Wyoming server (see its log)")
        finally:
            await self.disconnect()
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event((await self.service.describe()).info().event())
        elif Synthesize.is_type(event.type):
            if not self._streaming:  # inside a stream it only repeats the text for older servers
                request = _parse(Synthesize.from_event, event)
                if not isinstance(request.text, str):
                    raise RequestFailed("bad_event", "synthesize 'text' must be a string")
                await self._idle()
                self._start(self._open(request.voice, request.text), streaming=False, text_complete=True)
        elif SynthesizeStart.is_type(event.type):
            if self._streaming:
                raise RequestFailed("busy", "synthesize-start inside a stream that has not stopped")
            await self._idle()
            self._streaming = True
            self._start(self._open(_parse(SynthesizeStart.from_event, event).voice), streaming=True,
                        text_complete=False)
        elif SynthesizeChunk.is_type(event.type):
            utt = self._stream_utt("synthesize-chunk")
            text = _parse(SynthesizeChunk.from_event, event).text
            if not isinstance(text, str):
                raise RequestFailed("bad_event", "synthesize-chunk 'text' must be a string")
            if text:
                await utt.send(text)
        elif SynthesizeStop.is_type(event.type):
            await self._stream_utt("synthesize-stop").end()  # the speech task sends synthesize-stopped
            self._text_complete = True
        return True  # other events are not for a TTS server: ignored, as Wyoming servers do

    async def disconnect(self) -> None:
        """The connection is closing: speech still running is cancelled at the service."""
        if self._utt is not None and not self._utt.cancelled:
            await self._utt.cancel()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- speech ----------------------------------------------------------------

    def _open(self, requested, text: str | None = None) -> Utterance:
        try:
            voice, language = self.service.catalog.resolve(requested)
        except VoiceRequestError as exc:
            raise RequestFailed("bad_voice", str(exc)) from None
        kwargs = dict(profile=self.service.profile, overrides=self.service.overrides, voice=voice, language=language)
        client = self.service.client
        self._utt = client.speak(text, **kwargs) if text is not None else client.open_stream(**kwargs)
        return self._utt

    def _start(self, utt: Utterance, streaming: bool, text_complete: bool) -> None:
        self._text_complete = text_complete
        self._task = asyncio.get_running_loop().create_task(self._speak(utt, streaming))

    async def _hung_up(self) -> None:
        """The client sent its last event. A speech that has all its text is still delivered (a client may
        close its sending side and read on; if it is really gone, writing fails and the speech is
        cancelled); one still waiting for text never will get it, so it is cancelled now (disconnect)."""
        if self._task is not None and self._text_complete:
            await self._idle()

    async def _idle(self) -> None:
        """Requests on one connection are spoken one after another."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _stream_utt(self, what: str) -> Utterance:
        if not self._streaming or self._utt is None:
            raise RequestFailed("bad_event", f"{what} without synthesize-start")
        return self._utt

    async def _speak(self, utt: Utterance, streaming: bool) -> None:
        try:
            rate = 0
            async for block in utt:
                if not rate:
                    rate = block.sample_rate
                    await self.write_event(AudioStart(rate=rate, width=WIDTH, channels=CHANNELS).event())
                await self.write_event(AudioChunk(rate=rate, width=WIDTH, channels=CHANNELS, audio=bytes(block.pcm),
                                                  timestamp=block.sample_offset * 1000 // rate).event())
            self._utt = None  # done at the service: nothing left to cancel
            if not rate:  # nothing was spoken: still a well-formed (empty) audio stream
                rate = utt.accepted.sample_rate if utt.accepted else 0
                await self.write_event(AudioStart(rate=rate, width=WIDTH, channels=CHANNELS).event())
            await self.write_event(AudioStop().event())
            if streaming:
                await self.write_event(SynthesizeStopped().event())
        except ServiceError as exc:
            self._utt = None
            await self._send_error(exc.code, exc.message)
            await self.stop()
        except OSError:
            pass  # the client is gone: the connection's end cancels the stream (disconnect)
        finally:
            self._streaming = False

    async def _send_error(self, code: str, text: str) -> None:
        try:
            await self.write_event(Error(text=text, code=code).event())
        except OSError:
            pass


def _parse(from_event, event: Event):
    try:
        return from_event(event)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise RequestFailed("bad_event", f"malformed {event.type} event: {exc!r}") from None
