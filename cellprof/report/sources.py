"""What a report was made from: the profiles' kind and provenance, the crop store, the
model's run folder and its training budget; and the checks that refuse inputs which do not
belong together before anything is written.

A profiles file says what it is in its attributes (``profile_kind``: learned from
``embed``, hand-crafted from ``measure``, combined from ``combine``); a table from elsewhere
is "external". Nothing here imports torch: a checkpoint is opened only by
:mod:`cellprof.report.page` when a model is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import InputError, StoreError
from cellprof.formats import store
from cellprof.formats.profiles import is_hdf5, profile_attrs, read_profiles
from cellprof.formats.schema import IMAGE_NUMBER, OBJECT_NUMBER, PLATE, WELL

CELL_KEYS = (PLATE, WELL, IMAGE_NUMBER, OBJECT_NUMBER)
"""What names one cell in a store and in the profiles made from it."""
KINDS = {"learned": "learned (cellprof embed)", "hand-crafted": "hand-crafted (cellprof measure)",
         "combined": "combined (cellprof combine)"}


def _attr(attrs: dict[str, Any], key: str) -> Any:
    """A profiles attribute as written: JSON for everything but plain strings."""
    value = attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.tolist() if isinstance(value, np.ndarray) else value


@dataclass(frozen=True)
class ProfileSource:
    """One profiles file or table: what kind it is and what it says it was made from."""

    path: Path
    kind: str
    """learned, hand-crafted, combined or external."""
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def describe(self) -> str:
        return KINDS.get(self.kind, "external feature table")

    @property
    def checkpoint(self) -> Path | None:
        """The model a learned profile was embedded with, as recorded."""
        value = _attr(self.attrs, "checkpoint")
        return Path(value) if self.kind == "learned" and value else None

    def get(self, key: str) -> Any:
        return _attr(self.attrs, key)


def profile_source(path: str | Path) -> ProfileSource:
    """Kind and attributes of a profiles file; a CSV or Parquet table is external."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such profiles file or table")
    if not is_hdf5(path):
        return ProfileSource(path, "external")
    attrs = profile_attrs(path)
    return ProfileSource(path, str(_attr(attrs, "profile_kind") or "external"), attrs)


def kind_of(sources: list[ProfileSource]) -> str:
    """One kind for shards (files of one kind), "mixed" otherwise."""
    kinds = {s.kind for s in sources}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The training run folder (with losses.csv) a checkpoint sits in: the folder itself,
    model.pt's folder or checkpoints/last.pt's; None when it is not at hand."""
    path = Path(checkpoint)
    places = [path] if path.is_dir() else [path.parent] + (
        [path.parent.parent] if path.parent.name == "checkpoints" else [])
    return next((p for p in places if (p / "losses.csv").is_file()), None)


def check_run_folder(run: str | Path) -> Path:
    """A run folder given by hand must be one: it exists and holds losses.csv."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"--run {run}: no such run folder (the folder `cellprof train "
                         "--out` wrote, with losses.csv and config.json)")
    if not (run / "losses.csv").is_file():
        raise InputError(f"--run {run}: no losses.csv: not a `cellprof train` run folder")
    return run


def losses(run: Path) -> pd.DataFrame:
    """losses.csv of a run folder, numbers only."""
    table = pd.read_csv(run / "losses.csv")
    return table.apply(pd.to_numeric, errors="coerce")


