"""A synthetic XTTS-v2 checkpoint: the real architecture with seeded random weights.

Real weights cannot be downloaded here, so tests and benchmarks use this. The
directory has the released layout and loads through the same coqui-tts code
path (`Xtts(config)` + `load_checkpoint`):

- `config.json`: an `XttsConfig` with the v2 dimensions set explicitly
  (`XttsArgs()` defaults are XTTS v1);
- `model.pth`: `{"config": dict, "model": state_dict}`, the form coqui itself
  rewrites an original checkpoint into on first load, so a read-only directory
  loads; weight-norm tensors use the released file's `weight_g`/`weight_v` names;
- `vocab.json`: a BPE vocab `VoiceBpeTokenizer` accepts (6681 ids);
- `speakers_xtts.pth`: `{name: {"gpt_cond_latent", "speaker_embedding"}}`,
  computed by the model from synthetic reference audio;
- `mel_stats.pth`, `hash.md5`, and `samples/en_sample.wav` (a reference voice).

`tiny` keeps every module but shrinks the GPT (the HiFi-GAN width is fixed in
coqui's code, so its vocoder costs as much as the full one's).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch

from .synthetic_vocab import FULL_VOCAB_SIZE, write_vocab

# Released XTTS-v2 model_args; sizes override only the GPT's width and depth.
V2_MODEL_ARGS: dict[str, Any] = {
    "gpt_batch_size": 1,
    "kv_cache": True,
    "gpt_max_audio_tokens": 605,
    "gpt_max_text_tokens": 402,
    "gpt_max_prompt_tokens": 70,
    "gpt_layers": 30,
    "gpt_n_model_channels": 1024,
    "gpt_n_heads": 16,
    "gpt_number_text_tokens": FULL_VOCAB_SIZE,
    "gpt_num_audio_tokens": 1026,
    "gpt_start_audio_token": 1024,
    "gpt_stop_audio_token": 1025,
    "gpt_code_stride_len": 1024,
    "gpt_use_masking_gt_prompt_approach": True,
    "gpt_use_perceiver_resampler": True,
    "input_sample_rate": 22050,
    "output_sample_rate": 24000,
    "output_hop_length": 256,
    "decoder_input_dim": 1024,
    "d_vector_dim": 512,
    "cond_d_vector_in_each_upsampling_layer": True,
}
# Inference defaults of the released config.json.
V2_INFERENCE: dict[str, Any] = {
    "temperature": 0.75,
    "length_penalty": 1.0,
    "repetition_penalty": 5.0,
    "top_k": 50,
    "top_p": 0.85,
    "gpt_cond_len": 30,
    "gpt_cond_chunk_len": 4,
    "max_ref_len": 30,
    "sound_norm_refs": False,
}
SIZES: dict[str, dict[str, Any]] = {
    "full": {},
    "tiny": {"gpt_layers": 2, "gpt_n_model_channels": 64, "gpt_n_heads": 4, "decoder_input_dim": 64},
}
SPEAKERS = {"Synthetic Voice A": 140.0, "Synthetic Voice B": 210.0}  # name -> pitch of its reference (Hz)
REFERENCE_SR = 22050
DEFAULT_SAMPLE = Path("samples") / "en_sample.wav"


def build_config(size: str = "tiny") -> Any:
    """The XttsConfig of a synthetic checkpoint of this size."""
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig

    if size not in SIZES:
        raise ValueError(f"unknown size '{size}'; valid sizes: {', '.join(SIZES)}")
    args = XttsArgs(**{**V2_MODEL_ARGS, **SIZES[size]})
    return XttsConfig(model_args=args, **V2_INFERENCE)


def make_synthetic_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a synthetic XTTS-v2 checkpoint directory; the same seed gives the same weights."""
    config = build_config(size)
    out = Path(out_dir)
    (out / DEFAULT_SAMPLE.parent).mkdir(parents=True, exist_ok=True)
    config.save_json(str(out / "config.json"))
    write_vocab(out / "vocab.json", config.model_args.gpt_number_text_tokens)

    model = build_model(config, seed)
    state = _released_key_names(model.state_dict())
    torch.save({"config": config.to_dict(), "model": state}, out / "model.pth")
    torch.save(model.mel_stats.clone(), out / "mel_stats.pth")
    (out / "hash.md5").write_text(_md5(out / "model.pth") + "\n", encoding="utf-8")

    model.train(False)  # not eval(): Xtts.eval() would also build the inference GPT
    speakers = {}
    for i, (name, pitch) in enumerate(SPEAKERS.items()):
        audio = synthetic_voice(pitch, seed=seed * 100 + i)
        if i == 0:
            sf.write(out / DEFAULT_SAMPLE, audio, REFERENCE_SR, subtype="PCM_16")
        speakers[name] = _latents(model, audio)
    torch.save(speakers, out / "speakers_xtts.pth")
    return out


def build_model(config: Any, seed: int = 0) -> Any:
    """The coqui `Xtts` of this config with seeded weights (default init, on the CPU: same bytes everywhere)."""
    from TTS.tts.models.xtts import Xtts

    with _seeded(seed):
        model = Xtts(config)
        model.mel_stats.copy_(torch.rand(80) * 3.0 + 2.0)
    return model


def synthetic_voice(pitch_hz: float, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-rate modulated harmonic signal: enough for the conditioning encoders."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * REFERENCE_SR)) / REFERENCE_SR
    f0 = pitch_hz * (1.0 + 0.03 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / REFERENCE_SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    audio = envelope * voiced + 0.05 * rng.standard_normal(t.size)
    return (0.5 * audio / np.max(np.abs(audio))).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make-synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write (created if missing)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = make_synthetic_checkpoint(args.out_dir, args.size, args.seed)
    size_mb = (out / "model.pth").stat().st_size / 1e6
    print(f"wrote {args.size} synthetic XTTS-v2 checkpoint to {out} "
          f"(model.pth {size_mb:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed a fork of the global RNG so building a checkpoint leaves the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _released_key_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight-norm parameters under the pre-parametrization names the released file uses.

    torch's weight_norm load hook maps `weight_g`/`weight_v` back, so loading
    exercises the same conversion a real checkpoint goes through.
    """
    renamed = {}
    for key, value in state.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value
    return renamed


@torch.inference_mode()
def _latents(model: Any, audio: np.ndarray) -> dict[str, torch.Tensor]:
    wav = torch.from_numpy(audio)[None, :]
    config = model.config
    gpt_cond_latent = model.get_gpt_cond_latents(
        wav, REFERENCE_SR, length=config.gpt_cond_len, chunk_length=config.gpt_cond_chunk_len
    )
    speaker_embedding = model.get_speaker_embedding(wav, REFERENCE_SR)
    return {"gpt_cond_latent": gpt_cond_latent.clone(), "speaker_embedding": speaker_embedding.clone()}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
