"""XTTS through coqui-tts's stock `inference_stream`: the baseline the fast path is measured against.

One job at a time (coqui keeps per-request state on the model). Each `step()`
advances the running job's generator by one yielded piece, so a cancel or a
higher-priority first chunk waits at most one piece.

The last piece must carry `final=True`, but the stock generator only reveals
its end by raising StopIteration on the *next* call, and for a non-final piece
that call generates a whole further piece. Holding a full piece back would
add one piece of latency to every chunk's first audio, so instead the engine
holds back only the last `TAIL_SAMPLES` samples of what it has; the end of the
generator is then detected for free and the held tail goes out as the final
piece, never empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from transformers import LogitsProcessorList

from pipeline.settings import out_of_bounds
from pipeline.text.limits import forced_tokens

from .base import EngineError, EngineInfo, JobFailed, PieceOut, SynthJob, to_pcm16
from .job_queue import JobQueue, is_cancelled
from .length_policy import ForcedLengthProcessor
from .voices import VoiceCache, VoiceError, load_for_service, speaker_names
from .xtts_model import dtype_name

log = logging.getLogger(__name__)

TAIL_SAMPLES = 256  # one vocoder hop (10.7 ms at 24 kHz)
DEFAULT_PIECE_TOKENS = 20
OVERLAP_SAMPLES = 1024
WARM_UP_TEXT = "Hello there, friend."  # about as long as the FAST profile's first chunk


class JobRejected(ValueError):
    """A job this engine cannot synthesize; becomes JobFailed."""


@dataclass
class _Running:
    job: SynthJob
    stream: Iterator[torch.Tensor]
    piece_index: int = 0
    sample_offset: int = 0
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<i2"))

    def push(self, samples: np.ndarray) -> PieceOut | None:
        pending = np.concatenate([self.tail, samples])
        if len(pending) <= TAIL_SAMPLES:
            self.tail = pending
            return None
        self.tail = pending[-TAIL_SAMPLES:]
        return self._piece(pending[:-TAIL_SAMPLES], final=False)

    def finish(self) -> PieceOut | JobFailed:
        if len(self.tail) == 0:
            return JobFailed(self.job, "XTTS produced no audio for this text")
        return self._piece(self.tail, final=True)

    def _piece(self, samples: np.ndarray, final: bool) -> PieceOut:
        piece = PieceOut(self.job, self.piece_index, self.sample_offset, samples, final)
        self.piece_index += 1
        self.sample_offset += len(samples)
        return piece


class StockXttsEngine:
    """The Engine protocol over a loaded coqui `Xtts` model (fp32)."""

    def __init__(self, model: Any, config: Any, checkpoint_dir: str | Path, voices: VoiceCache,
                 default_language: str = "en") -> None:
        dtype = next(model.parameters()).dtype
        if dtype != torch.float32:
            raise EngineError(f"stock XTTS inference only runs in fp32, the model is {dtype_name(dtype)}")
        self.model = model
        self.config = config
        self.voices = voices
        self.default_language = default_language
        self.info = EngineInfo(
            engine="xtts-stock",
            model=Path(checkpoint_dir).name,
            sample_rate=int(config.model_args.output_sample_rate),
            dtype="fp32",
            device=str(model.device),
            char_limits=dict(model.tokenizer.char_limits),
            voices=speaker_names(model), capacity=1, streaming=True,
        )
        self._languages = {lang.split("-")[0] for lang in config.languages}
        self._queue = JobQueue()
        self._running: _Running | None = None

    def warm_up(self) -> None:
        job = SynthJob("warm-up", 0, 0, WARM_UP_TEXT, language=self.default_language,
                       forced_tokens=forced_tokens(WARM_UP_TEXT))
        try:
            running = self._start(job)
        except JobRejected as exc:
            raise EngineError(f"XTTS warm-up failed: {exc}") from exc
        for _ in running.stream:
            pass

    def add(self, job: SynthJob) -> None:
        self._queue.push(job)

    def cancel(self, stream: str, below_epoch: int | None = None) -> int:
        dropped = self._queue.drop(stream, below_epoch)
        if self._running is not None and is_cancelled(self._running.job, stream, below_epoch):
            self._running.stream.close()
            self._running = None
            dropped += 1
        return dropped

    def has_work(self) -> bool:
        return self._running is not None or bool(self._queue)

    def step(self) -> list[PieceOut | JobFailed]:
        if self._running is None:
            job = self._queue.pop()
            if job is None:
                return []
            job.started()
            try:
                self._running = self._start(job)
            except JobRejected as exc:
                return [JobFailed(job, str(exc))]
            except Exception as exc:  # e.g. a voice file that breaks the encoders
                log.exception("cannot start XTTS job %s", job.key)
                return [JobFailed(job, f"XTTS cannot start this job: {exc}")]
        running = self._running
        try:
            wav = next(running.stream)
        except StopIteration:
            self._running = None
            return [running.finish()]
        except Exception as exc:  # a bad job must not take the engine down
            log.exception("XTTS synthesis failed for %s", running.job.key)
            running.stream.close()
            self._running = None
            return [JobFailed(running.job, f"XTTS synthesis failed: {exc}")]
        piece = running.push(to_pcm16(wav.detach().float().cpu().numpy()))
        return [piece] if piece is not None else []

    def close(self) -> None:
        if self._running is not None:
            self._running.stream.close()
        self._running = None
        self._queue.clear()

    def _start(self, job: SynthJob) -> _Running:
        text = job.text.strip()
        if not text:
            raise JobRejected("empty text")
        language = (job.language or self.default_language).lower()
        if language.split("-")[0] not in self._languages:
            raise JobRejected(f"language '{language}' is not supported by XTTS; supported: "
                              f"{', '.join(sorted(self._languages))}")
        self._check_tokens(text, language)
        try:
            voice = self.voices.get(job.voice)
        except VoiceError as exc:
            raise JobRejected(str(exc)) from exc
        kwargs = self._sampling(job.sampling)
        if job.forced_tokens is not None:
            limit = self.model.gpt.max_gen_mel_tokens
            if not 1 <= job.forced_tokens <= limit:
                raise JobRejected(f"forced_tokens must be in 1..{limit}, got {job.forced_tokens}")
            stop = self.model.gpt.stop_audio_token
            kwargs["logits_processor"] = LogitsProcessorList([ForcedLengthProcessor(job.forced_tokens, stop)])
        stream = self.model.inference_stream(
            text,
            language,
            voice.gpt_cond_latent,
            voice.speaker_embedding,
            overlap_wav_len=OVERLAP_SAMPLES,
            **kwargs,
        )
        return _Running(job, stream)

    def _sampling(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """inference_stream's keyword arguments from a job's sampling dict (checkpoint defaults for gaps)."""
        problem = out_of_bounds(sampling)
        if problem:
            raise JobRejected(f"bad sampling settings: {problem}")
        try:
            kwargs = {
                "stream_chunk_size": int(sampling.get("piece_tokens", DEFAULT_PIECE_TOKENS)),
                "temperature": float(sampling.get("temperature", self.config.temperature)),
                "top_k": int(sampling.get("top_k", self.config.top_k)),
                "top_p": float(sampling.get("top_p", self.config.top_p)),
                "repetition_penalty": float(sampling.get("repetition_penalty", self.config.repetition_penalty)),
                "speed": float(sampling.get("speed", 1.0)),
            }
        except (TypeError, ValueError) as exc:  # a checkpoint's own defaults
            raise JobRejected(f"bad sampling settings {sampling!r}: {exc}") from exc
        return kwargs

    def _check_tokens(self, text: str, language: str) -> None:
        """Tokenize as inference_stream will, so bad text fails here with a clear message."""
        try:
            tokens = self.model.tokenizer.encode(text.lower(), lang=language)
        except (NotImplementedError, ImportError, KeyError, ValueError) as exc:
            raise JobRejected(f"XTTS cannot tokenize this text for language '{language}': {exc}") from exc
        limit = self.config.model_args.gpt_max_text_tokens
        if len(tokens) >= limit:
            raise JobRejected(f"text is {len(tokens)} tokens long; XTTS takes fewer than {limit} per chunk "
                              f"(about {self.info.char_limits.get(language.split('-')[0], 250)} characters)")


def build_xtts_stock(service: Any, checkpoint_dir: str | Path | None = None) -> StockXttsEngine:
    """The stock engine from the settings' [service] section (device, dtype, cache_dir, voice, language).

    `checkpoint_dir` wins over `service.checkpoint`; without either, coqui's own
    download is used if present. Raises EngineError when no checkpoint is found.
    """
    if service.dtype not in ("auto", "fp32"):
        raise EngineError(f"stock XTTS inference only runs in fp32; dtype '{service.dtype}' is for the fast path")
    path, model, config, voices = load_for_service(service, checkpoint_dir)
    return StockXttsEngine(model, config, path, voices, default_language=service.language)
