"""The integrations are optional: extras in pyproject, never imported by the core; Pipecat settings mapping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipecat.transcriptions.language import Language

from pipeline.integrations.pipecat_tts import XttsStreamTTSService

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_the_extras_are_declared_and_the_core_does_not_require_them():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
                          for r in reqs}
    assert not names(project["dependencies"]) & {"pipecat-ai", "wyoming"}
    extras = project["optional-dependencies"]
    assert names(extras["pipecat"]) == {"pipecat-ai"} and names(extras["wyoming"]) == {"wyoming"}
    assert "xtts-stream[pipecat,wyoming]" in extras["test"], "CI installs both"


def test_the_core_never_imports_an_integration():
    core = ["pipeline.cli", "pipeline.client", "pipeline.coordinator.shell", "pipeline.processes.supervisor", "pipeline.gateway.app",
            "pipeline.processes.service_process", "workers.sink", "pipeline.integrations", "pipeline.integrations.wyoming_cli"]
    code = (f"import sys\nfor m in {core!r}: __import__(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pipecat', 'wyoming', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_language_and_settings_map_to_what_the_service_takes():
    tts = XttsStreamTTSService(endpoint="ipc:///nonexistent", language="pt-BR", voice="Ana Florence",
                               profile="cinematic")
    settings = tts.settings
    assert (settings.language, settings.voice, settings.profile, settings.model) == \
        ("pt", "Ana Florence", "cinematic", None)
    assert tts.language_to_service_language(Language.EN_US) == "en"
    assert tts.language_to_service_language(Language.ZH) == "zh"
