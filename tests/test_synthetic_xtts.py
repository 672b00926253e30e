"""The synthetic XTTS-v2 checkpoint: layout, format, determinism, vocab, and loading like real weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from workers.engines.synthetic import build_config, build_model, main
from workers.engines.synthetic_vocab import FULL_VOCAB_SIZE, LANGUAGES, write_vocab
from workers.engines.xtts_model import (
    CheckpointError,
    coqui_model_dir,
    find_checkpoint,
    load_xtts,
    verify_checkpoint_dir,
)

LAYOUT = ("config.json", "model.pth", "vocab.json", "speakers_xtts.pth", "mel_stats.pth", "hash.md5",
          "samples/en_sample.wav")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_and_v2_config(tiny_checkpoint: Path) -> None:
    for name in LAYOUT:
        assert (tiny_checkpoint / name).is_file(), name
    args = json.loads((tiny_checkpoint / "config.json").read_text())["model_args"]
    assert (args["gpt_layers"], args["gpt_n_model_channels"]) == (2, 64)
    # The v2 settings that XttsArgs() would get wrong (its defaults are v1).
    assert args["gpt_num_audio_tokens"] == 1026 and args["gpt_stop_audio_token"] == 1025
    assert args["gpt_use_perceiver_resampler"] is True
    assert args["gpt_number_text_tokens"] == FULL_VOCAB_SIZE
    md5 = hashlib.md5((tiny_checkpoint / "model.pth").read_bytes()).hexdigest()
    assert (tiny_checkpoint / "hash.md5").read_text().strip() == md5


def test_model_file_is_the_format_coqui_does_not_rewrite(tiny_checkpoint: Path) -> None:
    saved = torch.load(tiny_checkpoint / "model.pth", map_location="cpu", weights_only=True)
    assert set(saved) == {"config", "model"} and isinstance(saved["config"], dict)
    keys = list(saved["model"])
    assert any(k.endswith(".weight_g") for k in keys) and any(k.endswith(".weight_v") for k in keys)
    assert not [k for k in keys if "parametrizations" in k or "gpt_inference" in k or k.startswith("xtts.")]
    assert {k.split(".")[0] for k in keys} == {"gpt", "hifigan_decoder", "mel_stats"}


def test_loads_like_plain_coqui_and_leaves_the_directory_untouched(tiny_checkpoint: Path) -> None:
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in tiny_checkpoint.rglob("*") if p.is_file()}
    model, config = load_xtts(tiny_checkpoint)
    after = {p: (_sha(p), p.stat().st_mtime_ns) for p in tiny_checkpoint.rglob("*") if p.is_file()}
    assert before == after, "loading must not rewrite the checkpoint (a read-only directory must load)"

    plain_config = XttsConfig()
    plain_config.load_json(str(tiny_checkpoint / "config.json"))
    plain = Xtts(plain_config)
    plain.load_checkpoint(plain_config, checkpoint_dir=str(tiny_checkpoint), eval=True)
    ours = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    theirs = {**dict(plain.named_parameters()), **dict(plain.named_buffers())}
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert torch.equal(model.mel_stats, torch.load(tiny_checkpoint / "mel_stats.pth", weights_only=True))
    assert model.tokenizer.get_number_tokens() == config.model_args.gpt_number_text_tokens
    assert list(model.speaker_manager.speakers) == ["Synthetic Voice A", "Synthetic Voice B"]
    assert not model.training and not model.hifigan_decoder.training


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert main(["--size", "tiny", "--seed", "0", str(tmp_path / "again")]) == 0
    for name in LAYOUT:
        assert _sha(tmp_path / "again" / name) == _sha(tiny_checkpoint / name), name
    seed0, seed1 = build_model(build_config("tiny"), 0), build_model(build_config("tiny"), 1)
    assert torch.equal(seed0.gpt.mel_head.weight, build_model(build_config("tiny"), 0).gpt.mel_head.weight)
    assert not torch.equal(seed0.gpt.mel_head.weight, seed1.gpt.mel_head.weight)


def test_full_size_vocab_is_accepted_by_coqui_tokenizer(tmp_path: Path) -> None:
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    tokenizer = VoiceBpeTokenizer(str(write_vocab(tmp_path / "vocab.json")))
    assert tokenizer.get_number_tokens() == FULL_VOCAB_SIZE == len(tokenizer)
    ids = {t: tokenizer.tokenizer.token_to_id(t) for t in ("[STOP]", "[UNK]", "[SPACE]")}
    assert ids == {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    for token in [f"[{lang}]" for lang in LANGUAGES] + ["[START]"]:
        assert tokenizer.tokenizer.token_to_id(token) is not None, token
    for lang, text in [("en", "The otherworldly light spilled over us, 42 times!"),
                       ("pt", "Então a velha levantou a lanterna: você consegue ver?")]:
        ids = tokenizer.encode(text, lang)
        assert ids[0] == tokenizer.tokenizer.token_to_id(f"[{lang}]")
        assert 1 not in ids, "ordinary English or Portuguese must not need [UNK]"
        assert tokenizer.decode(ids).startswith(f"[{lang}]")


def test_full_size_architecture_has_the_real_dimensions() -> None:
    from transformers.initialization import no_init_weights
    from TTS.tts.models.xtts import Xtts

    config = build_config("full")
    args = config.model_args
    assert (args.gpt_layers, args.gpt_n_model_channels, args.gpt_n_heads) == (30, 1024, 16)
    assert (args.input_sample_rate, args.output_sample_rate, args.decoder_input_dim) == (22050, 24000, 1024)
    with no_init_weights():  # shapes only: uninitialised memory is never touched
        model = Xtts(config)
    params = sum(p.numel() for p in model.parameters())
    assert 466.8e6 < params < 467.0e6, params  # XTTS-v2: 466.9 M parameters


def test_missing_files_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        verify_checkpoint_dir(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(CheckpointError, match="missing model.pth, vocab.json"):
        load_xtts(tmp_path)


def test_find_checkpoint_order(tiny_checkpoint: Path, tmp_path: Path) -> None:
    env = {"TTS_HOME": str(tmp_path / "coqui")}
    assert find_checkpoint(None, env) is None
    cached = coqui_model_dir(env)
    assert cached == tmp_path / "coqui" / "tts" / "tts_models--multilingual--multi-dataset--xtts_v2"
    cached.mkdir(parents=True)
    assert find_checkpoint(None, env) is None, "an incomplete coqui download is not used"
    for name in ("config.json", "model.pth", "vocab.json"):
        os.symlink(tiny_checkpoint / name, cached / name)
    assert find_checkpoint(None, env) == cached
    other = tmp_path / "other"
    other.symlink_to(tiny_checkpoint)
    assert find_checkpoint(None, {**env, "XTTS_STREAM_CHECKPOINT": str(other)}) == other
    assert find_checkpoint(tiny_checkpoint, {**env, "XTTS_STREAM_CHECKPOINT": str(other)}) == tiny_checkpoint
    with pytest.raises(CheckpointError, match="not found"):
        find_checkpoint(tmp_path / "typo", env)
