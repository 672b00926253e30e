"""Vocoder pieces: which running jobs are at a piece boundary, the vocoder calls, the audio handed back.

A piece always ends at its boundary (`first_piece_tokens`, then every
`piece_tokens` latents), also when it was held back and more latents exist, so
holding changes when audio comes, never what it is. On CUDA with `overlap`,
the vocoder runs on its own stream and its audio is copied to pinned host memory
asynchronously; `collect` waits for it. Otherwise pieces are ready at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from workers.engines.base import PieceOut, to_pcm16

from .batcher import Running
from .scheduling import TOKEN_S
from .scheduling import urgent as is_urgent
from .transfer import start_to_host
from .vocoder import IncrementalVocoder, PieceAudio, PieceRequest, VocoderStream


@dataclass
class _Pending:
    """Vocoder work launched but not yet returned."""

    runs: list[Running]
    audio: list[PieceAudio]
    host: list[torch.Tensor]
    copied: torch.cuda.Event | None  # recorded after the copies to the host
    urgent: bool = False  # holds first pieces of first chunks


class PieceDispatcher:
    def __init__(self, vocoder: IncrementalVocoder, device: torch.device, overlap: bool) -> None:
        self.vocoder = vocoder
        self.device = device
        self.overlap = overlap
        self.voc_stream = torch.cuda.Stream(device) if overlap else None
        self._pending: list[_Pending] = []

    def has_pending(self) -> bool:
        return bool(self._pending)

    def first_pieces_pending(self) -> bool:
        return any(p.urgent for p in self._pending)

    def clear(self) -> None:
        self._pending.clear()

    def launch(self, running: list[Running], latents: torch.Tensor, hold: bool, now: float = 0.0) -> None:
        """Send every job at a piece boundary to the vocoder (`latents` [slots, T, d]); while `hold`,
        only first chunks and jobs close to their deadline. First pieces of first chunks go in a call
        of their own, launched first."""
        urgent: list[PieceRequest] = []
        other: list[PieceRequest] = []
        for run in running:
            if run.cancelled or run.final_launched:
                continue
            audio_s = run.tokens_launched * TOKEN_S / float(run.job.sampling.get("speed", 1.0) or 1.0)
            if hold and not run.first_chunk and not is_urgent(run.job, audio_s, now):
                continue
            target = self._piece_target(run)
            if target is None:
                continue
            known, final = target
            stream: VocoderStream = run.state  # type: ignore[assignment]
            lo = self.vocoder.latents_from(stream, known)
            with torch.inference_mode():
                req = self.vocoder.plan(stream, latents[run.slot, lo:known], lo, known, final, tag=run)
            if req is None:
                run.next_piece_at = known + 1
                continue
            (urgent if run.awaits_first_piece else other).append(req)
            run.pieces_launched += 1
            run.final_launched = final
            run.tokens_launched = known
            run.next_piece_at = known + run.piece_tokens
        if urgent:
            self._run(urgent, urgent=True)
        if other:
            self._run(other, urgent=False)

    @staticmethod
    def _piece_target(run: Running) -> tuple[int, bool] | None:
        """(latents the next piece covers, whether it is the last), or None before the next boundary.

        One piece per step: a job that was held back catches up boundary by boundary, so
        its pieces (and the vocoder's window widths) are the same as if it never waited.
        """
        if run.finished and run.next_piece_at >= run.confirmed:
            return run.confirmed, True
        if run.confirmed >= run.next_piece_at:
            return run.next_piece_at, False
        return None

    def _run(self, requests: list[PieceRequest], urgent: bool) -> None:
        tags = [r.tag for r in requests]
        if not self.overlap:
            audio = self.vocoder.run(requests)
            self._pending.append(_Pending(tags, [replace(a, samples=a.samples.cpu()) for a in audio], [], None, urgent))
            return
        main = torch.cuda.current_stream(self.device)
        self.voc_stream.wait_stream(main)
        for req in requests:  # made on the main stream, read on the vocoder stream
            req.frames.record_stream(self.voc_stream)
        with torch.cuda.stream(self.voc_stream):
            audio = self.vocoder.run(requests)
            host = [start_to_host(a.samples, pinned=True, dtype=torch.float32) for a in audio]
            copied = torch.cuda.Event()
            copied.record(self.voc_stream)
        self._pending.append(_Pending(tags, audio, host, copied, urgent))

    def collect(self, urgent_only: bool = False) -> list[PieceOut]:
        """Return launched pieces; `urgent_only`: just up to the last call holding first pieces.

        Vocoder calls finish in launch order (one stream), so a prefix of the list is
        what an urgent call's wait makes ready, and a job's pieces stay in order.
        """
        take = len(self._pending)
        if urgent_only:
            take = max(i + 1 for i, p in enumerate(self._pending) if p.urgent)
        ready, self._pending = self._pending[:take], self._pending[take:]
        out: list[PieceOut] = []
        for pending in ready:
            if pending.copied is not None:
                pending.copied.synchronize()
            for i, (run, audio) in enumerate(zip(pending.runs, pending.audio)):
                if run.cancelled:
                    continue
                samples = pending.host[i] if pending.host else audio.samples
                out.append(PieceOut(job=run.job, piece_index=run.piece_index, sample_offset=audio.offset,
                                    samples=to_pcm16(samples.numpy()), final=audio.final))
                run.piece_index += 1
        return out
