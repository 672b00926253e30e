"""The gateway's HTTP side against a running Piper service, driven by the official OpenAI SDK and plain HTTP."""

from __future__ import annotations

import base64
import io
import json
import struct

import openai
import pytest

from gateway_support import delta, error_of, metrics, raw_post, read_head, request, wait_state, zmq_pcm
from service_support import run

pytestmark = pytest.mark.slow

TEXT = "Hello there, my friend. The weather is fine today, and the sea is calm."
RATE = 22050  # Piper's


def sdk(svc, retries: int = 0) -> openai.OpenAI:
    # The key is not checked on loopback without a keys file; the SDK insists on one.
    return openai.OpenAI(base_url=svc.http_url + "/v1", api_key="not-needed-on-loopback", max_retries=retries)


def spoken_samples(before: dict, after: dict) -> int:
    """What the service itself counted for the request in between (xtts_audio_seconds_total)."""
    return round(delta(before, after, "xtts_audio_seconds_total", profile="fast") * RATE)


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_openai_sdk_streams_to_a_file_and_matches_the_zmq_path(piper_service, tmp_path, fmt):
    before = metrics(piper_service.http_url)
    path = tmp_path / f"speech.{fmt}"
    with sdk(piper_service).audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format=fmt) as response:
        assert response.headers["content-type"] == ("audio/pcm" if fmt == "pcm" else "audio/wav")
        assert response.headers.get("transfer-encoding") == "chunked" and "content-length" not in response.headers
        assert response.headers["x-sample-rate"] == str(RATE)
        response.stream_to_file(path)
    after = metrics(piper_service.http_url)
    data = path.read_bytes()
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[36:40] == b"data"
        assert struct.unpack("<I", data[24:28])[0] == RATE
        data = data[44:]
    samples = len(data) // 2
    assert samples == spoken_samples(before, after), "the file holds exactly the audio the service made"
    zmq, _ = run(zmq_pcm(piper_service.endpoint, TEXT, profile="fast"))
    # Piper draws random noise for its durations, so two runs of one text differ by up to
    # ~6% whichever path they take (the tiny-XTTS test compares lengths exactly).
    assert abs(samples - len(zmq) // 2) <= 0.10 * samples


def test_sse_events_carry_all_the_audio_and_the_metrics(piper_service):
    with sdk(piper_service).audio.speech.with_streaming_response.create(
            model="tts-1", voice="echo", input=TEXT, response_format="pcm", stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done" and len(events) == len(deltas) + 1
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    done = events[-1]
    assert len(pcm) // 2 == round(done["metrics"]["audio_s"] * RATE)
    assert done["usage"]["input_tokens"] == len(TEXT) and done["metrics"]["seam_violations"] == 0


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "aac"])
def test_compressed_formats_decode_to_the_spoken_length(piper_service, fmt):
    import av
    before = metrics(piper_service.http_url)
    status, headers, body = request(piper_service.http_url + "/v1/audio/speech",
                                    {"input": TEXT, "voice": "alloy", "response_format": fmt})
    after = metrics(piper_service.http_url)
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    with av.open(io.BytesIO(body)) as container:
        stream = container.streams.audio[0]
        decoded, rate = sum(f.samples for f in container.decode(stream)), stream.rate
    expected = spoken_samples(before, after) * rate / RATE
    assert abs(decoded - expected) <= 2 * 1152 * rate / RATE, (decoded, expected)  # codec priming and padding


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": TEXT, "voice": "nobody"}, 400, "voice", "bad_voice"),       # refused by the service (Piper)
    ({"input": TEXT, "speed": 9}, 400, "speed", "invalid_field"),
    ({"input": TEXT, "profile": "opera"}, 400, "profile", "bad_profile"),
    ({"input": TEXT, "language": "xx"}, 400, "language", "bad_language"),  # refused by the service
    ({"input": "..."}, 400, "input", "nothing_to_speak"),                   # nothing speakable: the service says so
    ({"input": TEXT, "overrides": {"block_ms": 1}}, 400, "profile", "bad_profile"),
    ({"input": TEXT, "colour": "blue"}, 400, "colour", "unknown_field"),
])
def test_bad_requests_get_a_4xx_naming_the_field(piper_service, body, status, param, code):
    body = {"voice": "alloy", **body}
    ours = {k: body.pop(k) for k in list(body) if k not in ("input", "voice", "speed")}  # beyond OpenAI's fields
    with pytest.raises(openai.APIStatusError) as err:
        sdk(piper_service).audio.speech.create(model="tts-1", **body, extra_body=ours)
    assert err.value.status_code == status
    assert (err.value.body["param"], err.value.body["code"]) == (param, code)


