"""Protocol round trips: every message, PCM as its own frame, and clear errors for bad frames."""

import dataclasses

import msgpack
import numpy as np
import pytest

from pipeline import protocol as p
from pipeline.codec import DecodeError, decode, encode


def _sample(cls):
    values = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if f.name == cls.PCM_FIELD:
            continue
        values[f.name] = {"str": "x", "int": 3, "float": 1.5, "bool": True,
                          "dict[str, Any]": {"a": 1}, "dict[str, int]": {"en": 250}}[kind]
    if cls.PCM_FIELD:
        values["sample_count"] = 3
        values["format"] = p.PCM_FORMAT
        values[cls.PCM_FIELD] = np.array([1, -2, 32767], "<i2").tobytes()
    return cls(**values)


@pytest.mark.parametrize("cls", p.ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = _sample(cls)
    frames = encode(msg)
    assert frames[0] == cls.KIND
    assert decode(frames) == msg


def test_pcm_travels_as_raw_little_endian_frame_not_in_header():
    pcm = np.arange(-5, 5, dtype="<i2").tobytes()
    msg = p.AudioBlock(stream="s", epoch=0, seq=0, sample_offset=0, sample_count=10, sample_rate=24000, pcm=pcm)
    kind, header, frame = encode(msg)
    assert frame == pcm
    assert "pcm" not in msgpack.unpackb(header)
    assert np.frombuffer(decode([kind, header, frame]).pcm, "<i2").tolist() == list(range(-5, 5))


@pytest.mark.parametrize("frames, code", [
    ([b"speak"], "bad_frames"),
    ([b"nope", msgpack.packb({"v": 1})], "unknown_kind"),
    ([b"speak", b"\xc1garbage"], "bad_header"),
    ([b"speak", msgpack.packb([1, 2])], "bad_header"),
    ([b"speak", msgpack.packb({"v": 99, "stream": "a", "text": "t"})], "bad_version"),
    ([b"speak", msgpack.packb({"v": 1, "stream": "a"})], "missing_field"),
    ([b"speak", msgpack.packb({"v": 1, "stream": "a", "text": 5})], "bad_type"),
    ([b"speak", msgpack.packb({"v": 1, "stream": "a", "text": "t", "zzz": 1})], "unknown_field"),
    ([b"speak", msgpack.packb({"v": 1, "stream": "a", "text": "t"}), b"extra"], "bad_frames"),
    ([b"speak", b"\x82\xa1v\x01\xa4text\xa2\xff\xfe"], "bad_utf8"),
    ([b"block", msgpack.packb({"v": 1, "stream": "s", "epoch": 0, "seq": 0, "sample_offset": 0,
                               "sample_count": 4, "sample_rate": 1}), b"\x00\x00"], "bad_pcm"),
    ([b"block", msgpack.packb({"v": 1, "stream": "s", "epoch": 0, "seq": 0, "sample_offset": 0,
                               "sample_count": 1, "sample_rate": 1, "format": "f32le"}), b"\x00\x00"], "bad_format"),
])
def test_bad_frames_get_a_named_error(frames, code):
    with pytest.raises(DecodeError) as err:
        decode(frames)
    assert err.value.code == code
    assert str(err.value)


def test_bool_is_not_an_integer():
    with pytest.raises(DecodeError, match="integer"):
        decode([b"piece", msgpack.packb({"v": 1, "stream": "s", "epoch": True, "chunk_index": 0, "piece_index": 0,
                                         "sample_offset": 0, "sample_count": 0, "sample_rate": 1, "final": True}), b""])
