"""A training run's folder: what ``cellprof train`` writes besides the weights' updates.

Run folder::

    config.json            every setting, seed, versions, store channels and crop scaling
    losses.csv             step, each loss term, schedule weights, validation error, cells/s
    images/recon_*.png     held-out cells and their reconstructions  } drawn by the
    images/samples_*.png   cells decoded from random latents          } ``pictures`` hook
    checkpoints/last.pt    newest checkpoint (atomic); model.pt when training completes

Under DDP every rank holds a :class:`RunFolder`, and only rank 0's writes anything.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from cellprof.errors import CheckpointError, InputError
from cellprof.formats.checkpoint import RESUME, load_checkpoint, save_checkpoint, versions
from cellprof.formats.safeio import OutputLock, atomic_path, write_json
from cellprof.learn.data import CropData
from cellprof.learn.device import to_device
from cellprof.learn.losses import pixel_loss
from cellprof.learn.model import VAEPlus

R = TypeVar("R")


def holding_run_lock(fn: Callable[..., R]) -> Callable[..., R]:
    """Run ``fn(store, out, ...)`` holding the run folder's lock (rank 0 only, the one
    that writes), so a second training into the same ``--out`` is refused instead of
    both logging every step and leaving model.pt and config.json disagreeing.

    A run that fails before its first checkpoint (a bad store, a bad option) leaves nothing
    it made behind: no new folder, and in a folder that held no run, none of its files. An
    empty or checkpoint-less run folder would only be mistaken for a run."""
    @functools.wraps(fn)
    def locked(store_path: str | Path, out: str | Path, **kwargs: Any) -> R:
        if int(os.environ.get("RANK", "0")) != 0:
            return fn(store_path, out, **kwargs)
        new, fresh = _missing_folders(Path(out)), not _holds_run(Path(out))
        try:
            with OutputLock(out, folder=True):
                try:
                    return fn(store_path, out, **kwargs)
                except BaseException:
                    if fresh:
                        _remove_unsaved_run(Path(out))
                    raise
        except BaseException:
            for folder in new:  # deepest first; each only if empty (the lock file is gone)
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
    return locked


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first."""
    return [p for p in (out, *out.parents) if not p.exists()]


def _holds_run(out: Path) -> bool:
    """Whether ``out`` holds files of a run (which a failed start must not remove)."""
    run = RunFolder(out, main=True)
    return any(p.exists() for p in (out / "config.json", out / "losses.csv", run.last,
                                    run.final))


def _remove_unsaved_run(out: Path) -> None:
    """Remove what a failed run wrote into ``out``, which held no run before, unless it saved
    a checkpoint (which ``--resume`` continues): config.json, losses.csv, its pictures."""
    run = RunFolder(out, main=True)
    if run.last.exists() or run.final.exists():
        return
    images = out / "images"
    for path in (out / "config.json", out / "losses.csv", *images.glob("recon_*.png"),
                 *images.glob("samples_*.png")):
        path.unlink(missing_ok=True)
    for folder in (images, run.last.parent):
        try:
            folder.rmdir()
        except OSError:
            pass


