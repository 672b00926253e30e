"""The Wyoming server against a running service, spoken to with the wyoming package's own client.

Piper (through `xtts-stream wyoming` on a TCP port the system picks) for the
protocol: describe, plain and streaming synthesis, errors, hang-ups, stopping.
The tiny synthetic XTTS (through `serve --wyoming`, a process of the service)
for exact audio lengths: under its length policy a text's audio has a known
length, the same through Wyoming as through ZeroMQ.
"""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncClient, AsyncTcpClient, AsyncUnixClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from integration_services import forced_samples
from pipeline.client import Client
from pipeline.processes.service_process import ServiceProcess
from pipeline.settings import load_settings
from pipeline.text.limits import xtts_char_limits
from service_support import run, speak

pytestmark = pytest.mark.slow

TEXT = "Hello there, my friend. The weather is fine today, and the sea is calm."
PIECES = ["Hel", "lo there, my", " friend. The wea", "ther is fine today,", " and the sea is calm."]
BLOCK_MS = load_settings(env={}).profile("fast").block_ms
READ_S = 60.0


class WyomingProcess:
    """`xtts-stream wyoming --uri tcp://127.0.0.1:0` as a child process; the port is read from what it prints."""

    def __init__(self, endpoint: str, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "wyoming", "--uri", "tcp://127.0.0.1:0",
                                      "--endpoint", endpoint, *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        line = self._line_containing("listening on tcp://", timeout_s=60.0)
        self.uri = line.rsplit(" ", 1)[-1]
        self.host, port = self.uri[len("tcp://"):].rsplit(":", 1)
        self.port = int(port)

    def _line_containing(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.output.append(line)
                if text in line:
                    return line.strip()
        self.proc.kill()
        raise RuntimeError(f"no '{text}' from the Wyoming server; output:\n{''.join(self.output)}")

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient(self.host, self.port, read_timeout=READ_S)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def wyoming(piper_service):
    server = WyomingProcess(piper_service.endpoint)
    yield server
    assert server.stop() == 0, "SIGTERM stops the Wyoming server cleanly"


async def events_until(client: AsyncClient, last: str) -> list[Event]:
    """Events up to and including the first of type ``last`` (or an error, or the connection closing)."""
    return await read_until(client.read_event, last)


async def read_until(read, last: str) -> list[Event]:
    out = []
    while (event := await asyncio.wait_for(read(), READ_S)) is not None:
        out.append(event)
        if event.type in (last, "error"):
            break
    return out


async def synthesize(client: AsyncClient, text: str, voice: SynthesizeVoice | None = None) -> list[Event]:
    await client.write_event(Synthesize(text=text, voice=voice).event())
    return await events_until(client, "audio-stop")


async def synthesize_streaming(client: AsyncClient, pieces: list[str]) -> list[Event]:
    """What Home Assistant sends: start, the text as it comes, the whole text again for older servers, stop."""
    await client.write_event(SynthesizeStart().event())
    for piece in pieces:
        await client.write_event(SynthesizeChunk(text=piece).event())
    await client.write_event(Synthesize(text="".join(pieces)).event())
    await client.write_event(SynthesizeStop().event())
    return await events_until(client, "synthesize-stopped")


def audio_samples(events: list[Event], rate: int, streaming: bool) -> int:
    """Checks the audio events' shape and order; returns the number of samples."""
    types = [e.type for e in events]
    assert types, "no events before the connection closed"
    tail = ["audio-stop", "synthesize-stopped"] if streaming else ["audio-stop"]
    assert types[0] == "audio-start" and types[-len(tail):] == tail, types
    assert set(types[1:-len(tail)]) == {"audio-chunk"}, "one audio stream: nothing else between start and stop"
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (rate, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-len(tail)]]
    block = rate * BLOCK_MS // 1000
    offset = 0
    for chunk in chunks:
        assert (chunk.rate, chunk.width, chunk.channels) == (rate, 2, 1)
        assert chunk.timestamp == offset * 1000 // rate, "chunks follow each other with no gap"
        offset += chunk.samples
    assert all(c.samples == block for c in chunks[:-1]) and 0 < chunks[-1].samples <= block
    return offset


def test_describe_names_the_services_voice(wyoming):
    async def go():
        async with wyoming.client() as client:
            await client.write_event(Describe().event())
            return Info.from_event(await client.read_event())
    info = run(go())
    (program,) = info.tts
    assert program.name == "xtts-stream" and program.installed and program.supports_synthesize_streaming
    (voice,) = program.voices
    assert (voice.name, voice.languages, voice.installed) == ("en_US-joe-medium", ["en"], True)


def test_plain_and_streaming_synthesis_stream_audio_events(wyoming, piper_service):
    async def go():
        async with wyoming.client() as client:  # one connection, three requests in turn
            plain = await synthesize(client, TEXT)
            streamed = await synthesize_streaming(client, PIECES)
            again = await synthesize(client, "Good night.", SynthesizeVoice(name="en_US-joe-medium"))
            return plain, streamed, again
    plain, streamed, again = run(go())
    whole = run(speak(piper_service.endpoint, TEXT)).metrics["audio_s"] * 22050
    for events, streaming in ((plain, False), (streamed, True)):
        samples = audio_samples(events, 22050, streaming)
        # Piper draws random phoneme durations: the same text is never exactly as long twice.
        assert 0.8 * whole < samples < 1.2 * whole, "the whole text once, not twice and not a part"
    assert audio_samples(again, 22050, False) > 0


def test_refused_requests_get_an_error_event_and_the_server_carries_on(wyoming):
    async def request(*events: Event) -> list[Event]:
        async with wyoming.client() as client:
            for event in events:
                await client.write_event(event)
            return await events_until(client, "audio-stop")

    async def raw(data: bytes) -> list[Event]:
        """Bytes no wyoming client would send."""
        reader, writer = await asyncio.open_connection(wyoming.host, wyoming.port)
        writer.write(data)
        await writer.drain()
        try:
            return await read_until(lambda: async_read_event(reader), "audio-stop")
        finally:
            writer.close()

    async def go():
        return {
            "voice": await request(Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event()),
            "language": await request(Synthesize(text="Hi.", voice=SynthesizeVoice(language="de")).event()),
            "chunk first": await request(SynthesizeChunk(text="Hi.").event()),
            "service": await request(Synthesize(text="...").event()),
            "huge": await raw(b'{"type": "synthesize", "data_length": 1073741824}\n'),
            "not json": await raw(b"synthesize please\n"),
            "bad data": await raw(b'{"type": "synthesize", "data": {"text": 5}}\n'),
        }
    results = run(go())
    codes = {name: [Error.from_event(e).code for e in events if e.type == "error"] for name, events in results.items()}
    assert codes == {"voice": ["bad_voice"], "language": ["bad_voice"], "chunk first": ["bad_event"],
                     "service": ["nothing_to_speak"], "huge": ["bad_event"], "not json": ["bad_event"],
                     "bad data": ["bad_event"]}
    assert all(events[-1].type == "error" for events in results.values()), "then the connection closes"
    assert "exceeds this server's limit" in Error.from_event(results["huge"][-1]).text
    test_describe_names_the_services_voice(wyoming)  # still serving


def test_hanging_up_cancels_the_stream_at_the_service(wyoming, piper_service):
    async def open_streams() -> int:
        async with Client(piper_service.endpoint, timeout_s=10) as service:
            return (await service.status()).state["streams"]

    async def go():
        client = wyoming.client()
        await client.connect()
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text=TEXT).event())  # no stop: the stream stays open
        first = await client.read_event()
        during = await open_streams()
        await client.disconnect()
        deadline = time.monotonic() + 10
        while (after := await open_streams()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return first, during, after
    first, during, after = run(go())
    assert first.type == "audio-start" and during >= 1
    assert after == 0, "a client that hangs up has its stream cancelled (not left to the idle timeout)"


def test_a_client_that_stops_sending_still_gets_its_audio(wyoming):
    async def go():
        reader, writer = await asyncio.open_connection(wyoming.host, wyoming.port)
        await async_write_event(Synthesize(text="Good night.").event(), writer)
        writer.write_eof()  # nothing more to say, still listening
        try:
            return await read_until(lambda: async_read_event(reader), "audio-stop")
        finally:
            writer.close()
    assert audio_samples(run(go()), 22050, False) > 0


def test_tiny_xtts_through_wyoming_is_as_long_as_through_zeromq(tiny_xtts_service, tiny_checkpoint):
    async def go():
        async with AsyncUnixClient(str(tiny_xtts_service.wyoming_socket), read_timeout=READ_S) as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await client.read_event())
            plain = await synthesize(client, TEXT)
            streamed = await synthesize_streaming(client, PIECES)
            return info, plain, streamed
    info, plain, streamed = run(go())
    whole = run(speak(tiny_xtts_service.endpoint, TEXT))
    (voice,) = info.tts[0].voices
    assert voice.name == Path(tiny_checkpoint).name and voice.languages == sorted(xtts_char_limits())
    assert len(whole.pcm) == forced_samples(TEXT)
    assert audio_samples(plain, 24000, False) == len(whole.pcm)
    assert audio_samples(streamed, 24000, True) == len(whole.pcm)


def test_a_wyoming_process_that_keeps_failing_leaves_the_service_serving(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "service.toml"
    config.write_text("[service]\nrestart_limit = 1\nrestart_window_s = 120.0\n")
    svc = ServiceProcess("--engine", "piper", "--config", str(config), "--wyoming", f"tcp://127.0.0.1:{port}")
    try:
        svc.start()

        async def health():
            async with Client(svc.endpoint, timeout_s=10) as client:
                deadline = time.monotonic() + 60
                while True:
                    reply = await client.status()
                    wyoming_state = reply.state["supervisor"].get("processes", {}).get("wyoming", {})
                    if wyoming_state.get("given_up") or time.monotonic() > deadline:
                        return reply, wyoming_state
                    await asyncio.sleep(0.1)
        reply, wyoming_state = run(health())
        assert wyoming_state["given_up"] and wyoming_state["restarts"] == 1
        assert reply.healthy is False and reply.state["serving"] is True
        out = run(speak(svc.endpoint, "Still here."))
        assert out.error is None and out.metrics["audio_s"] > 0
        assert "cannot listen on" in svc.log_tail(20000)
    finally:
        svc.stop()
        taken.close()
    assert not svc.orphans
