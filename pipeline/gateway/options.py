"""The fields a speech request or a WebSocket `open` shares, checked before any work.

Every check names the field at fault. OpenAI's model and voice names are
accepted so that apps written for OpenAI keep working: its voices map to the
service's default voice, ``tts-1`` to the FAST profile and ``tts-1-hd`` to
CINEMATIC (docs/http.md has the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.settings import Settings

from .errors import field_error

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
# OpenAI model name -> our profile ("" = the service's default profile).
OPENAI_MODELS = {"tts-1": "fast", "tts-1-hd": "cinematic", "gpt-4o-mini-tts": "",
                 "gpt-4o-mini-tts-2025-03-20": "", "gpt-4o-mini-tts-2025-12-15": ""}
MODEL = "xtts-stream"
MAX_NAME_CHARS = 200
SPEED_RANGE = (0.25, 4.0)  # OpenAI's bounds, and the profile field's


@dataclass
class StreamOptions:
    profile: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    language: str = ""
    voice: str = ""

    def kwargs(self) -> dict[str, Any]:
        return {"profile": self.profile, "overrides": self.overrides, "language": self.language, "voice": self.voice}


def model_ids(settings: Settings) -> dict[str, str]:
    """Every model name a request may give -> the profile it selects."""
    ids = {MODEL: ""}
    ids.update({f"{MODEL}-{name}": name for name in settings.profiles})
    ids.update({name: profile for name, profile in OPENAI_MODELS.items() if not profile or profile in settings.profiles})
    return ids


def check_known(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise field_error(str(key)[:MAX_NAME_CHARS], f"unknown field '{str(key)[:MAX_NAME_CHARS]}'; valid fields: "
                              f"{', '.join(allowed)}", code="unknown_field")


def stream_options(body: Mapping[str, Any], settings: Settings) -> StreamOptions:
    """profile, model, voice, language, speed and overrides, checked."""
    out = StreamOptions()
    model = optional_str(body, "model")
    if model:
        ids = model_ids(settings)
        if model not in ids:
            raise field_error("model", f"unknown model '{model}'; valid: {', '.join(sorted(ids))}", "bad_model")
        out.profile = ids[model]
    profile = optional_str(body, "profile")
    if profile:
        if profile.lower() not in settings.profiles:
            raise field_error("profile", f"unknown profile '{profile}'; valid: {', '.join(sorted(settings.profiles))}",
                              "bad_profile")
        out.profile = profile
    overrides = body.get("overrides", {})
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise field_error("overrides", "overrides must be an object of profile fields, e.g. {\"temperature\": 0.6}")
    out.overrides = dict(overrides)
    if "speed" in body and body["speed"] is not None:
        out.overrides["speed"] = speed(body["speed"])
    out.language = optional_str(body, "language", max_chars=16)
    out.voice = voice(body.get("voice"), settings)
    return out


def optional_str(body: Mapping[str, Any], name: str, max_chars: int = MAX_NAME_CHARS) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise field_error(name, f"{name} must be a string")
    if len(value) > max_chars:
        raise field_error(name, f"{name} is longer than {max_chars} characters")
    return value


def speed(value: Any) -> float:
    low, high = SPEED_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise field_error("speed", "speed must be a number")
    if not low <= value <= high:
        raise field_error("speed", f"speed must be between {low} and {high}, got {value}")
    return float(value)


def voice(value: Any, settings: Settings) -> str:
    """The service's voice name: "" (default) for OpenAI's names and "default"."""
    if isinstance(value, dict):  # OpenAI's custom voice object: {"id": "..."}
        if set(value) != {"id"}:
            raise field_error("voice", "a voice object has exactly one field, id")
        value = value["id"]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise field_error("voice", "voice must be a string or {\"id\": NAME}")
    if len(value) > MAX_NAME_CHARS:
        raise field_error("voice", f"voice is longer than {MAX_NAME_CHARS} characters")
    if value.lower() in OPENAI_VOICES or value.lower() in ("", "default"):
        return ""
    if value.endswith(".wav") and not reference_file(settings, value):
        raise field_error("voice", f"no reference recording '{value}' in the service's voices directory", "bad_voice")
    return value


def reference_file(settings: Settings, name: str) -> Path | None:
    """NAME.wav inside voices_dir, if it is a file there (never a path outside it)."""
    if "\x00" in name:
        return None
    root = Path(settings.service.voices_dir).expanduser().resolve()
    path = (root / name).resolve()
    return path if root in path.parents and path.is_file() else None


def reference_voices(settings: Settings, limit: int = 1000) -> list[str]:
    root = Path(settings.service.voices_dir).expanduser()
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.wav"))[:limit]