class RunFolder:
    """Paths of a run, the checks before starting one, and rank 0's writes."""

    def __init__(self, out: str | Path, main: bool) -> None:
        self.out, self.main = Path(out), main
        self.last = self.out / "checkpoints" / "last.pt"
        self.final = self.out / "model.pt"
        self._log: _Log | None = None

    def resume_point(self, device: torch.device) -> dict[str, Any]:
        """The checkpoint to continue from (``--resume``)."""
        if not self.last.exists():
            raise CheckpointError(f"{self.out}: nothing to resume (no checkpoints/last.pt)")
        ckpt = load_checkpoint(self.last, map_location=device)
        lacking = [k for k in RESUME if k not in ckpt]
        if lacking:
            raise CheckpointError(f"{self.last}: cannot resume, the checkpoint lacks "
                                  f"{', '.join(lacking)}")
        return ckpt

    def check_fresh(self, overwrite: bool) -> None:
        """Refuse to start over a run unless ``overwrite``."""
        if (self.last.exists() or self.final.exists()) and not overwrite:
            raise InputError(f"{self.out}: holds a training run; pass --resume to continue it "
                             "or --overwrite to start over")

    def start(self, config: dict[str, Any], columns: list[str], resumed_at: int | None,
              changes: dict[str, list[Any]] | None = None) -> None:
        """Write config.json and open losses.csv (keeping rows up to ``resumed_at``); on a
        fresh start remove everything of an overwritten run that could be resumed or shown.

        config.json's ``resumes`` lists, per resume that changed settings, the step and
        ``{setting: [before, after]}`` (``changes``), so a run's history stays readable
        after its config was changed mid-way."""
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        resumes: list[dict[str, Any]] = []
        if resumed_at is None:
            for old in (self.last, self.final, *(self.out / "images").glob("*.png")):
                old.unlink(missing_ok=True)
        else:
            resumes = self._earlier_resumes()
            if changes:
                resumes.append({"step": resumed_at, "changed": changes})
        write_json(self.out / "config.json", {**config, "versions": versions(),
                                              "resumes": resumes})
        self._log = _Log(self.out / "losses.csv", columns, resumed_at)

    def _earlier_resumes(self) -> list[dict[str, Any]]:
        """Settings changed by earlier resumes, as config.json records them."""
        try:
            return list(json.loads((self.out / "config.json").read_text()).get("resumes", []))
        except (OSError, ValueError, AttributeError):
            return []

    def log(self, row: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(row)

    def checkpoint(self, final: bool, payload: dict[str, Any]) -> Path | None:
        """Save ``payload`` as last.pt (and model.pt when ``final``); rank 0 only."""
        if not self.main:
            return None
        path = save_checkpoint(self.last, payload)
        return save_checkpoint(self.final, payload) if final else path

    def images(self, model: VAEPlus, data: CropData, device: torch.device, step: int,
               pictures: Pictures | None) -> None:
        """Reconstructions of 8 held-out cells (training cells when none are held out) and
        16 random samples, handed to ``pictures`` (which draws them into ``images/``);
        nothing without it. The 8 are spread evenly over the store's order, so they come
        from different fields (neighbours of one field overlap and look like duplicates),
        and are the same at every step."""
        if not self.main or pictures is None:
            return
        held_out = len(data.val_idx) > 0
        pool = data.val_indices() if held_out else data.train_idx
        idx = np.unique(pool[np.linspace(0, len(pool) - 1, min(8, len(pool))).round()
                             .astype(int)])
        x = data.scaled(idx)
        model.eval()
        with torch.no_grad():
            recon = model.decode(model.encode(to_device(x, device))[0]).float().cpu().numpy()
            gen = torch.Generator(device=device).manual_seed(1234)
            samples = model.sample(16, generator=gen).float().cpu().numpy()
        model.train()
        pictures(self.out / "images", TrainingImages(
            step, tuple(data.channels), x, recon, samples, idx,
            "held-out cells" if held_out else "training cells"))


@dataclass(frozen=True)
class TrainingImages:
    """What a run shows of its model at ``step``: held-out cells (N, C, H, W, scaled as
    the model sees them), their reconstructions, and cells decoded from random latents."""

    step: int
    channels: tuple[str, ...]
    held_out: np.ndarray
    """The cells shown; training cells when the run holds none out (``cells`` says which)."""
    reconstruction: np.ndarray
    samples: np.ndarray
    rows: np.ndarray | None = None
    """The store rows of ``held_out``."""
    cells: str = "held-out cells"
    """Which cells these are, as the picture labels them: ``"held-out cells"``, or
    ``"training cells"`` with ``--val-fraction 0``."""


Pictures = Callable[[Path, TrainingImages], None]
"""Draws :class:`TrainingImages` into a run's ``images/`` folder; the command line passes
:func:`cellprof.report.plots.save_training_images`. Training computes, the report draws."""


def validate(model: VAEPlus, data: CropData, device: torch.device,
             batch_size: int) -> dict[str, float]:
    """Held-out reconstruction error with z = mu, in float32 whatever the training
    precision: ½·sum of squares per cell and per-pixel MSE."""
    model.eval()
    total, sq, n, numel = 0.0, 0.0, 0, 1
    with torch.no_grad():
        for x in data.val_batches(batch_size):
            xt = to_device(x, device)
            recon = model.decode(model.encode(xt)[0]).float()
            total += float(pixel_loss(recon, xt.float())) * len(x)
            sq += float((recon - xt).pow(2).sum())
            n += len(x)
            numel = x[0].size
    model.train()
    return {"val_pixel": total / n, "val_mse": sq / (n * numel)} if n else {}


class StopRequest:
    """Ctrl-C / SIGTERM set a flag; the loop checkpoints and leaves at the next step.

    ``signum`` keeps which signal it was, so the CLI can exit 128 + it (130, 143) as shells
    and schedulers expect of a stopped job, rather than 0 (success)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals: main only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Log:
    """losses.csv, appended row by row; on resume rows past the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        rows = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

