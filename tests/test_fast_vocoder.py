"""The incremental vocoder against a whole-utterance HiFi-GAN decode (CPU, real HiFi-GAN width).

Measured on this CPU with the seeded tiny model, 30 random latents, pieces at 4,
14, 24 and the end: outside the crossfade zones the pieces differ from the whole
decode by 3.3e-6 relative RMS (max 7.5e-5 of the peak); inside the zones by under
1e-3 of the peak (with 44 latents and 16-token pieces: 1.1e-5 RMS). With stock's
1024-sample holdback the error outside the zones is 1.2e-3 relative RMS, which is
why the default holds back 2048. The bounds below leave a 10x margin or more.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.xtts_fast_support import tiny_xtts
from workers.engines.xtts_fast.frames import FrameChain
from workers.engines.xtts_fast.vocoder import (
    IncrementalVocoder,
    VocoderSettings,
    VocoderStream,
    fold_weight_norm,
    window_widths,
)

N_LATENTS = 30
OUTSIDE_REL_RMS = 5e-5
OUTSIDE_MAX_OF_PEAK = 2e-3
INSIDE_MAX_OF_PEAK = 2e-2


@pytest.fixture(scope="module")
def model():
    m = tiny_xtts(seed=2)
    fold_weight_norm(m.hifigan_decoder.waveform_decoder)
    return m


def chain(speed: float = 1.0) -> FrameChain:
    return FrameChain.for_model(1024, 256, 22050, 24000, speed)


def stock_frames(latents: torch.Tensor, speed: float) -> torch.Tensor:
    """What stock XTTS feeds HiFi-GAN: speed interpolation (if any), then HifiDecoder's two."""
    x = latents[None].transpose(1, 2)
    if speed != 1.0:
        x = F.interpolate(x, scale_factor=1.0 / max(speed, 0.05), mode="linear")
    x = F.interpolate(x, scale_factor=[4.0], mode="linear")
    return F.interpolate(x, scale_factor=[24000 / 22050], mode="linear")[0]


@pytest.mark.parametrize("speed", [1.0, 1.3, 0.8, 2.0])
def test_frame_windows_equal_torch_interpolation(speed):
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4, 17, 60, 147):
        c = chain(speed)
        if c.frames(n) == 0:
            continue
        latents = torch.randn(n, 8, generator=g)
        whole = stock_frames(latents, speed)
        assert c.frames(n) == whole.shape[1]
        assert torch.allclose(c.window(latents, 0, n, 0, whole.shape[1]), whole, atol=5e-5)
        a, b = whole.shape[1] // 3, whole.shape[1] // 2 + 1
        lo, hi = c.latents_needed(a, b, n)
        assert torch.allclose(c.window(latents[lo:hi], lo, n, a, b), whole[:, a:b], atol=5e-5)


def test_sample_count_formula():
    # 256 * floor(floor(4 * N') * 24000 / 22050), N' = floor(N / speed) when speed != 1
    assert chain().samples(60) == 66816
    assert chain().samples(4) == 256 * 17
    assert chain(1.25).samples(60) == 256 * int(4 * int(60 / 1.25) * 24000 / 22050)


def run_pieces(voc: IncrementalVocoder, latents: torch.Tensor, speaker: torch.Tensor, speed: float, bounds):
    stream = VocoderStream(chain(speed), speaker)
    pieces, zones, widths = [], [], []
    for k in bounds:
        final = k == bounds[-1]
        lo = voc.latents_from(stream, k)
        req = voc.plan(stream, latents[lo:k], lo, k, final)
        if req is None:
            continue
        if stream.tail is not None:
            zones.append((stream.emitted, stream.emitted + voc.settings.crossfade))
        widths.append(req.stop - req.start)
        pieces.extend(voc.run([req]))
    return pieces, zones, widths


