"""The gateway's pieces without a server: request checks, response encoders, API keys."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from pipeline.gateway.auth import BearerAuth, check_listen_allowed, load_keys, parse_listen
from pipeline.gateway.encoders import FORMATS, encoder, wav_header
from pipeline.gateway.errors import ApiError, from_service
from pipeline.gateway.speech import parse_speech
from pipeline.settings import SettingsError, load_settings

SETTINGS = load_settings(env={})
OK = {"model": "tts-1", "input": "Hello there.", "voice": "alloy"}


@pytest.mark.parametrize("change, param, code", [
    ({"input": None}, "input", "invalid_field"),
    ({"input": 5}, "input", "invalid_field"),
    ({"input": "   "}, "input", "nothing_to_speak"),
    ({"input": "x" * (SETTINGS.service.max_text_chars + 1)}, "input", "text_too_long"),
    ({"model": "whisper-1"}, "model", "bad_model"),
    ({"model": ["tts-1"]}, "model", "invalid_field"),
    ({"voice": 3}, "voice", "invalid_field"),
    ({"voice": {"id": "x", "extra": 1}}, "voice", "invalid_field"),
    ({"voice": "missing.wav"}, "voice", "bad_voice"),
    ({"voice": "../../etc/passwd.wav"}, "voice", "bad_voice"),
    ({"voice": "v" * 201}, "voice", "invalid_field"),
    ({"response_format": "ogg"}, "response_format", "invalid_field"),
    ({"stream_format": "chunks"}, "stream_format", "invalid_field"),
    ({"speed": 0.1}, "speed", "invalid_field"),
    ({"speed": 4.5}, "speed", "invalid_field"),
    ({"speed": "fast"}, "speed", "invalid_field"),
    ({"speed": True}, "speed", "invalid_field"),
    ({"speed": float("nan")}, "speed", "invalid_field"),
    ({"profile": "opera"}, "profile", "bad_profile"),
    ({"language": "e" * 17}, "language", "invalid_field"),
    ({"overrides": [1]}, "overrides", "invalid_field"),
    ({"instructions": 7}, "instructions", "invalid_field"),
    ({"temperature": 0.5}, "temperature", "unknown_field"),
])
def test_a_bad_field_is_a_400_naming_it(change, param, code):
    body = {k: v for k, v in {**OK, **change}.items() if v is not None}
    with pytest.raises(ApiError) as err:
        parse_speech(body, SETTINGS)
    assert (err.value.status, err.value.param, err.value.code) == (400, param, code)
    assert err.value.body()["error"]["param"] == param


def test_openai_names_map_to_the_service():
    req = parse_speech({**OK, "model": "tts-1-hd", "voice": "nova", "speed": 1.25, "response_format": "wav",
                        "instructions": "Speak cheerfully."}, SETTINGS)
    assert req.options.kwargs() == {"profile": "cinematic", "overrides": {"speed": 1.25}, "language": "",
                                    "voice": ""}
    assert (req.response_format, req.sse) == ("wav", False)
    req = parse_speech({"input": "Hi.", "voice": {"id": "Claribel Dervla"}, "model": "tts-1",
                        "profile": "fast", "language": "pt", "stream_format": "sse"}, SETTINGS)
    assert req.options.kwargs() == {"profile": "fast", "overrides": {}, "language": "pt", "voice": "Claribel Dervla"}
    assert (req.response_format, req.sse) == ("mp3", True)  # OpenAI's default format


def test_reference_voice_must_exist_inside_voices_dir(tmp_path):
    (tmp_path / "narrator.wav").write_bytes(wav_header(22050, 0))
    settings = SETTINGS.with_service(voices_dir=str(tmp_path))
    assert parse_speech({**OK, "voice": "narrator.wav"}, settings).options.voice == "narrator.wav"


def test_service_codes_map_to_statuses():
    assert (from_service("bad_voice", "x").status, from_service("bad_voice", "x").param) == (400, "voice")
    assert from_service("too_many_streams", "x").status == 429
    assert from_service("starting", "x").response().headers["retry-after"] == "1"
    assert from_service("internal", "x").status == 502
    assert all(from_service(code, "x").status != 500 for code in ("internal", "delivery_failed", "whatever"))


def test_streamed_wav_header_says_unknown_size():
    head = wav_header(22050)
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and len(head) == 44
    assert struct.unpack("<I", head[4:8])[0] == 0xFFFFFFFF and struct.unpack("<I", head[40:44])[0] == 0xFFFFFFFF
    assert struct.unpack("<HHIIHH", head[20:36]) == (1, 1, 22050, 44100, 2, 16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_streams_and_decodes_to_the_same_audio_length(fmt):
    import av
    rate = 22050
    pcm = (np.sin(np.arange(rate) * 2 * np.pi * 220 / rate) * 8000).astype("<i2").tobytes()
    enc = encoder(fmt, rate)
    out = [enc.start()]
    spans = [pcm[i:i + 1103] for i in range(0, len(pcm), 1103)]  # odd-sized spans: a sample split across two
    early = 0
    for i, span in enumerate(spans):
        out.append(enc.feed(span))
        if i < len(spans) // 2:
            early += len(out[-1])
    out.append(enc.finish())
    data = b"".join(out)
    assert early > 0, f"{fmt}: nothing came out before half the audio was in: it does not stream"
    if fmt == "pcm":
        assert data == pcm
        return
    if fmt == "wav":
        assert data[44:] == pcm
        return
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        decoded = sum(frame.samples for frame in container.decode(stream))
        out_rate = stream.rate
    expected = len(pcm) // 2 * out_rate / rate
    # Encoders prime and pad: up to two codec frames (MP3 1152 samples, AAC 1024) more or less.
    assert abs(decoded - expected) <= 2 * 1152, (fmt, decoded, expected)


def test_keys_file_and_listen_rules(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# gateway keys\n\nA1b2C3d4E5f6G7h8I9j0\n  second-key-0123456789  \n")
    assert load_keys(str(keys)) == [b"A1b2C3d4E5f6G7h8I9j0", b"second-key-0123456789"]
    assert check_listen_allowed("127.0.0.1", "") is None
    assert check_listen_allowed("0.0.0.0", str(keys)) is not None
    with pytest.raises(SettingsError, match="API keys beyond loopback"):
        check_listen_allowed("0.0.0.0", "")
    with pytest.raises(SettingsError, match="API keys beyond loopback"):
        check_listen_allowed("192.168.1.5", "")
    (tmp_path / "short").write_text("tooshort\n")
    with pytest.raises(SettingsError, match="at least 16"):
        load_keys(str(tmp_path / "short"))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SettingsError, match="no API key"):
        load_keys(str(tmp_path / "empty"))
    assert parse_listen("[::1]:8000") == ("::1", 8000) and parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    for bad in ("8000", "host:", "host:99999", ":80"):
        with pytest.raises(SettingsError):
            parse_listen(bad)


def test_bearer_tokens_from_header_or_websocket_subprotocol():
    auth = BearerAuth(None, [b"first-key-0123456789", b"second-key-0123456789"])
    http = {"type": "http", "headers": [(b"authorization", b"Bearer second-key-0123456789")]}
    assert auth.caller(http) == "key-1"
    assert auth.caller({"type": "http", "headers": [(b"authorization", b"Bearer nope")]}) is None
    assert auth.caller({"type": "http", "headers": [(b"authorization", b"Basic first-key-0123456789")]}) is None
    ws = {"type": "websocket", "headers": [], "subprotocols": ["bearer.first-key-0123456789"]}
    assert auth.caller(ws) == "key-0"
    assert auth.caller({"type": "http", "headers": [], "subprotocols": ["bearer.first-key-0123456789"]}) is None
