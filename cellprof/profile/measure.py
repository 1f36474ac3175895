"""``cellprof measure``: the hand-crafted baseline, every cell of a crop store measured.

A learned profile earns its place only by beating the classical one on the same cells, so
the classical features (:mod:`cellprof.profile.classic`: nucleus shape, intensity, texture and
channel correlation, named CellProfiler-style) are written in exactly the profiles format
``cellprof embed`` writes (:mod:`cellprof.formats.profiles`). ``match``, table exports and anything
else that reads a profiles file then take either without being told which.

The file says which it is: its ``profile_kind`` attribute is ``hand-crafted`` (``embed``
writes ``learned``), ``feature_names`` lists the measured features (``AreaShape_Area`` …,
not ``VAE_000`` …), and ``method`` names the module that measured them. Measurements are
of the store's raw values (``uint16`` counts, or illumination-corrected floats), not of
the max-normalised crops the model sees: that is what a CellProfiler pipeline measures.

The nucleus measured is the one the crop was cut for: the crop's nucleus channel is cut at
the threshold ``crop --segment`` found its field's nuclei at (kept in the store's
``/fields``; each crop's own Otsu threshold for a store cut from an object table or
imported), and the component at the centre is split as crop splits touching nuclei, with
crop's settings (:func:`cellprof.profile.classic.nucleus_masks`).

Cells are read in chunk-aligned blocks and written to ``<out>.partial`` in store order; an
interrupted run continues after the last block written, and the file is renamed to
``out`` only when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats import chunks, store
from cellprof.formats.profiles import ProfileWriter
from cellprof.formats.safeio import fingerprint, refuse_inputs
from cellprof.formats.schema import (
    IMAGE_NUMBER,
    PLATE,
    SITE,
    TABLE_NUMBER,
    WELL,
    threshold_column,
)
from cellprof.prepare.segment import SegmentConfig
from cellprof.prepare.tables import is_nuclear
from cellprof.profile.classic import TEXTURE_LEVELS, TEXTURE_SCALE, classical_features

PROFILE_KIND = "hand-crafted"
FIELD_IDENTITY = (PLATE, TABLE_NUMBER, IMAGE_NUMBER, WELL, SITE)
"""The columns of ``/cells`` and ``/fields`` that name a cell's field (a merged store's
shards may number their images alike)."""


@dataclass(frozen=True)
class MeasureConfig:
    """Settings of a measuring run."""

    batch_size: int = 256
    """Crops measured at once; memory is about ``batch_size * C * H * W * 40`` bytes
    (140 MB for 256 crops of 3 x 68 x 68)."""
    nucleus_channel: Optional[str] = None
    """Channel the nucleus is segmented on (its shape features); default the one ``crop
    --segment`` segmented, else the one named like a DNA stain, else the store's first
    (:func:`default_nucleus`)."""


@dataclass(frozen=True)
class MeasureResult:
    out: Path
    n_cells: int
    n_features: int
    resumed_from: int
    cells_per_s: float


def measured_channels(channels: tuple[str, ...], nucleus: str | None) -> list[int]:
    """Store channel indices in measuring order: the nucleus channel first (the classical
    features segment on channel 0), the others in store order."""
    if nucleus is None:
        return list(range(len(channels)))
    if nucleus not in channels:
        raise InputError(f"--nucleus-channel {nucleus!r} is not a channel of the store "
                         f"(channels: {', '.join(channels)})")
    first = channels.index(nucleus)
    return [first] + [k for k in range(len(channels)) if k != first]


def default_nucleus(fields: pd.DataFrame, channels: tuple[str, ...]) -> str:
    """The channel whose nucleus ``measure`` measures when none is asked: the one ``crop
    --segment`` segmented (its ``Threshold_Nuclei_<ch>`` column is filled), else the one
    channel named like a DNA stain (:func:`cellprof.prepare.tables.is_nuclear`), else the
    first, from the store's ``/fields`` table. So measure measures the object crop cut,
    whatever the channels' order."""
    segmented = [c for c in channels if threshold_column(c) in fields.columns
                 and fields[threshold_column(c)].notna().any()]
    if len(segmented) == 1:
        return segmented[0]
    nuclear = [c for c in channels if is_nuclear(c)]
    return nuclear[0] if len(nuclear) == 1 else channels[0]