def training_budget(run: Path) -> list[tuple[str, str]]:
    """(label, value) rows of what a run spent: steps, batch, cells seen and epochs over
    how many training cells, held-out cells, device and precision, time; from its
    config.json and the last row of losses.csv (either may be missing: fewer rows)."""
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    train, data = config.get("train_config", {}), config.get("data", {})
    rows: list[tuple[str, str]] = []
    table = losses(run) if (run / "losses.csv").is_file() else pd.DataFrame()
    last = table.iloc[-1] if len(table) else pd.Series(dtype=float)
    step = int(last["step"]) if "step" in last and np.isfinite(last["step"]) else None
    if train:
        done = f"{step:,} of " if step is not None and step != train.get("steps") else ""
        seen = (step or train.get("steps", 0)) * train.get("batch_size", 0) * \
            config.get("world_size", 1)
        rows.append(("training", f"{done}{train.get('steps', 0):,} steps × batch "
                                 f"{train.get('batch_size')} = {seen:,} cells seen, seed "
                                 f"{train.get('seed')}"))
    if data:
        epochs = f"{last['epoch']:.1f} epochs of " if "epoch" in last and \
            np.isfinite(last["epoch"]) else ""
        rows.append(("training cells", f"{epochs}{data.get('n_train', 0):,} cells, "
                                       f"{data.get('n_val', 0):,} held out, from "
                                       f"{data.get('store')}"))
    if "elapsed_s" in last and np.isfinite(last["elapsed_s"]):
        spent = last["elapsed_s"]
        rows.append(("training time", (f"{spent / 60:.1f} min" if spent >= 60 else
                                       f"{spent:.0f} s") + " on "
                                      f"{config.get('device', '?')} "
                                      f"({config.get('precision', '?')})"))
    return rows


@dataclass(frozen=True)
class StoreSummary:
    path: Path
    n_cells: int
    channels: tuple[str, ...]
    crop_size: int
    plates: list[str]
    cells: pd.DataFrame = field(repr=False)


def store_summary(crops: str | Path) -> StoreSummary:
    """A crop store's size, channels and plates (:class:`StoreError` when it is none)."""
    info = store.read_info(crops)
    cells = store.read_cells(crops)
    plates = sorted(cells[PLATE].astype(str).unique()) if PLATE in cells.columns else []
    return StoreSummary(Path(crops), info.n_cells, info.channels, info.crop_size, plates, cells)


def check_cells(source: ProfileSource, crops: StoreSummary) -> bool:
    """Refuse profiles of other cells than the crop store's: every cell of a profiles file
    (plate, well, image, object) must be a cell of the store. Returns whether they are the
    same cells in the same order (then their latents give each treatment's mean). A table
    from elsewhere names its cells its own way and is not checked (False)."""
    if source.kind == "external":
        return False
    meta = read_profiles(source.path)[0]
    keys = [k for k in CELL_KEYS if k in meta.columns and k in crops.cells.columns]
    if not keys:
        return False
    ours = crops.cells[keys].astype(str)
    theirs = meta[keys].astype(str)
    if len(theirs) == len(ours) and (theirs.to_numpy() == ours.to_numpy()).all():
        return True
    known = pd.MultiIndex.from_frame(ours)
    unknown = ~pd.MultiIndex.from_frame(theirs).isin(known)
    if unknown.any():
        first = theirs[unknown].iloc[0]
        where = ", ".join(f"{k.removeprefix('Metadata_')} {first[k]}" for k in keys)
        made = f"; it was made from {source.get('store')}" if source.get("store") else ""
        raise StoreError(
            f"{source.path}: {int(unknown.sum())} of its {len(theirs)} cells are not cells of "
            f"{crops.path} (first: {where}){made}: give --crops the store the profiles were "
            "made from")
    return False


def check_profiles_model(source: ProfileSource, ckpt: dict[str, Any]) -> bool:
    """Learned profiles must come from the model whose pictures the page shows: the same
    architecture and step. Returns whether they are learned ones (then usable as latents)."""
    if source.kind != "learned":
        return False
    step = source.get("checkpoint_step")
    if source.get("model_config") != ckpt.get("model_config") or step != ckpt.get("step"):
        raise InputError(f"{source.path}: embedded with {source.get('checkpoint')} (step "
                         f"{step}), not --model {ckpt.get('path')} (step {ckpt.get('step')}): "
                         "its numbers and the pictures would come from two models; give the "
                         "model it was embedded with, or re-embed")
    return True