def test_malformed_bodies_and_routes(piper_service):
    url = piper_service.http_url
    status, _, body = request(url + "/v1/audio/speech", b"{not json")
    assert (status, error_of(body)["code"]) == (400, "invalid_json")
    status, _, body = request(url + "/v1/audio/speech", b"[" * 100_000)  # deep enough to exhaust a parser
    assert (status, error_of(body)["code"]) == (400, "invalid_json")
    status, _, body = request(url + "/v1/audio/speech", ["a list"])
    assert status == 400
    status, _, body = request(url + "/v1/audio/speech", method="GET")
    assert (status, error_of(body)["code"]) == (405, "method_not_allowed")
    status, _, body = request(url + "/v1/nothing-here")
    assert (status, error_of(body)["code"]) == (404, "not_found")
    sock = raw_post(url, "/v1/audio/speech", "Content-Type: application/json\r\nContent-Length: 999999999\r\n")
    try:
        status, rest = read_head(sock)
    finally:
        sock.close()
    assert status == 413, "the size is refused before the body is read"


def test_models_voices_health_ready(piper_service):
    url = piper_service.http_url
    status, _, body = request(url + "/v1/models")
    ids = {m["id"]: m["profile"] for m in json.loads(body)["data"]}
    assert status == 200 and ids["tts-1"] == "fast" and ids["tts-1-hd"] == "cinematic"
    assert ids["xtts-stream-cinematic"] == "cinematic"
    status, _, body = request(url + "/v1/audio/voices")
    voices = json.loads(body)
    assert voices["engine"] == "piper" and {"default", "alloy", "nova"} <= {v["id"] for v in voices["data"]}
    assert request(url + "/health")[0] == 200
    status, _, body = request(url + "/ready")
    assert status == 200 and json.loads(body)["ready"] is True


def test_metrics_histograms_count_the_requests_just_made(piper_service):
    url = piper_service.http_url
    before = metrics(url)
    for _ in range(3):
        assert request(url + "/v1/audio/speech", {"input": "Good morning.", "response_format": "pcm"})[0] == 200
    request(url + "/v1/audio/speech", {"input": "Good morning.", "voice": "nobody"})
    after = metrics(url)
    for name in ("xtts_ttfa_seconds_count", "xtts_played_ttfa_seconds_count", "xtts_rtf_count"):
        assert delta(before, after, name, profile="fast") == 3, name
    assert delta(before, after, "xtts_ttfa_seconds_bucket", profile="fast", le="+Inf") == 3
    assert delta(before, after, "xtts_streams_total", profile="fast", outcome="completed") == 3
    assert delta(before, after, "xtts_errors_total", code="bad_voice") == 1
    assert delta(before, after, "xtts_gateway_requests_total", route="/v1/audio/speech", status="200") == 3
    assert delta(before, after, "xtts_gateway_requests_total", route="/v1/audio/speech", status="400") == 1
    assert after[("xtts_serving", ())] == 1 and after[("xtts_open_streams", ())] == 0
    state = run(wait_state(piper_service.endpoint, lambda s: True))
    assert state["metrics"]["counters"]["streams"], "the ZeroMQ status keeps the same figures"


def test_a_client_that_leaves_mid_stream_frees_its_stream(piper_service):
    url = piper_service.http_url
    before = metrics(url)
    long_text = " ".join([TEXT] * 12)
    body = json.dumps({"input": long_text, "response_format": "pcm"}).encode()
    sock = raw_post(url, "/v1/audio/speech", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n",
                    body)
    status, first = read_head(sock)
    assert status == 200
    sock.close()  # gone after the first audio
    run(wait_state(piper_service.endpoint, lambda s: s["streams"] == 0))
    after = metrics(url)
    assert delta(before, after, "xtts_streams_total", profile="fast", outcome="cancelled") == 1
