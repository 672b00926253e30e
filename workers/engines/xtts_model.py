"""Find and load an XTTS-v2 checkpoint directory through coqui-tts's own loader.

Real weights and the synthetic checkpoint take exactly the same path:
`Xtts(config)` (what the deprecated `Xtts.init_from_config` does) and then
`Xtts.load_checkpoint`. Both build the whole model, and default weight
initialisation is most of the load time (~9 s of CPU for the full model, twice),
so both builds run under transformers' `no_init_weights`: the strict
state-dict load overwrites every parameter and persistent buffer anyway (the
tests compare against a plain coqui load).

`find_checkpoint` imports neither torch nor coqui-tts, so the worker can decide
between XTTS and Piper before it pays for importing them; torch is imported
inside `load_xtts`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from pipeline.settings import CHECKPOINT_ENV

REQUIRED_FILES = ("config.json", "model.pth", "vocab.json")
SPEAKERS_FILE = "speakers_xtts.pth"
COQUI_MODEL_NAME = "tts_models/multilingual/multi-dataset/xtts_v2"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete or cannot be loaded."""


def verify_checkpoint_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """The directory as a Path, or a CheckpointError naming what is missing."""
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"XTTS checkpoint directory not found: {path}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"XTTS checkpoint directory {path} is missing {', '.join(missing)} "
            f"(a checkpoint needs {', '.join(REQUIRED_FILES)} and usually {SPEAKERS_FILE})"
        )
    return path


def coqui_model_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where coqui-tts keeps its downloaded XTTS-v2 (mirrors trainer.io.get_user_data_dir)."""
    env = os.environ if env is None else env
    if env.get("TTS_HOME"):
        base = Path(env["TTS_HOME"]).expanduser()
    elif env.get("XDG_DATA_HOME"):
        base = Path(env["XDG_DATA_HOME"]).expanduser()
    elif sys.platform == "darwin":
        base = Path("~/Library/Application Support").expanduser()
    elif sys.platform == "win32":
        base = Path(env.get("LOCALAPPDATA", "~/AppData/Local")).expanduser()
    else:
        base = Path.home() / ".local" / "share"
    return base / "tts" / COQUI_MODEL_NAME.replace("/", "--")


def find_checkpoint(explicit: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """Explicit path > $XTTS_STREAM_CHECKPOINT > coqui's own download, if complete > None.

    An explicit or environment path must be a valid checkpoint (it is an error
    the user should see); coqui's cache is only used when it is complete. Never
    downloads anything.
    """
    env = os.environ if env is None else env
    for chosen in (explicit, env.get(CHECKPOINT_ENV)):
        if chosen:
            return verify_checkpoint_dir(chosen)
    cached = coqui_model_dir(env)
    try:
        return verify_checkpoint_dir(cached)
    except CheckpointError:
        return None


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device '{name}' requested but CUDA is not available")
    if name != "cpu" and not name.startswith("cuda"):
        raise CheckpointError(f"unknown device '{name}'; valid: auto, cpu, cuda, cuda:N")
    return name


def resolve_dtype(name: str, device: str) -> Any:
    """'auto' is fp16 on CUDA and fp32 on the CPU; returns a torch.dtype."""
    import torch

    if name == "auto":
        name = "fp16" if device.startswith("cuda") else "fp32"
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype '{name}'; valid: auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def dtype_name(dtype: Any) -> str:
    """'fp32', 'fp16' or 'bf16' for a torch.dtype."""
    names = {value: key for key, value in DTYPES.items()}
    return names[str(dtype).removeprefix("torch.")]


def load_xtts(checkpoint_dir: str | os.PathLike, device: str = "cpu", dtype: Any = "fp32") -> tuple[Any, Any]:
    """Load (model, config) in eval mode on `device`, weights cast to `dtype`.

    `dtype` is a torch.dtype or 'fp32'/'fp16'/'bf16'/'auto'. Note that coqui's
    stock inference is run in fp32, the precision coqui-tts runs it in; half precision is for
    callers that run their own loop over the modules.
    """
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    path = verify_checkpoint_dir(checkpoint_dir)
    device = resolve_device(device)
    if not isinstance(dtype, torch.dtype):
        dtype = resolve_dtype(dtype, device)
    config = XttsConfig()
    try:
        config.load_json(str(path / "config.json"))
    except Exception as exc:
        raise CheckpointError(f"{path / 'config.json'} is not a valid XTTS config: {exc}") from exc
    speakers = path / SPEAKERS_FILE
    try:
        with _no_weight_init():
            model = Xtts(config)
            model.load_checkpoint(
                config,
                checkpoint_dir=str(path),
                eval=True,
                speaker_file_path=str(speakers) if speakers.is_file() else None,
            )
    except PermissionError as exc:
        raise CheckpointError(
            f"{path / 'model.pth'} is in the original XTTS format, which coqui-tts rewrites in place on its "
            f"first load, and the directory is not writable: load it once from a writable copy ({exc})"
        ) from exc
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"cannot load XTTS checkpoint {path}: {exc}") from exc
    model.train(False)
    model.to(device=device, dtype=dtype)
    return model, config


def _no_weight_init() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()

