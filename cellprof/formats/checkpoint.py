"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` only.

A checkpoint is a dict of tensors and plain JSON types (configs are saved as dicts, never
as pickled objects), so loading it never runs code from the file. This module knows the
file, not the model: it checks the format and that the configs are dicts; what they must
hold is checked where they are read (:func:`cellprof.learn.model.model_config_of`). It
carries everything ``--resume`` needs to continue bit-for-bit: model and optimiser states,
the step, and the torch random states (the data stream is a pure function of seed and
step, see :mod:`cellprof.learn.data`).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from cellprof import __version__
from cellprof.errors import CheckpointError
from cellprof.formats.safeio import atomic_path

FORMAT = "cellprof-checkpoint"
VERSION = 1
REQUIRED = ("model_config", "data_config", "model", "step", "data")
"""Keys every checkpoint has; ``--resume`` also needs those of :data:`RESUME`."""
RESUME = ("train_config", "opt_vae", "rng_torch")


def versions() -> dict[str, str]:
    return {"cellprof": __version__, "torch": str(torch.__version__),
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tags) to ``path`` via a temporary file and rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "versions": versions(), **payload},
                   tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a cellprof checkpoint safely, or raise :class:`CheckpointError` saying why not."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.pt", "checkpoints/last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: a folder without model.pt or checkpoints/last.pt")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}{': ' + first if first else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cellprof checkpoint (no format={FORMAT!r})")
    version = ckpt.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not one cellprof "
                              "writes")
    if version > VERSION:
        raise CheckpointError(f"{path}: written by a newer cellprof; upgrade cellprof")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint, missing {', '.join(missing)}")
    for key in ("model_config", "data_config"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path}: damaged checkpoint, its {key} is a "
                                  f"{type(ckpt[key]).__name__}, not a dict")
    ckpt["path"] = str(path)
    return ckpt


def check_fits(ckpt: dict[str, Any], channels: tuple[str, ...], crop_size: int,
               source: str | Path) -> None:
    """Refuse a checkpoint trained on other channels or another crop size than ``source``."""
    data = ckpt.get("data", {})
    want = tuple(data.get("channels", ()))
    size = int(data.get("crop_size", -1))
    if want != tuple(channels) or size != crop_size:
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: trained on channels {', '.join(want)} at "
            f"{size} px, but {source} has {', '.join(channels)} at {crop_size} px")
