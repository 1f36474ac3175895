"""The pictures of each treatment on the report page: real cells, their reconstructions, and
the way from the control's typical cell to the treatment's, as small inline PNGs.

With a model they are made by :mod:`cellprof.report.show`'s own steps (the same cells,
seeds, scaling and decoding as ``cellprof show``); without one (hand-crafted or external
profiles) the real cells alone, at their raw intensities. Every picture of a page is drawn on
one intensity scale per channel, the shown cells' (:func:`~cellprof.report.plots.intensity_scale`),
so a stain a treatment dims looks dimmer, and a decoded typical cell is not stretched into
looking like a real one. Crops are drawn one row per PNG, without matplotlib's labels: the
page writes the labels as text, which keeps a 100-treatment page at about 10 MB (a 68-px
three-channel crop is ~6 KB as PNG) and its words searchable.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import to_hex
from PIL import Image

from cellprof.formats import chunks, store
from cellprof.profile.controls import use_compound_column
from cellprof.report.config import ReportConfig, ShowConfig
from cellprof.report.plots import IntensityScale, channel_colors, composite, intensity_scale
from cellprof.report.sources import StoreSummary
from cellprof.report.treatments import Groups, group_cells

GAP = 2  # white pixels between two crops of a row


@dataclass(frozen=True)
class Strip:
    """One row of crops as a PNG."""

    png: bytes
    width: int
    """Pixels across."""
    n: int
    """Crops in the row."""


@dataclass(frozen=True)
class TreatmentPictures:
    n_cells: int
    """Cells of the treatment in the store."""
    cells: Strip | None
    """Random cells (as the model sees them when a model is given)."""
    reconstructions: Strip | None = None
    """The same cells decoded from their latent means."""
    path: Strip | None = None
    """Decoded ``(1 - t) mean_control + t mean_treatment`` over ``CellPictures.steps``: the
    control's typical cell first, the treatment's last (the control: its own alone)."""


@dataclass(frozen=True)
class CellPictures:
    treatments: dict[str, TreatmentPictures]
    """Treatment label -> its pictures, the control first."""
    control: str | None
    channels: tuple[str, ...]
    colours: dict[str, str]
    """Channel -> the colour it is drawn in."""
    scale: IntensityScale | None
    model: bool
    """Whether reconstructions and typical cells were decoded by a model."""
    steps: tuple[float, ...] = ()
    """The t of each frame of a path."""
    notes: tuple[str, ...] = ()


def strip(rgb: np.ndarray) -> Strip:
    """``(n, H, W, 3)`` RGB in [0, 1] as one row of crops, ``GAP`` white pixels apart."""
    n, h, w, _ = rgb.shape
    row = np.ones((h, n * (w + GAP) - GAP, 3), np.float32)
    for i in range(n):
        row[:, i * (w + GAP):i * (w + GAP) + w] = rgb[i]
    buf = io.BytesIO()
    Image.fromarray(np.round(row * 255).astype(np.uint8), "RGB").save(buf, "png", optimize=True)
    return Strip(buf.getvalue(), row.shape[1], n)


def pick(rows: np.ndarray, n: int, seed: int, label: str) -> np.ndarray:
    """Sorted store rows of at most ``n`` random cells of a treatment, the same whatever
    else is on the page (seeded by the treatment's name), as ``cellprof show`` picks them."""
    if len(rows) > n:
        rng = np.random.default_rng([seed, 0, zlib.crc32(label.encode())])
        rows = np.sort(rng.choice(rows, n, replace=False))
    return np.asarray(rows)


def show_config(match: dict, config: ReportConfig) -> ShowConfig:
    """The figures' settings: the match run's controls and compound column, the page's own
    cells, frames and seed."""
    return ShowConfig(cells_per_treatment=config.cells_per_treatment, steps=config.steps,
                      seed=config.seed, device=config.device,
                      control=match.get("control") if match.get("control_query") is None
                      else None, control_query=match.get("control_query"),
                      compound_column=match.get("compound_column", "Metadata_Compound"))


def _wanted(groups: Groups, treatments: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """The control and the treatments of the page that have cells in the store; a note
    naming those that have none."""
    have = [t for t in treatments if t in groups.rows]
    lost = [t for t in treatments if t not in groups.rows]
    note = () if not lost else (
        f"{len(lost)} of {len(treatments)} treatments have no cells in the crop store "
        f"(first: {', '.join(lost[:3])}): no pictures for them",)
    return [groups.control, *have] if groups.control else have, note


def _colours(channels: tuple[str, ...]) -> dict[str, str]:
    return {c: to_hex(rgb) for c, rgb in channel_colors(channels).items()}


def real_cells(crops: StoreSummary, treatments: list[str], match: dict,
               config: ReportConfig) -> CellPictures:
    """Random cells of each treatment at their raw intensities (no model)."""
    cfg = show_config(match, config)
    cells = use_compound_column(crops.cells, cfg.compound_column,
                                f"{crops.path}: the crop store's cells")
    groups = group_cells(cells, crops.path, cfg)
    if groups.control is None:
        return CellPictures({}, None, crops.channels, _colours(crops.channels), None, False,
                            notes=(groups.unlabelled,))
    wanted, notes = _wanted(groups, treatments)
    picked = {t: pick(groups.rows[t], config.cells_per_treatment, config.seed, t)
              for t in wanted}
    idx = np.unique(np.concatenate(list(picked.values())))
    with store.open_store(crops.path) as f:
        x = chunks.read_rows(f[store.CROPS], idx)
    scale = intensity_scale(x, what="cells shown (raw intensities)")
    rgb = composite(x, crops.channels, scale=scale)
    pictures = {t: TreatmentPictures(len(groups.rows[t]),
                                     strip(rgb[np.searchsorted(idx, rows)]))
                for t, rows in picked.items()}
    return CellPictures(pictures, groups.control, crops.channels, _colours(crops.channels),
                        scale, False, notes=notes)


def decoded_cells(checkpoint: str | Path, crops: StoreSummary, treatments: list[str],
                  match: dict, config: ReportConfig, profiles: Path | None) -> CellPictures:
    """Cells as the model sees them, their reconstructions, and the path from the
    control's typical cell to each treatment's; ``profiles`` (learned by this model, of
    these cells in this order) give the means over every cell, else they are encoded."""
    import torch

    from cellprof.report import show as sh

    cfg = show_config(match, config)
    s = sh.open_model(checkpoint, crops.path, cfg)
    colours = _colours(s.channels)
    if s.control is None:
        return CellPictures({}, None, s.channels, colours, None, True, notes=(s.unlabelled,))
    wanted, notes = _wanted(Groups(s.rows, s.moa, s.control), treatments)
    where, x, rec = sh.reconstruct_cells(s, cfg)
    means = sh.latent_means(s, profiles, cfg)
    scale = intensity_scale(x, what="input cells shown (as the model sees them)")
    steps = np.linspace(0.0, 1.0, config.steps)
    control = s.control
    paths = [means[control][None]] + [sh.interpolate_latents(means[control], means[t],
                                                             config.steps) for t in wanted[1:]]
    with torch.no_grad():
        z = np.concatenate(paths)
        decoded = np.concatenate([sh.decode_latents(s, z[i:i + 256])
                                  for i in range(0, len(z), 256)])
    frames = np.split(decoded, np.cumsum([len(p) for p in paths])[:-1])
    pictures = {}
    for t, path in zip(wanted, frames):
        shown = where[t]
        pictures[t] = TreatmentPictures(
            len(s.rows[t]), strip(composite(x[shown], s.channels, scale=scale)),
            strip(composite(rec[shown], s.channels, scale=scale)),
            strip(composite(path, s.channels, scale=scale)))
    return CellPictures(pictures, control, s.channels, colours, scale, True,
                        tuple(float(v) for v in steps), notes)
