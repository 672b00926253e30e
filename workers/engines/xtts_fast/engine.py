"""FastXttsEngine: XTTS-v2 through our own batched decode loop and incremental vocoder.

One `step()` admits waiting jobs (a batched prefill gives each its first token),
runs one batched decode step for every running job, and hands the jobs that
reached a piece boundary to the vocoder. On CUDA the vocoder runs on its own
stream, overlapping the next decode step; its audio is copied to pinned host
memory asynchronously and returned by the following `step()`. On the CPU
everything runs in order, in fp32 or the configured dtype, and pieces come back
from the same step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from workers.engines.base import EngineInfo, JobFailed, PieceOut, SynthJob, to_pcm16
from workers.engines.xtts_fast.batcher import Batcher, Running
from workers.engines.xtts_fast.frames import FrameChain
from workers.engines.xtts_fast.gpt_decoder import GptDecoder
from workers.engines.xtts_fast.graphs import DecodeRunner
from workers.engines.xtts_fast.sampling import Sampler, SamplingParams
from workers.engines.xtts_fast.vocoder import (
    IncrementalVocoder, PieceAudio, PieceRequest, VocoderSettings, VocoderStream, fold_weight_norm,
)

log = logging.getLogger("xtts_stream.xtts_fast")

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
WARM_UP_TEXT = "Hello there, how are you?"


@dataclass(frozen=True)
class FastSettings:
    slots: int = 8  # most sequences decoded together
    max_len: int = 640  # KV cache positions per slot: prefix + audio tokens
    max_prefills_per_step: int = 8
    use_graphs: bool = True  # CUDA graphs for the decode step (CUDA only)
    overlap_vocoder: bool = True  # vocoder on its own CUDA stream, returned one step later (CUDA only)
    key_bucket: int = 128
    vocoder_dtype: torch.dtype | None = None  # None: the GPT's dtype on CUDA, fp32 on the CPU
    vocoder: VocoderSettings = field(default_factory=VocoderSettings)
    seed: int = 0
    first_piece_tokens: int = 4
    piece_tokens: int = 16

    @classmethod
    def for_device(cls, device: torch.device, **overrides: Any) -> "FastSettings":
        base = cls(slots=256, max_len=1024, max_prefills_per_step=32) if device.type == "cuda" else cls()
        return replace(base, **overrides)


@dataclass
class _Pending:
    """Vocoder work launched but not yet returned."""

    runs: list[Running]
    audio: list[PieceAudio]
    host: list[torch.Tensor]
    done: torch.cuda.Event | None


class FastXttsEngine:
    def __init__(self, model: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 settings: FastSettings | None = None, model_name: str = "xtts-v2",
                 voices: Callable[[str], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 default_language: str = "en") -> None:
        """`voices` maps a job's voice to (gpt_cond_latent [1, 32, d], speaker_embedding [1, 512, 1]);
        without it the checkpoint's speakers file is used."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.settings = settings or FastSettings.for_device(self.device)
        self.cuda = self.device.type == "cuda"
        s = self.settings
        self.overlap = self.cuda and s.overlap_vocoder
        self.model = model.to(self.device)
        gpt = model.gpt
        # Only what the decode loop runs goes to half precision; the conditioning encoders
        # stay fp32 so new voices can still be computed from reference audio.
        for module in (gpt.gpt, gpt.mel_embedding, gpt.mel_pos_embedding, gpt.text_embedding,
                       gpt.text_pos_embedding, gpt.final_norm, gpt.mel_head):
            module.to(dtype)
        vdtype = s.vocoder_dtype or (dtype if self.cuda else torch.float32)
        hifigan = fold_weight_norm(model.hifigan_decoder.waveform_decoder).to(vdtype)
        self.vocoder = IncrementalVocoder(hifigan, s.vocoder, vdtype)
        self.decoder = GptDecoder(gpt, s.slots, s.max_len)
        self.runner = DecodeRunner(self.decoder, s.use_graphs, s.key_bucket)
        self.sampler = Sampler(s.slots, self.decoder.vocab, self.decoder.stop_audio_token, self.device, s.seed)
        self.max_gen = min(gpt.max_gen_mel_tokens, s.max_len)
        self.latents = torch.zeros(s.slots, self.max_gen + 1, self.decoder.d, dtype=dtype, device=self.device)
        self.batcher = Batcher(s.slots)
        self.args = model.args
        self.voices = voices
        self.default_language = default_language
        self.languages = {lang.split("-")[0] for lang in getattr(model.config, "languages", []) or []}
        self._voice_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pending: list[_Pending] = []
        self._failed: list[JobFailed] = []
        self.graph_error: str | None = None
        self.voc_stream = torch.cuda.Stream(self.device) if self.overlap else None
        self.info = EngineInfo(
            engine="xtts-fast", model=model_name, sample_rate=int(self.args.output_sample_rate),
            dtype=DTYPE_NAMES[dtype], device=str(self.device),
            char_limits=dict(getattr(model.tokenizer, "char_limits", {}) or {}),
        )

    # -- Engine protocol ----------------------------------------------------------------

    def add(self, job: SynthJob) -> None:
        self.batcher.add(job)

    def cancel(self, stream: str, below_epoch: int | None = None) -> int:
        dropped, running = self.batcher.cancel(stream, below_epoch)
        for run in running:
            run.finished = True
            run.cancelled = True
        if running:
            self.batcher.compact(self._move)
        return dropped + len(running)

    def has_work(self) -> bool:
        return self.batcher.has_work() or bool(self._pending) or bool(self._failed)

    def step(self) -> list[PieceOut | JobFailed]:
        out: list[PieceOut | JobFailed] = self._failed
        self._failed = []
        self._admit()
        decoded = self._launch_decode()
        if self.overlap and decoded is not None:
            out += self._collect()  # last step's vocoder work overlapped this decode
        if decoded is not None:
            self._finish_decode(decoded)
        self._launch_pieces()
        self.batcher.compact(self._move)
        if not self.overlap or not self.batcher.running:
            out += self._collect()
        return out

    def warm_up(self) -> None:
        """Run first-chunk-sized jobs (and capture the decode graphs) so requests pay no warm-up."""
        t0 = time.perf_counter()
        try:
            captured = self.runner.capture_all()
        except RuntimeError as exc:  # a capture failure costs speed, not service
            log.warning("xtts-fast: CUDA graph capture failed, decoding eagerly: %s", exc)
            self.graph_error = str(exc)
            self.runner.use_graphs = False
            captured = 0
        self.add(SynthJob(stream="__warm_up", epoch=0, chunk_index=0, text=WARM_UP_TEXT, sampling={},
                          forced_tokens=self.settings.first_piece_tokens + self.settings.piece_tokens))
        while self.has_work():
            for item in self.step():
                if isinstance(item, JobFailed):
                    raise RuntimeError(f"warm-up failed: {item.message}")
        log.info("xtts-fast warm-up: %d decode graphs, %.2f s", captured, time.perf_counter() - t0)

    def close(self) -> None:
        self._pending.clear()
        self.batcher = Batcher(self.settings.slots)
        del self.decoder.k_cache, self.decoder.v_cache, self.latents
        if self.cuda:
            torch.cuda.empty_cache()

    # -- admission and prefill ----------------------------------------------------------

    def _admit(self) -> None:
        new: list[tuple[Running, torch.Tensor]] = []
        limit = min(self.batcher.free_slots(), self.settings.max_prefills_per_step)
        while len(new) < limit:
            job = self.batcher.next_waiting()
            if job is None:
                break
            try:
                new.append(self._start(job))
            except (ValueError, KeyError, RuntimeError, NotImplementedError, AssertionError) as exc:
                self._failed.append(JobFailed(job, f"cannot synthesize chunk: {exc}"))
        if not new:
            return
        runs = [r for r, _ in new]
        with torch.inference_mode():
            logits, latents = self.decoder.prefill([r.slot for r in runs], [p for _, p in new])
            rows = torch.tensor([r.slot for r in runs], device=self.device)
            tokens = self.sampler.sample(logits, rows)
            self.latents[rows, 0] = latents
            self.runner.tokens[rows] = tokens
            stops = tokens.eq(self.decoder.stop_audio_token).tolist()
        for run, stop in zip(runs, stops):
            run.count = 1
            run.finished = run.count >= run.max_latents or (stop and not run.forced)

    def _start(self, job: SynthJob) -> tuple[Running, torch.Tensor]:
        params = SamplingParams.from_job(job.sampling)
        speed = float(job.sampling.get("speed", 1.0))
        first = int(job.sampling.get("first_piece_tokens", self.settings.first_piece_tokens))
        every = int(job.sampling.get("piece_tokens", self.settings.piece_tokens))
        if not speed > 0.0 or first < 1 or every < 1:
            raise ValueError(f"need speed > 0, first_piece_tokens >= 1, piece_tokens >= 1; got {speed}, {first}, {every}")
        text = job.text.strip().lower()
        if not text:
            raise ValueError("empty text")
        language = (job.language or self.default_language).lower().split("-")[0]
        if self.languages and language not in self.languages:
            raise ValueError(f"language '{language}' is not supported by XTTS; supported: {', '.join(sorted(self.languages))}")
        tokens = self.model.tokenizer.encode(text, lang=language)
        if len(tokens) >= self.args.gpt_max_text_tokens:
            raise ValueError(f"text is {len(tokens)} tokens; XTTS takes fewer than {self.args.gpt_max_text_tokens}")
        cond, speaker = self._voice(job.voice)
        with torch.inference_mode():
            prefix = self.decoder.prefix_embedding(cond, torch.tensor(tokens, device=self.device))
        room = self.settings.max_len - prefix.shape[0] + 1
        if room < 1:
            raise ValueError(f"text too long for the KV cache ({prefix.shape[0]} of {self.settings.max_len} positions)")
        cap = min(self.max_gen, room)
        forced = job.forced_tokens is not None
        if forced and job.forced_tokens < 1:
            raise ValueError(f"forced_tokens must be >= 1, got {job.forced_tokens}")
        chain = FrameChain.for_model(self.args.gpt_code_stride_len, self.args.output_hop_length,
                                     self.args.input_sample_rate, self.args.output_sample_rate, speed)
        stream = VocoderStream(chain, speaker)

        def make(slot: int) -> Running:
            # Stock generate's input ids are 1s plus the start token, and its repetition
            # penalty covers them: start every row's seen-set the same way.
            self.sampler.reset(slot, params, [1, self.decoder.start_audio_token], allow_stop=not forced)
            return Running(job=job, slot=slot, prefix_len=prefix.shape[0],
                           max_latents=min(job.forced_tokens, cap) if forced else cap, forced=forced,
                           state=stream, next_piece_at=first, first_piece_tokens=first, piece_tokens=every)

        return self.batcher.place(make), prefix

    def _voice(self, voice: str) -> tuple[torch.Tensor, torch.Tensor]:
        if voice not in self._voice_cache:
            cond, speaker = self._voice_latents(voice)
            self._voice_cache[voice] = (
                cond.to(self.device, self.dtype),
                speaker.reshape(-1, 1).to(self.device, self.vocoder.dtype),
            )
        return self._voice_cache[voice]

    def _voice_latents(self, voice: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.voices is not None:
            return self.voices(voice)
        manager = getattr(self.model, "speaker_manager", None)
        speakers = getattr(manager, "speakers", None) or {}
        if not speakers:
            raise KeyError("no voices: the checkpoint has no speakers file and no voice provider was given")
        name = voice or next(iter(speakers))
        if name not in speakers:
            raise KeyError(f"unknown voice '{voice}'; known: {', '.join(sorted(speakers))}")
        entry = speakers[name]
        return entry["gpt_cond_latent"], entry["speaker_embedding"]

    # -- decode -------------------------------------------------------------------------

    def _launch_decode(self) -> tuple[torch.Tensor, int] | None:
        running = self.batcher.running
        b = len(running)
        if b == 0 or all(r.finished for r in running):
            return None
        # A row that finished at admission rides along (rows must stay 0..b-1); aim its
        # writes at places nothing reads: the last cache position and a spare latent row.
        last = self.settings.max_len - 1
        host = torch.tensor([[r.cache_pos, r.count, r.count] if not r.finished else [last, 0, self.max_gen]
                             for r in running], dtype=torch.long)
        if self.cuda:
            host = host.pin_memory()
        dev = host.to(self.device, non_blocking=True)
        self.runner.cache_pos[:b] = dev[:, 0]
        self.runner.audio_pos[:b] = dev[:, 1]
        with torch.inference_mode():
            logits, latents = self.runner.run(b, int(host[:, 0].max()) + 1)
            rows = torch.arange(b, device=self.device)
            tokens = self.sampler.sample(logits, rows)
            self.latents[rows, dev[:, 2]] = latents
            self.runner.tokens[:b] = tokens
            stops = tokens.eq(self.decoder.stop_audio_token)
            stops_host = torch.empty(b, dtype=torch.bool, pin_memory=self.cuda)
            stops_host.copy_(stops, non_blocking=True)
        return stops_host, b

    def _finish_decode(self, decoded: tuple[torch.Tensor, int]) -> None:
        stops_host, b = decoded
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        stops = stops_host.tolist()
        for run, stop in zip(self.batcher.running[:b], stops):
            if run.finished:
                continue
            run.count += 1
            run.finished = run.count >= run.max_latents or (stop and not run.forced)

    def _move(self, src: int, dst: int, run: Running) -> None:
        with torch.inference_mode():
            self.decoder.move_slot(src, dst, run.cache_pos + 1)
            self.sampler.move(src, dst)
            self.latents[dst, : run.count] = self.latents[src, : run.count]
            self.runner.tokens[dst] = self.runner.tokens[src]

    # -- pieces -------------------------------------------------------------------------

    def _launch_pieces(self) -> None:
        requests: list[PieceRequest] = []
        for run in self.batcher.running:
            if run.cancelled:
                continue
            if not (run.finished or run.count >= run.next_piece_at):
                continue
            stream: VocoderStream = run.state  # type: ignore[assignment]
            lo = self.vocoder.latents_from(stream, run.count)
            with torch.inference_mode():
                req = self.vocoder.plan(stream, self.latents[run.slot, lo : run.count], lo, run.count,
                                        run.finished, tag=run)
            if req is None:
                run.next_piece_at = run.count + 1
                continue
            run.next_piece_at = run.count + run.piece_tokens
            requests.append(req)
        if not requests:
            return
        if not self.overlap:
            audio = self.vocoder.run(requests)
            self._pending.append(_Pending([r.tag for r in requests], [replace(a, samples=a.samples.cpu()) for a in audio],
                                          [], None))
            return
        main = torch.cuda.current_stream(self.device)
        self.voc_stream.wait_stream(main)
        for req in requests:  # made on the main stream, read on the vocoder stream
            req.frames.record_stream(self.voc_stream)
        with torch.cuda.stream(self.voc_stream):
            audio = self.vocoder.run(requests)
            host = [torch.empty(a.samples.shape[0], dtype=torch.float32, pin_memory=True) for a in audio]
            for h, a in zip(host, audio):
                h.copy_(a.samples, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.voc_stream)
        self._pending.append(_Pending([r.tag for r in requests], audio, host, done))

    def _collect(self) -> list[PieceOut | JobFailed]:
        out: list[PieceOut | JobFailed] = []
        for pending in self._pending:
            if pending.done is not None:
                pending.done.synchronize()
            for i, (run, audio) in enumerate(zip(pending.runs, pending.audio)):
                if run.cancelled:
                    continue
                samples = pending.host[i] if pending.host else audio.samples
                out.append(PieceOut(job=run.job, piece_index=run.piece_index, sample_offset=audio.offset,
                                    samples=to_pcm16(samples.numpy()), final=audio.final))
                run.piece_index += 1
        self._pending = []
        return out


def build_xtts_fast(service_settings: Any, checkpoint_dir: str | Path | None = None,
                    **overrides: Any) -> FastXttsEngine:
    """The fast engine from the [service] settings (device, dtype, cache_dir, voice, language).

    Loads the checkpoint with coqui-tts (fp32), then runs our loop over its modules
    in the configured dtype (auto: fp16 on CUDA, fp32 on the CPU). `overrides` set
    FastSettings fields (slots, max_len, use_graphs, ...).
    """
    from workers.engines.base import EngineError
    from workers.engines.voices import VoiceCache, VoiceError
    from workers.engines.xtts_model import CheckpointError, find_checkpoint, load_xtts, resolve_device, resolve_dtype

    try:
        path = find_checkpoint(checkpoint_dir or service_settings.checkpoint or None)
        if path is None:
            raise EngineError("no XTTS checkpoint configured or found (set service.checkpoint or "
                              "XTTS_STREAM_CHECKPOINT, or make one with `xtts-stream make-synthetic`)")
        device = resolve_device(service_settings.device)
        dtype = resolve_dtype(service_settings.dtype, device)
        model, _config = load_xtts(path, device=device, dtype="fp32")
    except CheckpointError as exc:
        raise EngineError(str(exc)) from exc
    cache = VoiceCache(model, path, cache_dir=service_settings.cache_dir or None, default_voice=service_settings.voice)
    try:
        cache.get("")
    except VoiceError as exc:
        raise EngineError(str(exc)) from exc

    def voices(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        latents = cache.get(name)
        return latents.gpt_cond_latent, latents.speaker_embedding

    settings = FastSettings.for_device(torch.device(device), **overrides)
    return FastXttsEngine(model, device, dtype, settings, model_name=path.name, voices=voices,
                          default_language=service_settings.language)
