"""The Wyoming server's parts that need no service: what `describe` says, voice choice, URI checks, bounded reads."""

from __future__ import annotations

import asyncio
import json

import pytest
from wyoming.info import Info
from wyoming.tts import SynthesizeVoice

from pipeline.cli import main as cli
from pipeline.integrations import wyoming_cli
from pipeline.integrations.wyoming_cli import check_uri, require_wyoming
from pipeline.integrations.wyoming_events import EventError, read_event
from pipeline.integrations.wyoming_info import Catalog, VoiceRequestError
from pipeline.settings import SettingsError
from pipeline.text.limits import xtts_char_limits

PIPER = {"serving": True, "engine": {"engine": "piper", "model": "en_US-joe-medium"}, "sample_rate": 22050}
XTTS = {"serving": True, "engine": {"engine": "xtts-fast", "model": "XTTS-v2"}, "sample_rate": 24000}


def test_describe_piper():
    info = Info.from_event(Catalog.from_status(PIPER).info().event())  # as a client decodes it
    (program,) = info.tts
    assert program.name == "xtts-stream" and program.supports_synthesize_streaming and program.installed
    (voice,) = program.voices
    assert (voice.name, voice.languages, voice.speakers) == ("en_US-joe-medium", ["en"], None)
    assert "rhasspy" in voice.attribution.name.lower()


def test_describe_xtts_languages_come_from_its_tokenizer_table_until_the_service_lists_them():
    assert Catalog.from_status(XTTS).languages == tuple(sorted(xtts_char_limits())) and len(xtts_char_limits()) > 10
    listed = Catalog.from_status({**XTTS, "languages": ["en", "pt"], "voices": ["Ana Florence", "narrator.wav"]})
    (voice,) = Info.from_event(listed.info().event()).tts[0].voices
    assert voice.languages == ["en", "pt"] and [s.name for s in voice.speakers] == ["Ana Florence", "narrator.wav"]


@pytest.mark.parametrize("requested, expected", [
    (None, ("", "")),
    (SynthesizeVoice(name="XTTS-v2"), ("", "")),
    (SynthesizeVoice(name="XTTS-v2", speaker="Ana Florence"), ("Ana Florence", "")),
    (SynthesizeVoice(language="pt-BR"), ("", "pt")),
    (SynthesizeVoice(language="zh_CN"), ("", "zh")),
])
def test_voice_choice(requested, expected):
    assert Catalog.from_status(XTTS).resolve(requested) == expected


@pytest.mark.parametrize("requested, message", [
    (SynthesizeVoice(name="someone"), "unknown voice 'someone': this server has one voice, 'XTTS-v2'"),
    (SynthesizeVoice(language="xx"), "language 'xx' is not spoken here"),
])
def test_a_voice_it_lacks_is_refused_by_name(requested, message):
    with pytest.raises(VoiceRequestError, match=message):
        Catalog.from_status(XTTS).resolve(requested)


@pytest.mark.parametrize("uri, allow_remote, error", [
    ("tcp://127.0.0.1:10200", False, None),
    ("tcp://localhost:0", False, None),
    ("unix:///tmp/xtts-wyoming.sock", False, None),
    ("tcp://0.0.0.0:10200", True, None),
    ("tcp://0.0.0.0:10200", False, "beyond loopback"),
    ("tcp://192.168.1.5:10200", False, "--allow-remote"),
    ("tcp://127.0.0.1", False, "needs a host and a port"),
    ("tcp://127.0.0.1:http", False, "needs a host and a port"),
    ("unix://", False, "names no socket path"),
    ("http://127.0.0.1:10200", False, "use tcp://HOST:PORT or unix:///path"),
])
def test_uri_checks(uri, allow_remote, error):
    if error is None:
        check_uri(uri, allow_remote)
    else:
        with pytest.raises(SettingsError, match=error):
            check_uri(uri, allow_remote)


def test_the_cli_refuses_a_remote_bind_before_doing_anything(capsys):
    assert cli(["wyoming", "--uri", "tcp://0.0.0.0:10200"]) == 2
    assert cli(["serve", "--wyoming", "tcp://0.0.0.0:10200"]) == 2
    err = capsys.readouterr().err
    assert err.count("Wyoming has no authentication") == 2


def test_a_missing_wyoming_package_is_named_with_its_extra(monkeypatch):
    require_wyoming()  # installed here (the test extra)
    monkeypatch.setattr(wyoming_cli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SettingsError, match=r"pip install 'xtts-stream\[wyoming\]'"):
        require_wyoming()


def read(data: bytes, **limits):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_event(reader, **limits)
    return asyncio.run(go())


def test_an_event_with_separate_data_and_payload():
    extra = json.dumps({"text": "Hello"}).encode()
    header = json.dumps({"type": "synthesize", "data": {"voice": {"name": "x"}}, "data_length": len(extra),
                         "payload_length": 3}).encode()
    event = read(header + b"\n" + extra + b"abc")
    assert (event.type, event.data, event.payload) == ("synthesize", {"voice": {"name": "x"}, "text": "Hello"}, b"abc")


@pytest.mark.parametrize("data, message", [
    (b"hello\n", "header is not valid JSON"),
    (b"[1, 2]\n", "must be a JSON object with a 'type'"),
    (b'{"data": {}}\n', "with a 'type' string"),
    (b'{"type": "x", "data": [1]}\n', "'data' must be a JSON object"),
    (b'{"type": "x", "data_length": -1}\n', "non-negative integer"),
    (b'{"type": "x", "data_length": true}\n', "non-negative integer"),
    (b'{"type": "x", "data_length": 1048577}\n', "exceeds this server's limit of 1048576 bytes"),
    (b'{"type": "x", "payload_length": 1048577}\n', "exceeds this server's limit"),
    (b'{"type": "x", "data_length": 3}\n[1]', "event data must be a JSON object"),
    (b'{"type": "x", "data_length": 2}\n\xff\xfe', "event data is not valid JSON"),
    (b'{"type": "' + b"x" * 70000 + b'"}\n', "header line too long"),
])
def test_malformed_or_oversized_events_are_refused_with_the_reason(data, message):
    with pytest.raises(EventError, match=message):
        read(data)


def test_a_closed_connection_is_the_end_not_an_error():
    assert read(b"") is None
    assert read(b'{"type": "x", "data_length": 10}\n{"a"') is None  # closed mid-event
