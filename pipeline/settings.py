"""Settings: the service section and the speaking profiles, read from TOML.

`config/defaults.toml` holds the defaults and the FAST and CINEMATIC profiles.
A user file (``--config FILE`` or ``XTTS_STREAM_CONFIG``) overrides service
fields and adds or changes profiles; a request may override profile fields.
Every unknown name is an error that lists the valid ones, because a typo in a
voice product's config should fail loudly, not fall back silently.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

def _defaults_path() -> Path:
    """config/defaults.toml of a checkout, or the copy a wheel installs as the package pipeline.defaults."""
    checkout = Path(__file__).resolve().parent.parent / "config" / "defaults.toml"
    if checkout.is_file():
        return checkout
    from importlib.resources import files
    return Path(str(files("pipeline.defaults") / "defaults.toml"))


DEFAULTS_PATH = _defaults_path()
CONFIG_ENV = "XTTS_STREAM_CONFIG"
CHECKPOINT_ENV = "XTTS_STREAM_CHECKPOINT"


class SettingsError(ValueError):
    """A config file, profile name or override that cannot be used."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    first_chunk_max_chars: int = 20
    chunk_target_chars: int = 120
    chars_per_second: float = 14.0
    natural_pause_after_s: float = 5.0
    prebuffer_ms: int = 200
    block_ms: int = 25
    first_piece_tokens: int = 4
    piece_tokens: int = 16
    temperature: float = 0.75
    top_k: int = 50
    top_p: float = 0.85
    repetition_penalty: float = 5.0
    speed: float = 1.0
    # Audio sent at most this far ahead of the listener's real-time playback (what a barge-in
    # can no longer recall; never less than the pre-buffer plus one block); 0 sends everything
    # as soon as it is made (offline use).
    max_lead_s: float = 0.5

    def sampling(self) -> dict[str, float | int]:
        """The fields the engine needs for one chunk."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "speed": self.speed,
            "first_piece_tokens": self.first_piece_tokens,
            "piece_tokens": self.piece_tokens,
        }

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "Profile":
        if not overrides:
            return self
        values = _checked_fields(Profile, overrides, f"profile '{self.name}'", skip={"name"})
        return _validated(dataclasses.replace(self, **values))


@dataclass(frozen=True)
class ServiceSettings:
    client_endpoint: str = "tcp://127.0.0.1:5555"
    engine: str = "auto"
    checkpoint: str = ""
    xtts_path: str = "fast"
    device: str = "auto"
    # One worker per device: "auto" (`workers` workers on `device`), "all" (every GPU nvidia-smi lists),
    # or a list such as ["cuda:0", "cuda:1"]; workers_per_device of each.
    devices: str | list[str] = "auto"
    workers_per_device: int = 1
    dtype: str = "auto"
    default_profile: str = "fast"
    language: str = "en"
    voice: str = ""
    workers: int = 1
    cache_dir: str = "~/.cache/xtts-stream"
    wav_dir: str = "out"
    voices_dir: str = "voices"
    max_message_bytes: int = 1048576
    max_text_chars: int = 100000
    max_streams_per_client: int = 32
    max_streams: int = 2048
    max_clients: int = 512
    max_queued_messages_per_client: int = 256
    max_client_backlog_s: float = 30.0
    max_client_backlog_bytes: int = 4194304
    stream_idle_timeout_s: float = 120.0
    stall_timeout_s: float = 60.0
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 20.0
    worker_ready_timeout_s: float = 300.0
    restart_limit: int = 5
    restart_window_s: float = 60.0
    stop_grace_s: float = 3.0
    forced_tokens_per_char: float = 0.0
    curve_keys_dir: str = ""
    dispatch_ahead_s: float = 10.0
    null_speed: float = 50.0
    null_piece_ms: int = 250
    wyoming_uri: str = ""
    wyoming_allow_remote: bool = False
    # Where workers on other hosts join ("" = none; tcp://0.0.0.0:5556 needs curve_keys_dir).
    worker_endpoint: str = ""
    # SIGTERM (or a drain request) stops new streams and lets open ones finish for this long.
    drain_timeout_s: float = 30.0
    http_listen: str = "127.0.0.1:8000"
    http_api_keys_file: str = ""


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    profiles: Mapping[str, Profile] = field(default_factory=dict)

    def profile(self, name: str | None = None, overrides: Mapping[str, Any] | None = None) -> Profile:
        name = name or self.service.default_profile
        key = name.lower()
        if key not in self.profiles:
            raise SettingsError(f"unknown profile '{name}'; valid profiles: {', '.join(sorted(self.profiles))}")
        return self.profiles[key].with_overrides(overrides)

    def with_service(self, **values: Any) -> "Settings":
        checked = _checked_fields(ServiceSettings, values, "[service]")
        return dataclasses.replace(self, service=dataclasses.replace(self.service, **checked))

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": dataclasses.asdict(self.service),
            "profiles": {k: dataclasses.asdict(p) for k, p in self.profiles.items()},
        }


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the user's file (argument or environment), then the environment's checkpoint."""
    env = os.environ if env is None else env
    data = _read_toml(DEFAULTS_PATH)
    user_path = path or env.get(CONFIG_ENV)
    user = _read_toml(Path(user_path).expanduser()) if user_path else {}
    settings = _build(data, user)
    if env.get(CHECKPOINT_ENV):
        settings = settings.with_service(checkpoint=env[CHECKPOINT_ENV])
    return settings


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Rebuild settings sent between processes (the supervisor passes them on)."""
    profiles = {name: {k: v for k, v in table.items() if k != "name"} for name, table in data["profiles"].items()}
    return _build({"service": data["service"], "profiles": profiles}, {})


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def _build(defaults: Mapping[str, Any], user: Mapping[str, Any]) -> Settings:
    for source in (defaults, user):
        unknown = set(source) - {"service", "profiles"}
        if unknown:
            raise SettingsError(f"unknown config section(s) {sorted(unknown)}; valid sections: profiles, service")
    service_values = {**defaults.get("service", {}), **user.get("service", {})}
    service = ServiceSettings(**_checked_fields(ServiceSettings, service_values, "[service]"))
    profiles: dict[str, Profile] = {}
    for name, table in defaults.get("profiles", {}).items():
        profiles[name.lower()] = _profile(name, table, None)
    for name, table in user.get("profiles", {}).items():
        table = dict(table)
        base_name = str(table.pop("base", name if name.lower() in profiles else "fast")).lower()
        if base_name not in profiles:
            raise SettingsError(f"profile '{name}' has unknown base '{base_name}'; valid: {', '.join(sorted(profiles))}")
        profiles[name.lower()] = _profile(name, table, profiles[base_name])
    settings = Settings(service=service, profiles=profiles)
    settings.profile(service.default_profile)  # fail now, not at the first request
    return settings


def _profile(name: str, table: Mapping[str, Any], base: Profile | None) -> Profile:
    values = _checked_fields(Profile, table, f"profile '{name}'", skip={"name"})
    start = dataclasses.replace(base, name=name.lower()) if base else Profile(name=name.lower())
    return _validated(dataclasses.replace(start, **values))


def _checked_fields(cls: type, values: Mapping[str, Any], where: str, skip: set[str] = frozenset()) -> dict[str, Any]:
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise SettingsError(f"unknown field '{key}' in {where}; valid fields: {', '.join(sorted(known))}")
        out[key] = _coerce(value, known[key].type, f"{where}.{key}")
    return out


def _coerce(value: Any, type_name: Any, where: str) -> Any:
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where} must be an integer, got {_shown(value)}")
        return value
    if type_name == "str | list[str]":
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value) and value:
            return list(value)
        if not isinstance(value, str):
            raise SettingsError(f"{where} must be a string or a list of strings, got {_shown(value)}")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{where} must be true or false, got {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise SettingsError(f"{where} must be a number, got {_shown(value)}")
        return float(value)
    if not isinstance(value, str):
        raise SettingsError(f"{where} must be a string, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A refused value in an error message: its type for containers, a short repr for the rest."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


# Bounds a request may not leave: beyond them a value is a mistake or an attack
# (a speed of 1e-6 asks for a million times the audio; a block of 2**64 ms
# cannot even be encoded).
# The sampling bounds are checked again by every engine (a job may come from elsewhere than our
# coordinator: a remote worker serves whoever connects to it).
SAMPLING_BOUNDS = {
    "first_piece_tokens": (1, 256), "piece_tokens": (1, 256), "temperature": (0.01, 5), "top_k": (0, 2000),
    "top_p": (0.01, 1), "repetition_penalty": (0.1, 20), "speed": (0.25, 4),
}
_BOUNDS = {
    "first_chunk_max_chars": (1, 1000), "chunk_target_chars": (1, 2000), "chars_per_second": (1, 100),
    "natural_pause_after_s": (0, 120), "prebuffer_ms": (0, 10000), "block_ms": (5, 1000), "max_lead_s": (0, 3600),
    **SAMPLING_BOUNDS,
}


def out_of_bounds(values: Mapping[str, Any], bounds: Mapping[str, tuple[float, float]] = SAMPLING_BOUNDS) -> str:
    """What is wrong with the first value in ``values`` that is not a number within ``bounds``, or ""."""
    for name, (low, high) in bounds.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            return f"{name} must be between {low} and {high}, got {value!r}"
    return ""


def _validated(p: Profile) -> Profile:
    problem = out_of_bounds(vars(p), _BOUNDS)
    if problem:
        raise SettingsError(f"profile '{p.name}': {problem}")
    if p.chunk_target_chars < p.first_chunk_max_chars:
        raise SettingsError(f"profile '{p.name}': chunk_target_chars must be >= first_chunk_max_chars")
    return p
