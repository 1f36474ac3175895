"""``cellprof show``: what a trained VAE+ sees, as pictures a biologist can read.

Unlike a purely discriminative profiler, the VAE+ (Lafarge et al., MIDL 2019) decodes latents
back into cells, so a difference between populations can be *shown*, not only measured. Each
figure has one contrast stretch per channel shared by all its crops
(:func:`cellprof.report.plots.composite`), so a stain that a treatment dims looks dimmer:

``reconstructions.png``
    Per treatment, control first: random cells as the model sees them (crops scaled as
    in training) over their reconstructions ``decode(mu)``. Beyond 8 treatments the pairs go
    to ``reconstructions_01.png``, ``_02`` ..., each page led by the control (own stretch).
``typical_cells.png``
    One row per compound: the control's typical cell, then the compound's at each
    concentration, low to high. A typical cell is the decoded mean of its cells' latents.
``interpolation.png``
    ``decode((1 - t) mean_control + t mean_treatment)``, t from 0 to 1, for one treatment
    (by default the one whose mean latent is farthest from the control's).

A treatment is ``Metadata_Compound @ Metadata_Concentration`` ("taxol@0.3"); the control's
cells form one population whatever their concentration. Means come from a profiles file when
given (every cell); otherwise at most ``ShowConfig.mean_cells`` (2,000) random cells per
treatment are encoded, which bounds the time on a large screen.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Mapping
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
from cellprof.formats.schema import (
    COMPOUND,
    CONCENTRATION,
    IMAGE_NUMBER,
    MOA,
    OBJECT_NUMBER,
    PLATE,
    WELL,
)
from cellprof.learn.data import DataConfig, plate_percentiles, scale_crops
from cellprof.learn.device import setup
from cellprof.learn.embed import load_encoder
from cellprof.learn.model import VAEPlus
from cellprof.profile.controls import control_rows, use_compound_column
from cellprof.report.config import ShowConfig
from cellprof.report.plots import save_grid, save_strip

PAGE_TREATMENTS = 8  # treatments per reconstructions page: 16 rows of crops stay legible
BATCH_CHUNKS = 8  # store chunks (of 64 cells) read and encoded together
CELL_KEYS = (PLATE, WELL, IMAGE_NUMBER, OBJECT_NUMBER)


@dataclass(frozen=True)
class ShowResult:
    out_dir: Path
    reconstructions: Path
    """The first (or only) reconstructions page."""
    typical_cells: Path
    interpolation: Path
    treatments: list[str]
    """Treatments shown: the control, then by compound and concentration."""
    reconstruction_pages: tuple[Path, ...] = ()
    """Every reconstructions page written."""


@dataclass(frozen=True)
class _Screen:
    """A crop store opened against a checkpoint: what every figure needs."""

    crops: Path
    model: VAEPlus
    ckpt: dict[str, Any]
    device: torch.device
    channels: tuple[str, ...]
    cells: pd.DataFrame
    rows: dict[str, np.ndarray]  # treatment -> its store rows; control first
    moa: dict[str, str]  # treatment -> MOA ("" when unknown)
    method: str  # the checkpoint's crop scaling
    pct: dict[str, np.ndarray] | None

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


def _split(label: str) -> tuple[str, float]:
    """"taxol@0.3" -> ("taxol", 0.3); a label without a number -> (label, nan)."""
    compound, at, conc = label.rpartition("@")
    try:
        return (compound, float(conc)) if at else (label, np.nan)
    except ValueError:
        return label, np.nan


def choose_treatment(means: Mapping[str, np.ndarray], control: str, wanted: str | None) -> str:
    """The interpolation target among the keys of ``means`` (treatment -> mean latent).

    ``wanted`` is "compound@conc" (concentration compared as a number), a compound name (its
    highest concentration), or None for the treatment farthest from ``control`` (Euclidean).
    """
    others = [t for t in means if t != control]
    if not others:
        raise InputError(f"only control ({control}) cells: no treatment to compare with")
    if wanted is None:
        return max(others, key=lambda t: float(np.linalg.norm(means[t] - means[control])))
    if wanted == control:
        raise InputError(f"--treatment {wanted!r} is the control; name a treatment")
    compound, conc = _split(wanted)
    hits = [t for t in others if _split(t)[0] == compound and
            ("@" not in wanted or np.isclose(_split(t)[1], conc, rtol=1e-6, atol=0.0))]
    if not hits:
        raise InputError(f"--treatment {wanted!r}: no such treatment (compound@concentration or "
                         f"compound); available: {', '.join(others[:8])}"
                         f"{f', ... ({len(others)} in all)' if len(others) > 8 else ''}")
    return max(hits, key=lambda t: np.nan_to_num(_split(t)[1], nan=-np.inf))


def _open(checkpoint: str | Path, crops: str | Path, config: ShowConfig) -> _Screen:
    device = setup(config.device).device
    model, ckpt = load_encoder(checkpoint, device)
    info = store.read_info(crops)
    check_fits(ckpt, info.channels, info.crop_size, crops)
    cells = use_compound_column(store.read_cells(crops), config.compound_column,
                                f"{crops}: the crop store's cells")
    if COMPOUND not in cells.columns or (cells[COMPOUND].astype(str) == "").all():
        raise InputError(f"{crops}: no compound metadata ({COMPOUND}), so treatments cannot be "
                         "told apart; name the compound column with --compound-column, or "
                         "crop from an image table naming each well's compound and "
                         "concentration")
    compound = cells[COMPOUND].astype(str).to_numpy()
    controls = control_rows(cells, config.control, config.control_query,
                            f"{crops}: the crop store's cells")
    if not controls.any():
        names = sorted(set(compound))
        raise InputError(f"{crops}: no cells of the control {config.control!r} in {COMPOUND}; "
                         f"name the control compound with --control or choose the controls "
                         f"with --control-query (compounds here: "
                         f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    # the controls are pooled under their compound's name, or "control" when a query
    # chose cells of several compounds
    named = set(compound[controls])
    control = named.pop() if len(named) == 1 else "control"
    has_conc = CONCENTRATION in cells.columns
    conc = pd.to_numeric(cells[CONCENTRATION], errors="coerce").to_numpy(np.float64) \
        if has_conc else np.full(len(cells), np.nan)
    kinds = pd.DataFrame({
        "label": [control if k else f"{c}@{x:g}" if has_conc else c
                  for c, x, k in zip(compound, conc, controls)],
        "rest": ~controls, "compound": compound, "conc": conc,
        "moa": cells[MOA].astype(str).to_numpy() if MOA in cells.columns else ""})
    order = kinds.sort_values(["rest", "compound", "conc"], kind="stable")["label"].unique()
    rows = kinds.groupby("label").indices
    known = kinds[kinds["moa"] != ""].groupby("label")["moa"].first()
    method = DataConfig.from_dict(ckpt["data_config"]).crop_scaling
    pct = plate_percentiles(crops, info.channels) if method == "percentile" else None
    return _Screen(Path(crops), model, ckpt, device, info.channels, cells,
                   {t: np.asarray(rows[t]) for t in order},
                   {t: str(known.get(t, "")) for t in order}, method, pct)


def _pick(s: _Screen, treatment: str, n: int, seed: int, purpose: int) -> np.ndarray:
    """Sorted store rows of at most ``n`` random cells of ``treatment`` (order-independent)."""
    rows = s.rows[treatment]
    if len(rows) > n:
        rng = np.random.default_rng([seed, purpose, zlib.crc32(treatment.encode())])
        rows = np.sort(rng.choice(rows, n, replace=False))
    return rows


def _scaled(s: _Screen, idx: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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


def _encode(s: _Screen, x: np.ndarray) -> torch.Tensor:
    return s.model.encode(torch.from_numpy(x).to(s.device))[0]


def _decode(s: _Screen, z: np.ndarray | torch.Tensor) -> np.ndarray:
    z = torch.as_tensor(z, dtype=torch.float32, device=s.device)
    return s.model.decode(z).cpu().numpy()


def _profile_features(s: _Screen, profiles: str | Path) -> np.ndarray:
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
def _means(s: _Screen, profiles: str | Path | None, config: ShowConfig) -> dict[str, np.ndarray]:
    if profiles is not None:
        picked, feats = s.rows, _profile_features(s, profiles)
        idx = np.arange(len(feats))
    else:
        picked = {t: _pick(s, t, config.mean_cells, config.seed, 1) for t in s.order}
        idx = np.unique(np.concatenate(list(picked.values())))
        feats = np.empty((len(idx), s.model.config.latent_dim), np.float32)
        for pos, x in _scaled(s, idx):
            feats[pos] = _encode(s, x).cpu().numpy()
    return {t: feats[np.searchsorted(idx, rows)].astype(np.float64).mean(0).astype(np.float32)
            for t, rows in picked.items()}


def treatment_means(checkpoint: str | Path, crops: str | Path, *,
                    profiles: str | Path | None = None,
                    config: ShowConfig = ShowConfig()) -> dict[str, np.ndarray]:
    """Mean latent ``(D,)`` float32 of every treatment, control first (see module docstring).

    With ``profiles`` (a ``cellprof embed`` file of ``crops`` made with ``checkpoint``) the
    means are over every cell; without, over at most ``config.mean_cells`` cells each.
    """
    return _means(_open(checkpoint, crops, config), profiles, config)


def _display(s: _Screen, treatment: str) -> str:
    moa = s.moa[treatment]
    if treatment == s.order[0]:
        return f"{treatment} (control)"
    return f"{treatment} ({moa})" if moa and moa != treatment else treatment


@torch.no_grad()
def _reconstruction_pages(s: _Screen, out_dir: Path, config: ShowConfig) -> list[Path]:
    picked = {t: _pick(s, t, config.cells_per_treatment, config.seed, 0) for t in s.order}
    idx = np.unique(np.concatenate(list(picked.values())))
    shape = (len(idx), len(s.channels)) + (s.model.config.image_size,) * 2
    x, rec = np.empty(shape, np.float32), np.empty(shape, np.float32)
    for pos, batch in _scaled(s, idx):
        x[pos], rec[pos] = batch, _decode(s, _encode(s, batch))
    control, rest = s.order[0], s.order[1:]
    per = PAGE_TREATMENTS if len(s.order) <= PAGE_TREATMENTS else PAGE_TREATMENTS - 1
    pages = [[control, *rest[i:i + per]] for i in range(0, max(len(rest), 1), per)]
    paths = []
    for i, page in enumerate(pages, start=1):
        where = [np.searchsorted(idx, picked[t]) for t in page]
        name = "reconstructions.png" if len(pages) == 1 else f"reconstructions_{i:02d}.png"
        paths.append(save_grid(
            out_dir / name, [a for w in where for a in (x[w], rec[w])], s.channels,
            row_labels=[a for t in page for a in (_display(s, t), "reconstruction")],
            title="Cells (model input) and their reconstructions decode(mu)"
                  + (f", page {i} of {len(pages)}" if len(pages) > 1 else "")))
    for old in out_dir.glob("reconstructions*.png"):  # pages left by an earlier, larger run
        if re.fullmatch(r"reconstructions(_\d+)?\.png", old.name) and old not in paths:
            old.unlink()
    return paths


def _typical_cells(s: _Screen, typical: dict[str, np.ndarray], path: Path) -> Path:
    """One row per compound: the control's typical cell, then the compound's, low to high."""
    control = s.order[0]
    compounds: dict[str, list[str]] = {}
    for t in s.order[1:]:
        compounds.setdefault(_split(t)[0], []).append(t)
    rows = [np.stack([typical[control]] + [typical[t] for t in ts]) for ts in compounds.values()]
    widest = max(len(ts) for ts in compounds.values())
    cols = [f"{control} (control)"] + (["treatment"] if widest == 1 else
                                       [f"conc. {k}" for k in range(1, widest + 1)])
    labels = [f"{c}{f' ({s.moa[ts[0]]})' if s.moa[ts[0]] else ''}"
              f"{' @ ' + ', '.join(t.rpartition('@')[2] for t in ts) if '@' in ts[0] else ''}"
              for c, ts in compounds.items()]
    return save_grid(path, rows, s.channels, row_labels=labels, col_labels=cols,
                     title="Typical cell (decoded mean latent): the control, then each "
                           "compound, concentrations low to high")


def show(checkpoint: str | Path, crops: str | Path, out_dir: str | Path, *,
         profiles: str | Path | None = None, config: ShowConfig = ShowConfig()) -> ShowResult:
    """Write the three figures of the module docstring for ``crops`` into ``out_dir``.

    ``checkpoint`` is a trained model (``model.pt``, a checkpoint or the run folder), ``crops``
    the crop store whose cells are shown, ``out_dir`` the folder for the PNGs (figures of an
    earlier run there are replaced). ``profiles``, a ``cellprof embed`` output of ``crops``
    with ``checkpoint``, gives the treatment means over every cell instead of encoding.

    Raises
    ------
    InputError
        No compound metadata, no control cells, or an unknown ``config.treatment``.
    CheckpointError
        The checkpoint is unreadable or was trained on other channels or crop size.
    StoreError
        ``crops`` is not a complete crop store, or ``profiles`` not of it and this model.

    Examples
    --------
    >>> show("run", "crops.h5", "figures", config=ShowConfig(treatment="taxol"))  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    s = _open(checkpoint, crops, config)
    means = _means(s, profiles, config)
    control = s.order[0]
    target = choose_treatment(means, control, config.treatment)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = _reconstruction_pages(s, out_dir, config)
    with torch.no_grad():
        typical = dict(zip(s.order, _decode(s, np.stack([means[t] for t in s.order]))))
        frames = _decode(s, interpolate_latents(means[control], means[target], config.steps))
    typical_path = _typical_cells(s, typical, out_dir / "typical_cells.png")
    interp_path = save_strip(
        out_dir / "interpolation.png", frames, s.channels,
        labels=[f"t={v:.2f}" for v in np.linspace(0.0, 1.0, config.steps)],
        title=f"{control} (t=0) to {_display(s, target)} (t=1): "
              "decoded (1-t) mean_control + t mean_treatment")
    return ShowResult(out_dir, pages[0], typical_path, interp_path, s.order, tuple(pages))
