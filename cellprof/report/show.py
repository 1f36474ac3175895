"""``cellprof show``: what a trained VAE+ sees, as pictures a biologist can read.

Unlike a purely discriminative profiler, the VAE+ (Lafarge et al., MIDL 2019) decodes latents
back into cells, so a difference between populations can be *shown*, not only measured. Every
figure is drawn on one intensity scale per channel, the same in all of them: the 0.5-99.8th
percentiles of the real input cells of the reconstructions, stated in each legend
(:func:`cellprof.report.plots.intensity_scale`). So a stain that a treatment dims looks dimmer,
and a decoded typical cell, far flatter than a real one, is not stretched into looking like
one:

``reconstructions.png``
    Per treatment, control first: random cells as the model sees them (crops scaled as
    in training) over their reconstructions ``decode(mu)``. Beyond 8 treatments the pairs go
    to ``reconstructions_01.png``, ``_02`` ..., each page led by the control.
``samples.png``
    Cells decoded from 16 random latents ``z ~ N(0, I)`` (seeded by ``ShowConfig.seed``).
``typical_cells.png``
    One row per compound: the control's typical cell, then the compound's at each
    concentration, low to high. A typical cell is the decoded mean of its cells' latents.
``interpolation.png``
    ``decode((1 - t) mean_control + t mean_treatment)``, t from 0 to 1, for one treatment
    (by default the one whose mean latent is farthest from the control's).

A treatment is ``Metadata_Compound @ Metadata_Concentration`` ("taxol@0.3", or "taxol" when
its concentration is missing); the control's cells form one population whatever their
concentration. Means come from a profiles file when given (every cell); otherwise at most
``ShowConfig.mean_cells`` (2,000) random cells per treatment are encoded, which bounds the
time on a large screen. A screen without compounds still gets the reconstructions (one pair
of rows per plate) and the samples; :attr:`ShowResult.notes` says what needs treatment labels.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cellprof.errors import InputError, StoreError
from cellprof.formats import chunks, store
from cellprof.formats.checkpoint import check_fits
from cellprof.formats.profiles import profile_attrs, read_profiles
from cellprof.formats.schema import IMAGE_NUMBER, OBJECT_NUMBER, PLATE, WELL
from cellprof.learn.data import DataConfig, plate_percentiles, scale_crops
from cellprof.learn.device import setup
from cellprof.learn.embed import load_encoder
from cellprof.learn.model import VAEPlus
from cellprof.profile.controls import use_compound_column
from cellprof.report.config import ShowConfig
from cellprof.report.plots import IntensityScale, intensity_scale, save_grid, save_strip
from cellprof.report.treatments import (
    choose_treatment,
    concentrations,
    group_cells,
    split_treatment,
)

__all__ = ["ModelOnStore", "ShowResult", "choose_treatment", "decode_latents", "encode_input",
           "interpolate_latents", "latent_means", "open_model", "reconstruct_cells",
           "scaled_rows", "show", "treatment_means"]

PAGE_TREATMENTS = 8  # treatments per reconstructions page: 16 rows of crops stay legible
BATCH_CHUNKS = 8  # store chunks (of 64 cells) read and encoded together
SAMPLES = 16  # random latents decoded into samples.png, two rows of 8
CELL_KEYS = (PLATE, WELL, IMAGE_NUMBER, OBJECT_NUMBER)
_TREATMENT_FIGURES = ("typical_cells.png", "interpolation.png")


@dataclass(frozen=True)
class ShowResult:
    out_dir: Path
    reconstructions: Path
    """The first (or only) reconstructions page."""
    typical_cells: Path | None
    """None when the cells have no treatment labels (see ``notes``)."""
    interpolation: Path | None
    """None when the cells have no treatment labels (see ``notes``)."""
    treatments: list[str]
    """Treatments shown: the control, then by compound and concentration; empty without
    treatment labels (the reconstructions then go by plate)."""
    reconstruction_pages: tuple[Path, ...] = ()
    """Every reconstructions page written."""
    samples: Path | None = None
    """Cells decoded from random latents."""
    scale: IntensityScale | None = None
    """The display range per channel of every figure: the input cells'."""
    notes: tuple[str, ...] = ()
    """One line each on what was not drawn and why."""