@pytest.mark.parametrize("speed", [1.0, 1.25])
def test_pieces_match_whole_decode_outside_crossfades(model, speed):
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(N_LATENTS, model.gpt.model_dim, generator=g)
    speaker = torch.randn(512, 1, generator=g) * 0.1
    voc = IncrementalVocoder(model.hifigan_decoder.waveform_decoder, VocoderSettings())
    bounds = [4, 14, 24, N_LATENTS]
    pieces, zones, _ = run_pieces(voc, latents, speaker, speed, bounds)
    with torch.inference_mode():
        x = latents[None] if speed == 1.0 else F.interpolate(
            latents[None].transpose(1, 2), scale_factor=1.0 / speed, mode="linear").transpose(1, 2)
        whole = model.hifigan_decoder(x, g=speaker[None])[0, 0]

    offsets = [p.offset for p in pieces]
    sizes = [p.samples.shape[0] for p in pieces]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]  # contiguous, nothing twice
    assert [p.final for p in pieces] == [False] * (len(pieces) - 1) + [True]
    out = torch.cat([p.samples for p in pieces])
    assert out.shape == whole.shape == (chain(speed).samples(N_LATENTS),)
    assert sizes[0] == chain(speed).samples(4) - voc.settings.holdback

    inside = torch.zeros_like(out, dtype=torch.bool)
    for a, b in zones:
        inside[a:b] = True
    assert len(zones) == len(pieces) - 1
    err = (out - whole).abs()
    peak = float(whole.abs().max())
    rel_rms = float(err[~inside].pow(2).mean().sqrt() / whole.pow(2).mean().sqrt())
    print(f"speed {speed}: outside rel RMS {rel_rms:.2e}, max {float(err[~inside].max()) / peak:.2e} of peak; "
          f"inside max {float(err[inside].max()) / peak:.2e} of peak")
    assert rel_rms <= OUTSIDE_REL_RMS
    assert float(err[~inside].max()) <= OUTSIDE_MAX_OF_PEAK * peak
    assert float(err[inside].max()) <= INSIDE_MAX_OF_PEAK * peak


def test_every_later_piece_costs_the_same(model):
    """Window width is bounded by the piece, not the utterance: stock re-decodes everything."""
    latents = torch.randn(100, model.gpt.model_dim)
    voc = IncrementalVocoder(model.hifigan_decoder.waveform_decoder, VocoderSettings())
    stream = VocoderStream(chain(), torch.zeros(512, 1))
    widths = []
    for k in [4] + list(range(20, 100, 16)):
        lo = voc.latents_from(stream, k)
        req = voc.plan(stream, latents[lo:k], lo, k, final=False)
        widths.append(req.stop - req.start)
        # Bookkeeping only: pretend the piece was emitted without decoding it.
        stream.emitted, stream.tail = req.end, torch.zeros(voc.settings.crossfade)
    later = widths[2:]  # the second piece still reaches back to the start
    assert max(later) == min(later)
    assert max(later) <= 16 * 4.36 + voc.settings.holdback / 256 + voc.settings.context_frames + 8


def test_batched_windows_equal_single(model):
    g = torch.Generator().manual_seed(9)
    voc = IncrementalVocoder(model.hifigan_decoder.waveform_decoder, VocoderSettings())
    lat = [torch.randn(20, model.gpt.model_dim, generator=g) for _ in range(2)]
    spk = [torch.randn(512, 1, generator=g) * 0.1 for _ in range(2)]

    def first_pieces(together: bool):
        streams = [VocoderStream(chain(), s) for s in spk]
        reqs = [voc.plan(st, x[:4], 0, 4, final=False) for st, x in zip(streams, lat)]
        return voc.run(reqs) if together else [voc.run([r])[0] for r in reqs]

    for a, b in zip(first_pieces(True), first_pieces(False)):
        assert torch.allclose(a.samples, b.samples, atol=1e-6)


def test_padded_batches_equal_unpadded(model):
    """On CUDA calls run at a few fixed batch sizes; the padding rows must not leak into the pieces."""
    g = torch.Generator().manual_seed(11)
    plain = IncrementalVocoder(model.hifigan_decoder.waveform_decoder, VocoderSettings())
    padded = IncrementalVocoder(model.hifigan_decoder.waveform_decoder, VocoderSettings(), batch_sizes=(1, 2, 4))
    assert [padded.padded(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 5]
    lat = [torch.randn(20, model.gpt.model_dim, generator=g) for _ in range(3)]
    spk = [torch.randn(512, 1, generator=g) * 0.1 for _ in range(3)]

    def first_pieces(voc: IncrementalVocoder):
        streams = [VocoderStream(chain(), s) for s in spk]
        return voc.run([voc.plan(st, x[:4], 0, 4, final=False) for st, x in zip(streams, lat)])

    for a, b in zip(first_pieces(padded), first_pieces(plain)):
        assert a.samples.shape == b.samples.shape
        assert torch.allclose(a.samples, b.samples, atol=1e-6)


def test_window_widths_are_the_widths_streaming_uses(model):
    voc = IncrementalVocoder(model.hifigan_decoder.waveform_decoder, VocoderSettings())
    latents = torch.randn(200, model.gpt.model_dim)
    stream = VocoderStream(chain(), torch.zeros(512, 1))
    seen = set()
    for k in [4] + list(range(20, 200, 16)):
        lo = voc.latents_from(stream, k)
        req = voc.plan(stream, latents[lo:k], lo, k, final=False)
        seen.add(req.stop - req.start)
        stream.emitted, stream.tail = req.end, torch.zeros(voc.settings.crossfade)
    assert window_widths(chain(), voc.settings, 4, 16, 200) == sorted(seen)


def test_settings_are_checked():
    with pytest.raises(ValueError):
        VocoderSettings(holdback=512, crossfade=1024)
