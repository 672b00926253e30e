"""FastXttsEngine: XTTS-v2 through our own batched decode loop and incremental vocoder.

One `step()` admits waiting jobs (a batched prefill gives each its first token),
runs one batched decode step for every running job, and hands the jobs that
reached a piece boundary to the vocoder. On CUDA the vocoder runs on its own
stream, overlapping the next decode step; its audio is copied to pinned host
memory asynchronously and returned by the following `step()`, or, when it holds
a stream's first audio, by a short `step()` that only waits for it. On the CPU
everything runs in order, in fp32 or the configured dtype, and pieces come back
from the same step.

While a first chunk waits for its first piece, later chunks wait for admission
and vocoder time (`scheduling.FirstPiecesFirst`); `pieces.PieceDispatcher` cuts
and returns the pieces. Each step's decode is launched before the previous one
is read back, so the host never holds the GPU up with a per-step sync.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from workers.engines.base import EngineInfo, JobFailed, PieceOut, SynthJob
from workers.engines.voices import speaker_names

from .batcher import Batcher, Running
from .frames import FrameChain
from .gpt_decoder import GptDecoder
from .graphs import DecodeRunner
from .pieces import PieceDispatcher
from .sampling import GREEDY_ALLOWED, Sampler, SamplingParams
from .scheduling import FirstPiecesFirst, urgent
from .transfer import long_tensor, start_to_host, to_device
from .vocoder import IncrementalVocoder, VocoderSettings, VocoderStream, fold_weight_norm, window_widths

log = logging.getLogger("xtts_stream.xtts_fast")

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
WARM_UP_TEXT = "Hello there, how are you?"
# Vocoder calls are padded up to one of these batch sizes on CUDA, and warm-up runs each, so
# no request meets a convolution shape for the first time (cuDNN plans each new shape once,
# on the host, stalling the whole loop). Steps of at most 1.5x bound the padding's cost.
VOCODER_BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


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
    max_hold_steps: int = 32  # later chunks wait at most this many steps in a row for first pieces
    pad_vocoder_batches: bool = True  # CUDA only: see VOCODER_BATCHES

    @classmethod
    def for_device(cls, device: torch.device, **overrides: Any) -> "FastSettings":
        # 128 prefills a step: on an H200, 128 streams arriving at once reached their
        # first audio at p95 147 ms, against 225 ms with 32 (docs/benchmarks.md, run 3).
        base = cls(slots=256, max_len=1024, max_prefills_per_step=128) if device.type == "cuda" else cls()
        return replace(base, **overrides)


@dataclass
class _Decoding:
    """A prefill or decode step launched but not yet read back: its rows (None: rode along) and their stop flags."""

    runs: list[Running | None]
    stops: torch.Tensor  # [b] bool, host (pinned on CUDA), valid once `copied` has passed
    copied: torch.cuda.Event | None  # recorded after the copy to the host


class FastXttsEngine:
    sampling_bounds = GREEDY_ALLOWED  # greedy decoding (temperature 0) too

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
        self.model = model.to(self.device)
        gpt = model.gpt
        # Only what the decode loop runs goes to half precision; the conditioning encoders
        # stay fp32 so new voices can still be computed from reference audio.
        for module in (gpt.gpt, gpt.mel_embedding, gpt.mel_pos_embedding, gpt.text_embedding,
                       gpt.text_pos_embedding, gpt.final_norm, gpt.mel_head):
            module.to(dtype)
        vdtype = s.vocoder_dtype or (dtype if self.cuda else torch.float32)
        hifigan = fold_weight_norm(model.hifigan_decoder.waveform_decoder).to(vdtype)
        batches = tuple(b for b in VOCODER_BATCHES if b < s.slots) + (s.slots,)
        self.vocoder = IncrementalVocoder(hifigan, s.vocoder, vdtype,
                                          batch_sizes=batches if self.cuda and s.pad_vocoder_batches else ())
        self.decoder = GptDecoder(gpt, s.slots, s.max_len)
        self.runner = DecodeRunner(self.decoder, s.use_graphs, s.key_bucket)
        self.sampler = Sampler(s.slots, self.decoder.vocab, self.decoder.stop_audio_token, self.device, s.seed)
        self.max_gen = min(gpt.max_gen_mel_tokens, s.max_len)
        self.latents = torch.zeros(s.slots, self.max_gen + 1, self.decoder.d, dtype=dtype, device=self.device)
        self.batcher = Batcher(s.slots)
        self.policy = FirstPiecesFirst(s.max_hold_steps)
        self.args = model.args
        self.voices = voices
        self.default_language = default_language
        self.languages = {lang.split("-")[0] for lang in getattr(model.config, "languages", []) or []}
        self._voice_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pieces = PieceDispatcher(self.vocoder, self.device, self.cuda and s.overlap_vocoder)
        self._launched: list[_Decoding] = []  # prefill and decode steps of this step(), in launch order
        self._decoding: list[_Decoding] = []  # those of the last step(), not read back yet
        self._failed: list[JobFailed] = []
        self.graph_error: str | None = None
        self.info = EngineInfo(
            engine="xtts-fast", model=model_name, sample_rate=int(self.args.output_sample_rate),
            dtype=DTYPE_NAMES[dtype], device=str(self.device),
            char_limits=dict(getattr(model.tokenizer, "char_limits", {}) or {}),
            voices=speaker_names(model), capacity=self.settings.slots, streaming=True,
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

    @property
    def overlap(self) -> bool:
        """Whether the vocoder runs on its own CUDA stream, overlapping decode steps."""
        return self.pieces.overlap

    def has_work(self) -> bool:
        return (self.batcher.has_work() or self.pieces.has_pending() or bool(self._failed)
                or bool(self._decoding))

    def step(self) -> list[PieceOut | JobFailed]:
        out: list[PieceOut | JobFailed] = self._failed
        self._failed = []
        if self.pieces.first_pieces_pending() and not self.policy.first_audio_pending(self.batcher):
            # A listener waits for this first audio and no other first chunk needs the step:
            # hand it over now rather than after another decode step (and maybe the prefill
            # of later chunks); the caller steps again at once.
            return out + self.pieces.collect(urgent_only=True)
        hold = self.policy.hold_this_step(self.batcher)
        # Launch this step's prefill and decode before reading the last step's back: the GPU
        # never waits for the host's bookkeeping, and the host waits only for the step before.
        self._launched = []
        self._admit(hold)
        decoding = self._launch_decode()
        if decoding is not None:
            self._launched.append(decoding)
        previous, self._decoding = self._decoding, self._launched
        if self.pieces.overlap and decoding is not None:
            out += self.pieces.collect()  # last step's vocoder work overlapped this decode
        for launched in previous:
            self._confirm(launched)
        self.pieces.launch(self.batcher.running, self.latents, hold, time.monotonic())
        self.batcher.compact(self._move)
        if not self.pieces.overlap or decoding is None:
            out += self.pieces.collect()
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
        shapes = self._warm_up_vocoder()
        log.info("xtts-fast warm-up: %d decode graphs, %d vocoder shapes, %.2f s", captured, shapes,
                 time.perf_counter() - t0)

    def _warm_up_vocoder(self) -> int:
        """Run the padded vocoder batch sizes at the window widths of steady streaming (CUDA only)."""
        if not self.vocoder.batch_sizes:
            return 0
        s = self.settings
        chain = FrameChain.for_model(self.args.gpt_code_stride_len, self.args.output_hop_length,
                                     self.args.input_sample_rate, self.args.output_sample_rate, 1.0)
        widths = window_widths(chain, self.vocoder.settings, s.first_piece_tokens, s.piece_tokens, self.max_gen)
        count = self.vocoder.warm_up(widths, self.decoder.d, self.device)
        torch.cuda.synchronize(self.device)
        return count

    def memory_bytes(self) -> int:
        return int(torch.cuda.memory_reserved(self.device)) if self.cuda else 0

    def close(self) -> None:
        self.pieces.clear()
        self._decoding = []
        self.batcher = Batcher(self.settings.slots)
        del self.decoder.k_cache, self.decoder.v_cache, self.latents
        if self.cuda:
            torch.cuda.empty_cache()

    # -- admission and prefill ----------------------------------------------------------

    def _admit(self, hold: bool) -> None:
        """Start waiting jobs with one batched prefill, most urgent first; while `hold`, only first
        chunks (priority 0) and later chunks close to their deadline."""
        new: list[tuple[Running, torch.Tensor]] = []
        now = time.monotonic()
        limit = min(self.batcher.free_slots(), self.settings.max_prefills_per_step)
        while len(new) < limit:
            job = self.batcher.next_waiting(hold, now, urgent)
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
            # Stock generate's input ids are 1s plus the start token, and its repetition
            # penalty covers them: start every row's seen-set the same way.
            self.sampler.reset_rows([r.slot for r in runs], [r.sampling for r in runs],
                                    [1, self.decoder.start_audio_token], [not r.forced for r in runs])
            logits, latents = self.decoder.prefill([r.slot for r in runs], [p for _, p in new])
            rows = long_tensor([r.slot for r in runs], self.device)
            tokens = self.sampler.sample(logits, rows)
            self.latents[rows, 0] = latents
            self.runner.tokens[rows] = tokens
        for run in runs:
            run.count = 1  # confirmed when the prefill's stop flags are read back, like a decode step's
        self._launched.append(self._read_back_later(runs, tokens))

    def _start(self, job: SynthJob) -> tuple[Running, torch.Tensor]:
        params = SamplingParams.from_job(job.sampling)
        speed = float(job.sampling.get("speed", 1.0))
        first = int(job.sampling.get("first_piece_tokens", self.settings.first_piece_tokens))
        every = int(job.sampling.get("piece_tokens", self.settings.piece_tokens))
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
        job.started()
        with torch.inference_mode():
            prefix = self.decoder.prefix_embedding(cond, long_tensor(tokens, self.device))
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
            return Running(job=job, slot=slot, prefix_len=prefix.shape[0],
                           max_latents=min(job.forced_tokens, cap) if forced else cap, forced=forced,
                           state=stream, next_piece_at=first, first_piece_tokens=first, piece_tokens=every,
                           sampling=params)

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

    def _launch_decode(self) -> _Decoding | None:
        """Queue one decode step for every running job that may still produce a latent.

        `count` moves on at launch; the step is read back (`_confirm`) during the next
        `step()`, so a job that samples its stop token gets one more step launched, whose
        latent lies past its end and is dropped.
        """
        running = self.batcher.running
        live = [not r.finished and r.count < r.max_latents for r in running]
        if not any(live):
            return None
        b = len(running)
        # A row that is not live rides along (rows must stay 0..b-1); aim its writes at
        # places nothing reads: the cache position it will never feed (not the last one,
        # which would make every row attend over the whole cache) and a spare latent row.
        last = self.settings.max_len - 1
        host = torch.tensor([[r.cache_pos, r.count, r.count] if ok else [min(r.cache_pos, last), 0, self.max_gen]
                             for r, ok in zip(running, live)], dtype=torch.long)
        dev = to_device(host, self.device)
        self.runner.cache_pos[:b] = dev[:, 0]
        self.runner.audio_pos[:b] = dev[:, 1]
        with torch.inference_mode():
            logits, latents = self.runner.run(b, int(host[:, 0].max()) + 1)
            rows = torch.arange(b, device=self.device)
            tokens = self.sampler.sample(logits, rows)
            self.latents[rows, dev[:, 2]] = latents
            self.runner.tokens[:b] = tokens
        for run, ok in zip(running, live):
            if ok:
                run.count += 1
        return self._read_back_later([r if ok else None for r, ok in zip(running, live)], tokens)

    def _read_back_later(self, runs: list[Running | None], tokens: torch.Tensor) -> _Decoding:
        """Start copying the rows' stop flags to the host; `_confirm` reads them."""
        with torch.inference_mode():
            stops = tokens.eq(self.decoder.stop_audio_token)
            stops_host = start_to_host(stops, pinned=self.cuda)
        copied = None
        if self.cuda:
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(self.device))
        return _Decoding(runs, stops_host, copied)

    def _confirm(self, decoding: _Decoding) -> None:
        """Read a launched step's stop flags back: its latents now count for pieces and ends."""
        if decoding.copied is not None:
            decoding.copied.synchronize()
        for run, stop in zip(decoding.runs, decoding.stops.tolist()):
            if run is None or run.finished:
                continue
            run.confirmed += 1
            if run.confirmed >= run.max_latents or (stop and not run.forced):
                run.finished = True
                run.count = run.confirmed  # a step launched past the stop does not count

    def _move(self, src: int, dst: int, run: Running) -> None:
        with torch.inference_mode():
            self.decoder.move_slot(src, dst, run.cache_pos + 1)
            self.sampler.move(src, dst)
            self.latents[dst, : run.count] = self.latents[src, : run.count]
            self.runner.tokens[dst] = self.runner.tokens[src]

def build_xtts_fast(service_settings: Any, checkpoint_dir: str | Path | None = None,
                    **overrides: Any) -> FastXttsEngine:
    """The fast engine from the [service] settings (device, dtype, cache_dir, voice, language).

    Loads the checkpoint with coqui-tts (fp32), then runs our loop over its modules
    in the configured dtype (auto: fp16 on CUDA, fp32 on the CPU). `overrides` set
    FastSettings fields (slots, max_len, use_graphs, ...).
    """
    from workers.engines.voices import load_for_service
    from workers.engines.xtts_model import resolve_device, resolve_dtype

    device = resolve_device(service_settings.device)
    dtype = resolve_dtype(service_settings.dtype, device)
    path, model, _config, cache = load_for_service(service_settings, checkpoint_dir)

    def voices(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        latents = cache.get(name)
        return latents.gpt_cond_latent, latents.speaker_embedding

    settings = FastSettings.for_device(torch.device(device), **overrides)
    return FastXttsEngine(model, device, dtype, settings, model_name=path.name, voices=voices,
                          default_language=service_settings.language)