@dataclass(frozen=True)
class ModelOnStore:
    """A crop store opened against a checkpoint (:func:`open_model`): what every figure
    needs, and what the report page's pictures (:mod:`cellprof.report.cells`,
    :mod:`cellprof.report.models`) draw with, so the cells are scaled, encoded and decoded
    one way everywhere."""

    crops: Path
    model: VAEPlus
    ckpt: dict[str, Any]
    device: torch.device
    channels: tuple[str, ...]
    cells: pd.DataFrame
    rows: dict[str, np.ndarray]  # treatment -> its store rows, control first; or plate -> rows
    moa: dict[str, str]  # treatment -> MOA ("" when unknown)
    method: str  # the checkpoint's crop scaling
    pct: dict[str, np.ndarray] | None
    control: str | None
    """The control's treatment; None when the cells name no compound (groups are plates)."""
    unlabelled: str = ""
    """Without compounds: why, and what the treatment figures need (one line)."""

    @property
    def order(self) -> list[str]:
        return list(self.rows)


def interpolate_latents(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``(steps, D)`` float32 points ``(1 - t) a + t b``, t = linspace(0, 1, steps).

    The first row is exactly ``a`` and the last exactly ``b``.

    >>> interpolate_latents(np.zeros(2), np.ones(2), 3)[:, 0].tolist()
    [0.0, 0.5, 1.0]
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be latents of one shape (D,), got {a.shape} and {b.shape}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (both ends), got {steps}")
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return ((1.0 - t) * a + t * b).astype(np.float32)


def open_model(checkpoint: str | Path, crops: str | Path, config: ShowConfig) -> ModelOnStore:
    """The model (weights only) on ``config.device``, after refusing one trained on other
    channels or crop size than the store's, with the store's cells grouped by treatment."""
    device = setup(config.device).device
    model, ckpt = load_encoder(checkpoint, device)
    info = store.read_info(crops)
    check_fits(ckpt, info.channels, info.crop_size, crops)
    cells = use_compound_column(store.read_cells(crops), config.compound_column,
                                f"{crops}: the crop store's cells")
    groups = group_cells(cells, crops, config)
    method = DataConfig.from_dict(ckpt["data_config"]).crop_scaling
    pct = plate_percentiles(crops, info.channels) if method == "percentile" else None
    return ModelOnStore(Path(crops), model, ckpt, device, info.channels, cells, groups.rows,
                        groups.moa, method, pct, groups.control, groups.unlabelled)


def _pick(s: ModelOnStore, treatment: str, n: int, seed: int, purpose: int) -> np.ndarray:
    """Sorted store rows of at most ``n`` random cells of ``treatment`` (order-independent)."""
    rows = s.rows[treatment]
    if len(rows) > n:
        rng = np.random.default_rng([seed, purpose, zlib.crc32(treatment.encode())])
        rows = np.sort(rng.choice(rows, n, replace=False))
    return rows


def scaled_rows(s: ModelOnStore, idx: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Model input of store rows ``idx`` (sorted, unique) in batches: (positions in idx, x).

    Whole chunks are read: one cell of a gzip chunk costs as much as its 64 neighbours.
    """
    size = store.CHUNK_CELLS
    blocks = idx // size
    plates = s.cells[PLATE].astype(str).to_numpy()
    with store.open_store(s.crops) as f:
        ds = f[store.CROPS]
        unique = np.unique(blocks)
        for g in range(0, len(unique), BATCH_CHUNKS):
            group = unique[g:g + BATCH_CHUNKS]
            pos = np.flatnonzero(np.isin(blocks, group))
            raw = chunks.read_rows(ds, idx[pos])
            yield pos, scale_crops(raw, s.method, plates[idx[pos]], s.pct)


def encode_input(s: ModelOnStore, x: np.ndarray) -> torch.Tensor:
    """Posterior means of model input ``x`` (from :func:`scaled_rows`), on the model's device."""
    return s.model.encode(torch.from_numpy(x).to(s.device))[0]


def decode_latents(s: ModelOnStore, z: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` of latents ``z``, in float32 whatever the training precision."""
    z = torch.as_tensor(z, dtype=torch.float32, device=s.device)
    return s.model.decode(z).cpu().numpy()


def _profile_features(s: ModelOnStore, profiles: str | Path) -> np.ndarray:
    """Features of a profiles file, after checking it holds this store's cells and model."""
    attrs = profile_attrs(profiles)
    if attrs.get("profile_kind") == "hand-crafted":
        raise StoreError(f"{profiles}: hand-crafted features (cellprof measure), not latents "
                         "of a model: they cannot be decoded into images; give a "
                         "cellprof embed file or leave out --profiles")
    meta, feats, _ = read_profiles(profiles)
    if len(meta) != len(s.cells) or not all(
            np.array_equal(meta[k].to_numpy(), s.cells[k].to_numpy())
            for k in CELL_KEYS if k in meta.columns and k in s.cells.columns):
        raise StoreError(f"{profiles}: made from {attrs.get('store', 'another store')} "
                         f"({len(meta)} cells), not from {s.crops} ({len(s.cells)} cells); "
                         "embed this store with cellprof embed, or leave out --profiles")
    step = json.loads(str(attrs.get("checkpoint_step", "null")))
    if json.loads(str(attrs.get("model_config", "null"))) != s.ckpt["model_config"] or \
            step != s.ckpt.get("step"):
        raise StoreError(f"{profiles}: made with checkpoint {attrs.get('checkpoint')} (step "
                         f"{step}), not {s.ckpt['path']} (step {s.ckpt.get('step')}); another "
                         "model's latents cannot be decoded by this one: re-embed, or leave "
                         "out --profiles")
    return feats


@torch.no_grad()
def latent_means(s: ModelOnStore, profiles: str | Path | None, config: ShowConfig
                 ) -> dict[str, np.ndarray]:
    """Each group's mean latent: over every cell from ``profiles`` (checked to be this store's
    cells and this model's latents), else over at most ``config.mean_cells`` encoded ones."""
    if profiles is not None:
        picked, feats = s.rows, _profile_features(s, profiles)
        idx = np.arange(len(feats))
    else:
        picked = {t: _pick(s, t, config.mean_cells, config.seed, 1) for t in s.order}
        idx = np.unique(np.concatenate(list(picked.values())))
        feats = np.empty((len(idx), s.model.config.latent_dim), np.float32)
        for pos, x in scaled_rows(s, idx):
            feats[pos] = encode_input(s, x).cpu().numpy()
    return {t: feats[np.searchsorted(idx, rows)].astype(np.float64).mean(0).astype(np.float32)
            for t, rows in picked.items()}


def treatment_means(checkpoint: str | Path, crops: str | Path, *,
                    profiles: str | Path | None = None,
                    config: ShowConfig = ShowConfig()) -> dict[str, np.ndarray]:
    """Mean latent ``(D,)`` float32 of every treatment, control first (see module docstring).

    With ``profiles`` (a ``cellprof embed`` file of ``crops`` made with ``checkpoint``) the
    means are over every cell; without, over at most ``config.mean_cells`` cells each.
    :class:`InputError` when the cells name no compound.
    """
    s = open_model(checkpoint, crops, config)
    if s.control is None:
        raise InputError(s.unlabelled)
    return latent_means(s, profiles, config)


def _display(s: ModelOnStore, treatment: str) -> str:
    moa = s.moa[treatment]
    if treatment == s.control:
        return f"{treatment} (control)"
    return f"{treatment} ({moa})" if moa and moa != treatment else treatment


@torch.no_grad()
def reconstruct_cells(s: ModelOnStore, config: ShowConfig
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Random cells of each group, as model input ``x`` and reconstructions ``rec`` (both
    ``(N, C, H, W)``), and each group's positions in them."""
    picked = {t: _pick(s, t, config.cells_per_treatment, config.seed, 0) for t in s.order}
    idx = np.unique(np.concatenate(list(picked.values())))
    shape = (len(idx), len(s.channels)) + (s.model.config.image_size,) * 2
    x, rec = np.empty(shape, np.float32), np.empty(shape, np.float32)
    for pos, batch in scaled_rows(s, idx):
        x[pos], rec[pos] = batch, decode_latents(s, encode_input(s, batch))
    return {t: np.searchsorted(idx, rows) for t, rows in picked.items()}, x, rec


def _pages(s: ModelOnStore) -> list[list[str]]:
    """The groups of each reconstructions page: 8 a page, each led by the control."""
    if s.control is None:
        return [s.order[i:i + PAGE_TREATMENTS] for i in range(0, len(s.order), PAGE_TREATMENTS)]
    control, rest = s.order[0], s.order[1:]
    per = PAGE_TREATMENTS if len(s.order) <= PAGE_TREATMENTS else PAGE_TREATMENTS - 1
    return [[control, *rest[i:i + per]] for i in range(0, max(len(rest), 1), per)]


def _reconstruction_pages(s: ModelOnStore, out_dir: Path, where: dict[str, np.ndarray],
                          x: np.ndarray, rec: np.ndarray, scale: IntensityScale) -> list[Path]:
    pages, paths = _pages(s), []
    for i, page in enumerate(pages, start=1):
        name = "reconstructions.png" if len(pages) == 1 else f"reconstructions_{i:02d}.png"
        paths.append(save_grid(
            out_dir / name, [a for t in page for a in (x[where[t]], rec[where[t]])],
            s.channels, row_labels=[a for t in page for a in (_display(s, t), "reconstruction")],
            title="Cells (model input) and their reconstructions decode(mu)"
                  + (f", page {i} of {len(pages)}" if len(pages) > 1 else ""), scale=scale))
    for old in out_dir.glob("reconstructions*.png"):  # pages left by an earlier, larger run
        if re.fullmatch(r"reconstructions(_\d+)?\.png", old.name) and old not in paths:
            old.unlink()
    return paths


@torch.no_grad()
def _samples(s: ModelOnStore, seed: int, scale: IntensityScale, path: Path) -> Path:
    """Cells decoded from random latents: what the model has learnt a cell is."""
    gen = torch.Generator(device=s.device).manual_seed(seed)
    z = torch.randn(SAMPLES, s.model.config.latent_dim, generator=gen, device=s.device)
    cells = decode_latents(s, z)
    half = SAMPLES // 2
    return save_grid(path, [cells[:half], cells[half:]], s.channels, scale=scale,
                     title="Cells decoded from random latents z ~ N(0, I)")


def _typical_cells(s: ModelOnStore, typical: dict[str, np.ndarray], path: Path,
                   scale: IntensityScale) -> Path:
    """One row per compound: the control's typical cell, then the compound's, low to high."""
    control = s.order[0]
    compounds: dict[str, list[str]] = {}
    for t in s.order[1:]:
        compounds.setdefault(split_treatment(t)[0], []).append(t)
    rows = [np.stack([typical[control]] + [typical[t] for t in ts]) for ts in compounds.values()]
    widest = max(len(ts) for ts in compounds.values())
    cols = [f"{control} (control)"] + (["treatment"] if widest == 1 else
                                       [f"conc. {k}" for k in range(1, widest + 1)])
    labels = [f"{c}{f' ({s.moa[ts[0]]})' if s.moa[ts[0]] else ''}{concentrations(ts)}"
              for c, ts in compounds.items()]
    return save_grid(path, rows, s.channels, row_labels=labels, col_labels=cols, scale=scale,
                     title="Typical cell (decoded mean latent): the control, then each "
                           "compound, concentrations low to high")


@torch.no_grad()
def _treatment_figures(s: ModelOnStore, means: dict[str, np.ndarray], target: str, out_dir: Path,
                       config: ShowConfig, scale: IntensityScale) -> tuple[Path, Path]:
    """typical_cells.png and interpolation.png."""
    control = s.order[0]
    typical = dict(zip(s.order, decode_latents(s, np.stack([means[t] for t in s.order]))))
    frames = decode_latents(s, interpolate_latents(means[control], means[target], config.steps))
    return _typical_cells(s, typical, out_dir / "typical_cells.png", scale), save_strip(
        out_dir / "interpolation.png", frames, s.channels, scale=scale,
        labels=[f"t={v:.2f}" for v in np.linspace(0.0, 1.0, config.steps)],
        title=f"{control} (t=0) to {_display(s, target)} (t=1): "
              "decoded (1-t) mean_control + t mean_treatment")


def show(checkpoint: str | Path, crops: str | Path, out_dir: str | Path, *,
         profiles: str | Path | None = None, config: ShowConfig = ShowConfig()) -> ShowResult:
    """Write the figures of the module docstring for ``crops`` into ``out_dir``.

    ``checkpoint`` is a trained model (``model.pt``, a checkpoint or the run folder), ``crops``
    the crop store whose cells are shown, ``out_dir`` the folder for the PNGs (figures of an
    earlier run there are replaced). ``profiles``, a ``cellprof embed`` output of ``crops``
    with ``checkpoint``, gives the treatment means over every cell instead of encoding.
    Cells without compounds get the reconstructions (by plate) and the samples only, and
    the result's ``notes`` say what the others need.

    Raises
    ------
    InputError
        No control cells among the compounds, or an unknown ``config.treatment``.
    CheckpointError
        The checkpoint is unreadable or was trained on other channels or crop size.
    StoreError
        ``crops`` is not a complete crop store, or ``profiles`` not of it and this model.

    Examples
    --------
    >>> show("run", "crops.h5", "figures", config=ShowConfig(treatment="taxol"))  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    s = open_model(checkpoint, crops, config)
    means = latent_means(s, profiles, config) if s.control is not None else {}
    target = choose_treatment(means, s.order[0], config.treatment) if means else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    where, x, rec = reconstruct_cells(s, config)
    scale = intensity_scale(x, what="input cells of the reconstructions (model input)")
    pages = _reconstruction_pages(s, out_dir, where, x, rec, scale)
    samples = _samples(s, config.seed, scale, out_dir / "samples.png")
    if not means:  # no treatments: figures of an earlier, labelled run would mislead
        for name in _TREATMENT_FIGURES:
            (out_dir / name).unlink(missing_ok=True)
        return ShowResult(out_dir, pages[0], None, None, [], tuple(pages), samples, scale,
                          (s.unlabelled,))
    typical, interp = _treatment_figures(s, means, target, out_dir, config, scale)
    return ShowResult(out_dir, pages[0], typical, interp, s.order, tuple(pages), samples,
                      scale)
