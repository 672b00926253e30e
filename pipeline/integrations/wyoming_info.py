"""What the Wyoming server says about the service: its voice, languages and speakers.

Everything comes from the service's `status` reply. The service lists its
languages and speakers there once it reports them (`state["languages"]`,
`state["voices"]`); until then the languages follow from the engine it names:
Piper speaks English only, and XTTS the languages of the installed coqui-tts's
tokenizer table (the same table its workers load).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.tts import SynthesizeVoice

from pipeline.text.limits import xtts_char_limits

from .connection import service_language

log = logging.getLogger("xtts_stream.wyoming")

PROGRAM = "xtts-stream"
# Who made the voice, by engine family (Wyoming shows it beside the voice).
VOICE_ATTRIBUTION = {"piper": Attribution(name="rhasspy (Piper)", url="https://github.com/rhasspy/piper"),
                     "xtts": Attribution(name="Coqui (XTTS-v2)", url="https://github.com/coqui-ai/TTS")}


class VoiceRequestError(ValueError):
    """A synthesize request named a voice or speaker this service does not have."""


@dataclass(frozen=True)
class Catalog:
    """The one voice the service speaks with (its model), in its languages, with its speakers."""

    voice: str
    engine: str
    languages: tuple[str, ...]
    speakers: tuple[str, ...] = ()

    @classmethod
    def from_status(cls, state: dict[str, Any]) -> "Catalog":
        engine_info = state.get("engine") or {}
        engine = str(engine_info.get("engine") or "")
        voice = str(engine_info.get("model") or engine or PROGRAM)
        return cls(voice=voice, engine=engine, languages=_languages(state, engine),
                   speakers=tuple(str(s) for s in state.get("voices") or ()))

    def info(self) -> Info:
        speakers = [TtsVoiceSpeaker(name=s) for s in self.speakers] or None
        family = "piper" if self.engine == "piper" else "xtts"
        voice = TtsVoice(name=self.voice, description=f"{self.voice} ({self.engine})",
                         attribution=VOICE_ATTRIBUTION[family], installed=True, version=None,
                         languages=list(self.languages), speakers=speakers)
        program = TtsProgram(name=PROGRAM, description="xtts-stream: low-latency streaming TTS",
                             attribution=Attribution(name=PROGRAM, url=""), installed=True, version=_version(),
                             voices=[voice], supports_synthesize_streaming=True)
        return Info(tts=[program])

    def resolve(self, requested: SynthesizeVoice | None) -> tuple[str, str]:
        """(voice, language) for `Client.speak`/`open_stream`; empty = the service's default."""
        if requested is None:
            return "", ""
        if requested.name not in (None, "", self.voice):
            raise VoiceRequestError(f"unknown voice '{requested.name}': this server has one voice, '{self.voice}'")
        language = service_language(requested.language) if requested.language else ""
        if language and language not in self.languages:
            raise VoiceRequestError(f"language '{requested.language}' is not spoken here; "
                                    f"languages: {', '.join(self.languages)}")
        return requested.speaker or "", language


def _languages(state: dict[str, Any], engine: str) -> tuple[str, ...]:
    listed = state.get("languages")
    if listed:
        return tuple(str(lang) for lang in listed)
    if engine == "piper":
        return ("en",)
    table = tuple(sorted(xtts_char_limits()))
    if not table:
        log.warning("cannot tell which languages the %s engine speaks; announcing English only", engine or "service's")
        return ("en",)
    return table


def _version() -> str | None:
    try:
        return version("xtts-stream")
    except PackageNotFoundError:
        return None
