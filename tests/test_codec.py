"""Protocol round trips: every message, PCM as its own frame, bounds, and clear errors for bad frames."""

import dataclasses

import msgpack
import numpy as np
import pytest

from pipeline.wire import protocol as p
from pipeline.wire.codec import DecodeError, decode, encode


def _sample(cls):
    values = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if f.name == cls.PCM_FIELD:
            continue
        values[f.name] = {"str": "x", "int": 3, "float": 1.5, "bool": True, "dict[str, Any]": {"a": 1},
                          "dict[str, int]": {"en": 250}, "list[str]": ["a", "b"]}[kind]
    if cls.PCM_FIELD:
        values["sample_count"] = 3
        values["format"] = p.PCM_FORMAT
        values[cls.PCM_FIELD] = np.array([1, -2, 32767], "<i2").tobytes()
    return cls(**values)


def header(**fields):
    return msgpack.packb({"v": p.PROTOCOL_VERSION, **fields})


@pytest.mark.parametrize("cls", p.ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = _sample(cls)
    frames = encode(msg)
    assert frames[0] == cls.KIND
    assert decode(frames) == msg


def test_pcm_travels_as_raw_little_endian_frame_not_in_header():
    pcm = np.arange(-5, 5, dtype="<i2").tobytes()
    msg = p.Audio(stream="s", epoch=0, seq=0, sample_offset=0, sample_count=10, sample_rate=24000, pcm=pcm)
    kind, head, frame = encode(msg)
    assert frame == pcm
    assert "pcm" not in msgpack.unpackb(head)
    assert np.frombuffer(decode([kind, head, frame]).pcm, "<i2").tolist() == list(range(-5, 5))


AUDIO = dict(stream="s", epoch=0, seq=0, sample_offset=0, sample_count=4, sample_rate=1)


@pytest.mark.parametrize("frames, code", [
    ([b"speak"], "bad_frames"),
    ([b"nope", header()], "unknown_kind"),
    ([b"x" * 100_000, header()], "unknown_kind"),
    ([b"speak", b"\xc1garbage"], "bad_header"),
    ([b"speak", msgpack.packb([1, 2])], "bad_header"),
    ([b"speak", msgpack.packb({"v": 99, "stream": "a", "text": "t"})], "bad_version"),
    ([b"speak", msgpack.packb({"v": 1, "stream": "a", "text": "t"})], "bad_version"),
    ([b"speak", msgpack.packb({"v": float(p.PROTOCOL_VERSION), "stream": "a", "text": "t"})], "bad_version"),
    ([b"speak", msgpack.packb({"v": True, "stream": "a", "text": "t"})], "bad_version"),
    ([b"speak", header(stream="a")], "missing_field"),
    ([b"speak", header(stream="a", text=5)], "bad_type"),
    ([b"speak", header(stream="a", text="t", zzz=1)], "unknown_field"),
    ([b"speak", header(stream="a", text="t"), b"extra"], "bad_frames"),
    ([b"speak", b"\x82\xa1v\x02\xa4text\xa2\xff\xfe"], "bad_utf8"),
    ([b"audio", header(**AUDIO), b"\x00\x00"], "bad_pcm"),
    ([b"audio", header(**{**AUDIO, "sample_count": 1, "format": "f32le"}), b"\x00\x00"], "bad_format"),
    ([b"speak", header(stream="s" * 201, text="t")], "too_long"),
    ([b"status", header(request="r" * 4_000_000)], "too_long"),
    ([b"speak", header(stream="a", text="t", deliver="wav:" + "d/" * 1500 + "x.wav")], "too_long"),
    ([b"speak", header(stream="a", text="t", voice="v" * 257)], "too_long"),
    ([b"speak", header(stream="a", text="t", overrides={f"k{i}": 1 for i in range(33)})], "too_long"),
    ([b"speak", header(stream="a", text="t", overrides={"k" * 65: 1})], "too_long"),
    ([b"speak", header(stream="a", text="t", overrides={"speed": "x" * 257})], "too_long"),
    ([b"open", header(stream="a", overrides={"speed": [[1]]})], "bad_type"),
    ([b"open", header(stream="a", overrides={"speed": None})], "bad_type"),
    ([b"open", header(stream="a", overrides={"speed": float("nan")})], "bad_type"),
])
def test_bad_frames_get_a_named_error(frames, code):
    with pytest.raises(DecodeError) as err:
        decode(frames)
    assert err.value.code == code
    assert 0 < len(str(err.value)) < 400, "errors quote little of what they refuse"


def test_a_deeply_nested_override_is_refused_by_its_type():
    value: object = 1
    for _ in range(1000):
        value = [value]
    with pytest.raises(DecodeError) as err:
        decode([b"speak", header(stream="a", text="t", overrides={"temperature": value})])
    assert err.value.code in ("bad_type", "bad_header")


@pytest.mark.parametrize("frames", [
    [b"speak", header(stream="mine", text=5)],
    [b"speak", header(stream="mine", text="t", nope=1)],
    [b"speak", header(stream="mine")],
    [b"speak", msgpack.packb({"v": 1, "stream": "mine", "text": "t"})],
    [b"open", header(stream="mine", overrides={"speed": [1]})],
])
def test_an_error_names_the_stream_the_message_named(frames):
    with pytest.raises(DecodeError) as err:
        decode(frames)
    assert err.value.stream == "mine"


def test_bool_is_not_an_integer():
    with pytest.raises(DecodeError, match="integer"):
        decode([b"piece", header(stream="s", epoch=True, chunk_index=0, piece_index=0, sample_offset=0,
                                 sample_count=0, sample_rate=1, final=True), b""])


def test_version_1_is_told_what_changed():
    with pytest.raises(DecodeError, match="version 1.*block"):
        decode([b"status", msgpack.packb({"v": 1})])
