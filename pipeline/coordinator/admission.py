"""What a new stream must pass before it opens: profile, language, delivery and voice.

Each check is bounded before it does any work (the codec has already capped
every field's length): a path is refused for its shape before the filesystem is
asked anything about it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pipeline.settings import Profile, Settings, SettingsError
from pipeline.text.chunker import base_language
from pipeline.wire.protocol import DELIVERIES, WAV_PREFIX, Open, Speak

MAX_PATH_PARTS = 8  # directories a wav: or voice path may name


class Refused(Exception):
    """A request the service will not serve; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str, stream: str = ""):
        super().__init__(message)
        self.code = code
        self.stream = stream


def profile_for(settings: Settings, msg: Speak | Open) -> Profile:
    try:
        return settings.profile(msg.profile or None, msg.overrides)
    except SettingsError as exc:
        raise Refused("bad_profile", str(exc), msg.stream) from None


def language_for(msg: Speak | Open, default: str, limits: dict[str, int]) -> str:
    language = msg.language or default
    try:
        base = base_language(language)
    except ValueError as exc:
        raise Refused("bad_language", str(exc), msg.stream) from None
    if limits and base not in limits:
        raise Refused("bad_language", f"language '{language}' is not supported by this engine; "
                      f"valid: {', '.join(sorted(limits))}", msg.stream)
    return language


def delivery_for(msg: Speak | Open, wav_dir: str, busy: set[str]) -> tuple[str, str]:
    """(mode, absolute WAV path or "")."""
    if msg.deliver in DELIVERIES:
        return msg.deliver, ""
    name = msg.deliver[len(WAV_PREFIX):] if msg.deliver.startswith(WAV_PREFIX) else ""
    path = inside(wav_dir, name) if name.endswith(".wav") else None
    if path is None:
        raise Refused("bad_deliver", f"deliver must be one of {', '.join(DELIVERIES)} or wav:NAME.wav (a relative "
                      f"path inside the service's wav_dir, at most {MAX_PATH_PARTS} parts)", msg.stream)
    if str(path) in busy:
        raise Refused("bad_deliver", f"wav:{name} is being written by another stream", msg.stream)
    return "wav", str(path)


def voice_for(msg: Speak | Open, default: str, known: list[str], voices_dir: str) -> str:
    """A speaker name the engine knows, or a reference file inside voices_dir: never an arbitrary file."""
    if not msg.voice:
        return default
    if "/" not in msg.voice and "\\" not in msg.voice and not msg.voice.endswith(".wav"):
        if known and msg.voice not in known:
            shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
            raise Refused("bad_voice", f"unknown voice '{msg.voice[:64]}'; this engine has: {shown} "
                          f"(or NAME.wav inside the service's voices_dir)", msg.stream)
        return msg.voice
    path = inside(voices_dir, msg.voice)
    if path is None or not path.is_file():
        raise Refused("bad_voice", "voice must be a speaker name or NAME.wav, an existing file inside the "
                      "service's voices_dir", msg.stream)
    return str(path)


def inside(root_dir: str, name: str) -> Path | None:
    """``name`` resolved inside ``root_dir``; None when it is absolute, escapes it, or is not a short path."""
    if not name or "\x00" in name or "\\" in name:
        return None
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or len(parts) > MAX_PATH_PARTS or ".." in parts \
            or any(len(p.encode()) > 255 for p in parts):
        return None
    root = Path(root_dir).expanduser().resolve()
    path = (root / name).resolve()
    return path if root in path.parents else None
