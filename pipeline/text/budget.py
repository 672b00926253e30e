"""How big a chunk may be so that an engine that makes each chunk whole keeps ahead of playback.

Piper (and any engine that synthesises a chunk before any of its audio can
play) leaves the listener in silence when a very short first chunk ("Stop.")
is followed by a long one: the second chunk's synthesis takes longer than the
first one's audio. `chunk_budget` is the most characters chunk k > 0 may have,
from the chunks already emitted only, so the chunker stays delta-invariant.
The rule is in docs/chunker.md (*Engine budget*).
"""

from __future__ import annotations

import math

from pipeline.settings import Profile


def chunk_budget(profile: Profile, engine_chars_per_s: float, spoken: int, first: int) -> int:
    """The most characters the next chunk may have so that the engine keeps ahead of playback.

    ``spoken`` is the cleaned length of every chunk emitted so far, ``first``
    that of chunk 0. Playback of chunk 0 starts when it is ready at the
    earliest; from then on the engine must finish chunks 1..k (their length
    over ``engine_chars_per_s``) before the audio of chunks 0..k-1 (their
    length over ``chars_per_second``) has played, or before the pre-buffer
    would, whichever is later. The profile's first-chunk size is the floor.
    """
    queued_s = max(spoken / profile.chars_per_second, profile.prebuffer_ms / 1000)
    room = math.floor(engine_chars_per_s * queued_s + 1e-9) - (spoken - first)
    return max(room, profile.first_chunk_max_chars)


def checked_engine_speed(value: float | None) -> float | None:
    """``engine_chars_per_s`` as a float; None stays None (a streaming engine)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"engine_chars_per_s must be a positive number of characters per second or None, "
                         f"got {value!r}")
    return float(value)
