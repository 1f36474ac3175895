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

Cells are read in chunk-aligned blocks and written to ``<out>.partial`` in store order; an
interrupted run continues after the last block written, and the file is renamed to
``out`` only when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cellprof.errors import InputError
from cellprof.formats import chunks, store
from cellprof.formats.profiles import ProfileWriter
from cellprof.formats.safeio import fingerprint, refuse_inputs
from cellprof.profile.classic import TEXTURE_LEVELS, TEXTURE_SCALE, classical_features

PROFILE_KIND = "hand-crafted"


@dataclass(frozen=True)
class MeasureConfig:
    """Settings of a measuring run."""

    batch_size: int = 256
    """Crops measured at once; memory is about ``batch_size * C * H * W * 40`` bytes
    (140 MB for 256 crops of 3 x 68 x 68)."""
    nucleus_channel: Optional[str] = None
    """Channel the nucleus is segmented on (its shape features); default the store's first."""


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
    info = store.read_info(crops)
    order = measured_channels(info.channels, config.nucleus_channel)
    channels = [info.channels[k] for k in order]
    if info.crop_size <= 2 * TEXTURE_SCALE:
        raise InputError(f"{crops}: crops of {info.crop_size} px are too small to measure "
                         f"texture at {TEXTURE_SCALE} px (need more than {2 * TEXTURE_SCALE})")
    names = list(classical_features(np.zeros((0, len(order), info.crop_size, info.crop_size)),
                                    channels).columns)
    cells = store.read_cells(crops)
    attrs = {"profile_kind": PROFILE_KIND, "method": "cellprof.profile.classic",
             "store": str(Path(crops).resolve()), "channels": channels,
             "nucleus_channel": channels[0], "texture_levels": TEXTURE_LEVELS,
             "texture_scale": TEXTURE_SCALE}
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
                feats = classical_features(x, channels, batch=hi - lo)
                writer.write(lo, feats[names].to_numpy(np.float32))
                done += hi - lo
                if progress:
                    progress("measure", hi, n)
        writer.finish()
    finally:
        writer.close()
    return MeasureResult(out, n, len(names), start,
                         done / max(time.perf_counter() - t0, 1e-9))
