"""Who may use a step while a listener waits for first audio.

A stream's chunks arrive together (the service dispatches each chunk as soon as
the chunker emits it; priority = chunk index), but only the first chunk's first
piece is on the critical path: chunk k > 0 is not heard before chunk k - 1 has
played, which takes seconds. So while any first chunk (priority 0) is waiting
or running without its first piece sent to the vocoder, the engine holds back
later chunks: they are not admitted (their long prefills would share the step
with the first chunks') and their vocoder pieces wait (they would share the
vocoder call, and the GPU, with the first pieces). Running later chunks keep
decoding: a row more in the batched GPT step costs next to nothing.

The hold never applies to a job whose stream is about to run out of audio:
each job carries its stream's playback deadline (the coordinator's estimate of
when the listener needs it), and a later chunk within `URGENT_S` of its
deadline is admitted and vocoded like a first chunk - earliest deadline first,
so streams close to an underrun are served before streams far ahead. Under a
steady arrival of new streams the hold could still last long enough to starve
later chunks without deadlines, so it lapses for one step after `max_steps`
steps in a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.engines.base import SynthJob

from .batcher import Batcher

URGENT_S = 0.5  # a later chunk this close to its stream's underrun is not held back
TOKEN_S = 1024 / 22050  # audio per GPT token at speed 1 (XTTS-v2's code stride at 22.05 kHz); / speed


def urgent(job: SynthJob, audio_s_done: float, now: float) -> bool:
    """Whether the job's stream would run out of audio within URGENT_S (known deadlines only)."""
    return job.deadline > 0 and job.deadline + audio_s_done <= now + URGENT_S


@dataclass
class FirstPiecesFirst:
    max_steps: int = 32
    held_steps: int = 0  # consecutive steps held so far

    def hold_this_step(self, batcher: Batcher) -> bool:
        """Whether later chunks must wait this step; call it once per step, as it counts the steps held."""
        if not self.first_audio_pending(batcher):
            self.held_steps = 0
            return False
        if self.held_steps >= self.max_steps:
            self.held_steps = 0
            return False
        self.held_steps += 1
        return True

    @staticmethod
    def first_audio_pending(batcher: Batcher) -> bool:
        return batcher.first_chunks_waiting() or any(r.awaits_first_piece for r in batcher.running)