def store_segment(info: store.StoreInfo) -> SegmentConfig:
    """The smoothing and splitting ``crop --segment`` found the store's nuclei with (the
    defaults for a store cut from an object table, imported or merged)."""
    given = info.config.get("segment") or {}
    known = SegmentConfig.__dataclass_fields__
    return SegmentConfig(**{k: v for k, v in given.items() if k in known})


def field_thresholds(fields: pd.DataFrame, cells: pd.DataFrame, channel: str
                     ) -> np.ndarray | None:
    """Each cell's ``(N,)`` threshold of ``channel`` from its field's row of ``fields`` (the
    store's ``/fields``): the level ``crop --segment`` found the nuclei at (NaN where its
    field has none); None when no field has one (an object table, ``--singlecell``, another
    channel segmented).

    With it the crop's nucleus has the edge crop found: a threshold of the crop alone
    follows the brightness of the nuclei in view, and moved the edge of small nuclei
    (~100 px) enough to change 25-32% of their areas by over 10% (1% with this threshold;
    tests/test_measure_nuclei.py's screen).
    """
    column = threshold_column(channel)
    if column not in fields.columns or fields[column].isna().all():
        return None
    keys = [k for k in FIELD_IDENTITY if k in cells.columns and k in fields.columns]
    known = fields.loc[fields[column].notna(), [*keys, column]]
    known = known.drop_duplicates(keys, keep=False)  # a field named twice is not known
    return cells[keys].merge(known, on=keys, how="left")[column].to_numpy(np.float64)


def measure(crops: str | Path, out: str | Path, *, config: MeasureConfig = MeasureConfig(),
            overwrite: bool = False,
            progress: Callable[[str, int, int], None] | None = None) -> MeasureResult:
    """Write the hand-crafted features of every cell of ``crops`` to the profiles file ``out``.

    Raises :class:`~cellprof.errors.StoreError` when ``crops`` is not a complete crop store
    and :class:`~cellprof.errors.InputError` for an existing ``out`` (without
    ``overwrite``) or bad settings.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if config.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {config.batch_size}")
    info, fields = store.read_info(crops), store.read_fields(crops)
    order = measured_channels(info.channels, config.nucleus_channel
                              or default_nucleus(fields, info.channels))
    channels = [info.channels[k] for k in order]
    if info.crop_size <= 2 * TEXTURE_SCALE:
        raise InputError(f"{crops}: crops of {info.crop_size} px are too small to measure "
                         f"texture at {TEXTURE_SCALE} px (need more than {2 * TEXTURE_SCALE})")
    names = list(classical_features(np.zeros((0, len(order), info.crop_size, info.crop_size)),
                                    channels).columns)
    cells = store.read_cells(crops)
    segment = store_segment(info)
    thresholds = field_thresholds(fields, cells, channels[0])
    attrs = {"profile_kind": PROFILE_KIND, "method": "cellprof.profile.classic",
             "store": str(Path(crops).resolve()), "channels": channels,
             "nucleus_channel": channels[0], "texture_levels": TEXTURE_LEVELS,
             "texture_scale": TEXTURE_SCALE, "nucleus_segment": asdict(segment),
             "nucleus_threshold": "crop's" if thresholds is not None else "Otsu of each crop"}
    refuse_inputs(out, [crops])  # --overwrite must never replace the store it reads
    writer = ProfileWriter(out, cells, names, attrs, logvar=False, resume=not overwrite,
                           inputs=fingerprint({"crop store": crops}))
    start, n = writer.n_done, info.n_cells
    t0, done = time.perf_counter(), 0
    try:
        with store.open_store(crops) as f:
            ds = f[store.CROPS]
            if progress:
                progress("measure", start, n)
            for lo, hi in store.blocks(start, n, config.batch_size):
                x = chunks.read_rows(ds, slice(lo, hi))[:, order]
                feats = classical_features(
                    x, channels, batch=hi - lo, segment=segment,
                    thresholds=None if thresholds is None else thresholds[lo:hi])
                writer.write(lo, feats[names].to_numpy(np.float32))
                done += hi - lo
                if progress:
                    progress("measure", hi, n)
        writer.finish()
    finally:
        writer.close()
    return MeasureResult(out, n, len(names), start,
                         done / max(time.perf_counter() - t0, 1e-9))
