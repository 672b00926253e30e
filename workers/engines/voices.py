"""XTTS voices: conditioning latents computed once per voice, cached in memory and on disk.

A voice is named by a request (or the service default) as one of:
- "" : the default voice (the service's configured voice, else the first speaker
  of the checkpoint's speakers file, else the checkpoint's `samples/en_sample.wav`);
- a speaker name from `speakers_xtts.pth` (latents shipped with the checkpoint);
- a path to reference audio, read with soundfile (torchaudio.load needs FFmpeg
  libraries that a CPU install lacks) and turned into latents by the model.

Latents of reference audio are keyed by a hash of the audio file's bytes, the
checkpoint's identity and the conditioning settings, so a changed file or
checkpoint never reuses stale latents. Computing them needs an fp32 model
(coqui builds the conditioning mel spectrogram in fp32).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

log = logging.getLogger(__name__)

XTTS_SR = 22050
DEFAULT_SAMPLE = Path("samples") / "en_sample.wav"


def speaker_names(model: Any) -> list[str]:
    """The speaker names a checkpoint ships (its speakers file), in the file's order."""
    manager = getattr(model, "speaker_manager", None)
    return list(getattr(manager, "speakers", None) or {})


class VoiceError(ValueError):
    """A voice that cannot be used: unknown name, unreadable or too short audio."""


@dataclass(frozen=True)
class VoiceLatents:
    gpt_cond_latent: torch.Tensor  # [1, 32, gpt dim]
    speaker_embedding: torch.Tensor  # [1, 512, 1]
    source: str


