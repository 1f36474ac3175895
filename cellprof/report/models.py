"""Two models on the same held-out cells: what each one draws, and how far from the cells.

A page comparing the profiles of two models (the demo's trained model against its own
untrained weights, a full model against a plain VAE) would otherwise judge them by profile
scores alone, and those can hide what training bought: on a screen whose mechanisms differ
in their average cell image, random convolutional features match them as well as trained
ones (docs/benchmarks.md, "The demo across training seeds"). What a trained model has and
an untrained one lacks shows in its reconstructions of cells it never trained on. So both
models encode and decode the same cells of the fields the first model's run held out of
training (its seed and ``val_fraction`` fix which: :func:`cellprof.learn.data.split_by_field`),
and each one's reconstruction error is measured on them, as ``cellprof train`` measures its
held-out error (``val_mse``, z = mu, float32, the model's own crop scaling).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellprof.errors import InputError
from cellprof.learn.data import DataConfig, split_by_field
from cellprof.report.cells import Strip, show_config, strip
from cellprof.report.config import ReportConfig
from cellprof.report.plots import composite, intensity_scale
from cellprof.report.sources import StoreSummary

if TYPE_CHECKING:  # show imports torch; this module's callers need not
    from cellprof.report.show import ModelOnStore

ERROR_CELLS = 2000
"""Held-out cells measured at most (drawn at random, seeded), so a page of a screen of a
million cells does not decode a hundred thousand twice; the demo's 437 are all measured."""


@dataclass(frozen=True)
class ModelView:
    """One model's side: its name on the page, its training step and what it drew."""

    label: str
    step: int | None
    reconstructions: Strip
    mse: float
    """Mean squared error per pixel over the measured cells, crops scaled as it sees them."""


@dataclass(frozen=True)
class ModelPair:
    """The same held-out cells through two models (:func:`model_pair`)."""

    cells: Strip
    """The shown cells as the first model sees them."""
    views: tuple[ModelView, ModelView]
    measured: int
    """Cells the errors are over."""
    pool: int
    """Cells they were drawn from: the held-out ones, or the whole store (see ``caveat``)."""
    seed: int
    """The first model's training seed (which fields were held out)."""
    caveat: str | None
    """Why the cells need not be unseen by the first model (it trained on another store, or
    held no fields out); None when they are the held-out fields of its run."""
    scale: str
    """What the shared intensity scale of the pictures is (its source and ranges)."""


def _side(s: ModelOnStore, rows: np.ndarray, shown: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, float]:
    """Model input and reconstructions of the ``shown`` rows, and the MSE per pixel over
    ``rows`` (both sorted store rows; ``shown`` a subset of ``rows``)."""
    import torch

    from cellprof.report import show as sh

    sq, numel = 0.0, 0
    keep = np.isin(rows, shown)
    x_shown, rec_shown = [], []
    with torch.no_grad():
        for pos, x in sh.scaled_rows(s, rows):
            rec = sh.decode_latents(s, sh.encode_input(s, x))
            sq += float(((rec - x) ** 2).sum(dtype=np.float64))
            numel += x.size
            x_shown.append(x[keep[pos]])
            rec_shown.append(rec[keep[pos]])
    return np.concatenate(x_shown), np.concatenate(rec_shown), sq / max(numel, 1)


def _seed(ckpt: dict) -> int:
    """The training seed of a checkpoint's run (which fields it held out)."""
    return int((ckpt.get("train_config") or {}).get("seed", 0))


def unseen(first: dict, crops: StoreSummary) -> tuple[np.ndarray, str | None]:
    """Store rows the first model's run held out of training, and None; or, when that cannot
    be said, every row and why: a run of another store (its checkpoint records the store's
    cell count and held-out count), or one that held no fields out."""
    recorded = first.get("data") or {}
    everything = np.arange(len(crops.cells))
    if first.get("step") == 0:
        return everything, ("the first model is untrained: which cells the second trained "
                            "on is not known here")
    if recorded.get("n_cells") != len(crops.cells):
        store = recorded.get("store", "another store")
        return everything, (f"the first model was trained on {store} "
                            f"({recorded.get('n_cells', '?')} cells), not on these "
                            f"{len(crops.cells)}: some of them may be cells it trained on")
    data = DataConfig.from_dict(first.get("data_config") or {})
    try:
        _, held = split_by_field(crops.cells, data.val_fraction, _seed(first))
    except InputError:  # too few fields to hold any out
        held = everything[:0]
    if len(held) == 0 or len(held) != recorded.get("n_val", len(held)):
        return everything, ("the first model's run held no fields of this store out of "
                            "training: these are cells it trained on")
    return held, None


def model_pair(models: tuple[Path, Path], labels: tuple[str, str], crops: StoreSummary,
               match: dict, config: ReportConfig) -> ModelPair:
    """The same cells through both models: the fields ``models[0]``'s run held out of
    training, so that neither model trained on them, or (said in ``caveat``) random cells of
    the store when that run trained on another store or held nothing out."""
    from cellprof.report import show as sh

    sides = [sh.open_model(m, crops.path, show_config(match, config)) for m in models]
    first = sides[0].ckpt
    pool, caveat = unseen(first, crops)
    rng = np.random.default_rng([config.seed, 23])
    rows = np.sort(rng.choice(pool, min(len(pool), ERROR_CELLS), replace=False))
    shown = np.sort(rng.choice(rows, min(len(rows), config.cells_per_treatment),
                               replace=False))
    x, rec0, mse0 = _side(sides[0], rows, shown)
    _, rec1, mse1 = _side(sides[1], rows, shown)
    scale = intensity_scale(x, what="cells shown (as the first model sees them)")
    draw = lambda a: strip(composite(a, crops.channels, scale=scale))  # noqa: E731
    views = (ModelView(labels[0], first.get("step"), draw(rec0), mse0),
             ModelView(labels[1], sides[1].ckpt.get("step"), draw(rec1), mse1))
    ranges = ", ".join(scale.describe(crops.channels))
    return ModelPair(draw(x), views, len(rows), len(pool), _seed(first), caveat,
                     f"{scale.source}: {ranges}")
