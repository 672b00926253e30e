"""Make `import TTS` work: coqui-tts needs torchaudio (and torchcodec's presence) but does not declare them.

On a CUDA torch, install the torchaudio release that matches torch. On a CPU
torch, PyPI only has CUDA builds of recent torchaudio, whose compiled extension
cannot load; coqui-tts uses only torchaudio's pure-torch parts (mel
spectrogram, resampling), which work once that extension is moved aside.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CPU_PINS = ["torchaudio==2.11.0", "torchcodec==0.11.0"]


def _imports_cleanly() -> bool:
    probe = "import torchaudio, torchaudio.transforms; import TTS.tts.models.xtts"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def main() -> int:
    import torch

    cuda = torch.version.cuda
    try:
        import torchaudio  # noqa: F401
        have = True
    except ImportError:
        have = False
    except OSError:
        have = True  # installed, extension broken: handled below
    if not have:
        if cuda is None:
            _pip("--no-deps", *CPU_PINS)
        else:
            _pip(f"torchaudio=={torch.__version__.split('+')[0]}", "torchcodec")
    if _imports_cleanly():
        return 0
    if cuda is None:
        import importlib.util
        lib = Path(importlib.util.find_spec("torchaudio").origin).parent / "lib"
        for so in list(lib.glob("_torchaudio*.so")) + list(lib.glob("libtorchaudio*.so")):
            so.rename(so.with_suffix(".so.disabled"))
        if _imports_cleanly():
            print("xtts-stream: disabled torchaudio's CUDA-only extension on this CPU torch", file=sys.stderr)
            return 0
    print("xtts-stream: `import TTS` still fails after installing torchaudio; see XTTS notes in README",
          file=sys.stderr)
    subprocess.run([sys.executable, "-c", "import torchaudio; import TTS.tts.models.xtts"])
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