def checkpoint_identity(checkpoint_dir: str | os.PathLike) -> str:
    """A cheap fingerprint of a checkpoint: its hash.md5 if shipped, else size and mtime of model.pth."""
    path = Path(checkpoint_dir)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    if (path / "hash.md5").is_file():
        digest.update((path / "hash.md5").read_bytes())
    else:
        stat = (path / "model.pth").stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class VoiceCache:
    """Latents per voice for one loaded model; `stats` counts where each answer came from."""

    def __init__(self, model: Any, checkpoint_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 default_voice: str = "") -> None:
        self.model = model
        self.checkpoint_dir = Path(checkpoint_dir)
        self.cache_dir = Path(cache_dir).expanduser() / "voices" if cache_dir else None
        self.default_voice = default_voice
        self.identity = checkpoint_identity(self.checkpoint_dir)
        self.stats = {"speakers": 0, "memory": 0, "disk": 0, "computed": 0}
        self._memory: dict[str, VoiceLatents] = {}
        self._file_keys: dict[tuple[str, int, int], str] = {}

    def speaker_names(self) -> list[str]:
        return speaker_names(self.model)

    def default_name(self) -> str:
        """What voice "" means for this checkpoint."""
        if self.default_voice:
            return self.default_voice
        names = self.speaker_names()
        if names:
            return names[0]
        sample = self.checkpoint_dir / DEFAULT_SAMPLE
        if sample.is_file():
            return str(sample)
        raise VoiceError(
            f"no default voice: {self.checkpoint_dir} has no speakers file and no {DEFAULT_SAMPLE}; "
            "set service.voice to a reference audio file"
        )

    def get(self, voice: str = "") -> VoiceLatents:
        name = voice or self.default_name()
        if name in self.speaker_names():
            self.stats["speakers"] += 1
            key = f"speaker:{name}"
            if key not in self._memory:
                entry = self.model.speaker_manager.speakers[name]
                self._memory[key] = self._on_device(entry["gpt_cond_latent"], entry["speaker_embedding"], key)
            return self._memory[key]
        path = Path(name).expanduser()
        if not path.is_file():
            known = ", ".join(self.speaker_names()[:5]) or "none"
            raise VoiceError(f"unknown voice '{name}': not a speaker of this checkpoint (speakers: {known}) "
                             "and not an audio file")
        key = self._key(path)
        if key in self._memory:
            self.stats["memory"] += 1
            return self._memory[key]
        latents = self._from_disk(key) or self._compute(path, key)
        self._memory[key] = latents
        return latents

    def _key(self, path: Path) -> str:
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in self._file_keys:
            config = self.model.config
            digest = hashlib.sha256(path.read_bytes())
            digest.update(self.identity.encode())
            digest.update(repr((config.gpt_cond_len, config.gpt_cond_chunk_len, config.max_ref_len,
                                config.sound_norm_refs)).encode())
            self._file_keys[memo] = digest.hexdigest()[:32]
        return self._file_keys[memo]

    def _from_disk(self, key: str) -> VoiceLatents | None:
        if self.cache_dir is None or not (self.cache_dir / f"{key}.pt").is_file():
            return None
        try:
            saved = torch.load(self.cache_dir / f"{key}.pt", map_location="cpu", weights_only=True)
            latents = self._on_device(saved["gpt_cond_latent"], saved["speaker_embedding"], saved["source"])
        except Exception as exc:  # a torn or foreign file: recompute and overwrite it
            log.warning("ignoring unreadable voice cache file %s: %s", self.cache_dir / f"{key}.pt", exc)
            return None
        self.stats["disk"] += 1
        return latents

    def _compute(self, path: Path, key: str) -> VoiceLatents:
        audio = self._read(path)
        config = self.model.config
        try:
            with torch.inference_mode():
                speaker_embedding = self.model.get_speaker_embedding(audio, XTTS_SR)
                gpt_cond_latent = self.model.get_gpt_cond_latents(
                    audio, XTTS_SR, length=config.gpt_cond_len, chunk_length=config.gpt_cond_chunk_len
                )
        except RuntimeError as exc:  # coqui raises RuntimeError for too-short references
            raise VoiceError(f"cannot use {path} as a voice: {exc}") from exc
        self.stats["computed"] += 1
        latents = VoiceLatents(gpt_cond_latent.clone(), speaker_embedding.clone(), f"file:{path}")
        self._save(key, latents)
        return latents

    def _read(self, path: Path) -> torch.Tensor:
        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:
            raise VoiceError(f"cannot read voice reference {path}: {exc}") from exc
        if data.size == 0:
            raise VoiceError(f"voice reference {path} holds no audio")
        audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))[None, :]
        if sr != XTTS_SR:
            audio = torchaudio.functional.resample(audio, sr, XTTS_SR)
        config = self.model.config
        audio = audio[:, : XTTS_SR * config.max_ref_len]
        if config.sound_norm_refs:
            audio = audio / audio.abs().max().clamp(min=1e-8) * 0.75
        return audio.clamp(-1.0, 1.0).to(self.model.device)

    def _save(self, key: str, latents: VoiceLatents) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        final = self.cache_dir / f"{key}.pt"
        partial = final.with_suffix(f".{os.getpid()}.tmp")
        payload = {"gpt_cond_latent": latents.gpt_cond_latent.float().cpu(),
                   "speaker_embedding": latents.speaker_embedding.float().cpu(), "source": latents.source}
        torch.save(payload, partial)
        os.replace(partial, final)  # atomic: a concurrent reader sees the old file or the whole new one

    def _on_device(self, gpt_cond_latent: torch.Tensor, speaker_embedding: torch.Tensor, source: str) -> VoiceLatents:
        device = self.model.device
        return VoiceLatents(gpt_cond_latent.to(device), speaker_embedding.to(device), source)


def load_for_service(service: Any, checkpoint_dir: str | Path | None) -> tuple[Path, Any, Any, "VoiceCache"]:
    """What both XTTS engines start from: the checkpoint found, the model loaded in
    fp32 on the service's device, and the default voice's latents ready."""
    from .base import EngineError
    from .xtts_model import CheckpointError, find_checkpoint, load_xtts

    try:
        path = find_checkpoint(checkpoint_dir or service.checkpoint or None)
        if path is None:
            raise EngineError("no XTTS checkpoint configured or found (set service.checkpoint or "
                              "XTTS_STREAM_CHECKPOINT, or make one with `xtts-stream make-synthetic`)")
        model, config = load_xtts(path, device=service.device, dtype="fp32")
    except CheckpointError as exc:
        raise EngineError(str(exc)) from exc
    cache = VoiceCache(model, path, cache_dir=service.cache_dir or None, default_voice=service.voice)
    try:
        cache.get("")
    except VoiceError as exc:
        raise EngineError(str(exc)) from exc
    return path, model, config, cache
