"""The 12-MOA benchmark on real BBBC021 single cells: which profiles match mechanisms?

Run by hand from the repository root (needs ../shared/data/bbbc021/singlecell and
singlecell_moa)::

    python benchmarks/bbbc021_moa.py [--steps 1500] [--batch-size 32] [--seeds 0,1,2]
        [--models vae,vae-gan,vae-gan-progressive] [--curve-every 250] [--work DIR]
        [--set key=value ...] [--docs docs/benchmarks.md]

Protocol (as in issue 8; unsupervised, as in the paper, which trains on the cells it profiles):

1. Crop stores: ``singlecell_moa/`` (1,987 cells, all 103 treatments, 38 compounds, 12 MOAs
   and DMSO, from all 55 plates) and ``singlecell/`` (5,873 cells, Week4, DMSO and
   cycloheximide) imported with ``cellprof crop --singlecell`` and merged: 7,860 cells.
2. Each model trains on the merged store, holding out 10% of its fields (``DataConfig``'s
   default): the held-out cells give the reconstruction error and the frame score
   (:mod:`cellprof.learn.diagnostics`). The same steps, batch and data for every model; the
   progressive model's schedule is :func:`cellprof.learn.train.scaled_schedule` of the budget.
   Checkpoints every ``--curve-every`` steps give the learning curve (training is resumed
   segment by segment, which is bit-identical to one run).
3. Every cell of ``singlecell_moa`` is embedded (posterior means, eval mode). Each feature
   is z-scored against all DMSO cells of the screen (most plates hold one DMSO cell or
   none, so plate-level statistics do not exist), then ``cellprof match --normalize none``:
   cells -> wells -> treatment means, cosine, NSC and NSCB 1-NN accuracy (per treatment and
   per compound) and same-MOA mAP over the 103 treatments.
4. Beside them: hand-crafted features (:mod:`cellprof.profile.classic`, the same z-scoring), an
   untrained encoder (random weights, per seed) and chance: the expected NSC of a random
   other-compound neighbour, computed from the labels.

Prints a table (mean ± sd over seeds), writes ``curve.png`` and ``results.json`` into the work
folder, and with ``--docs`` the table between ``<!-- bbbc021_moa:start/end -->``.

Evidence modes (each prints a table and trains nothing): ``--variants RUN ...`` evaluates
trained run folders as issue 19 asked — with and without test-time symmetry (``embed
--tta``), alone and combined with hand-crafted features (``cellprof combine``'s equal-variance
blocks), under every protocol, NSC/NSCB/mAP on both compound halves and overall, each setting
chosen on half a (``results_variants.json``; ``--docs`` writes the table);
``--protocols CKPT ...`` compares the ways of making treatment profiles (DMSO or all-cell
z-scores, mean or median) on each half of the compounds, to choose on one half and report
on the other; ``--mean-images`` draws mean held-out cells beside mean reconstructions.
``--train-cells N`` trains on a random subset, for how NSC grows with the training set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cellprof.formats.checkpoint import load_checkpoint
from cellprof.formats.store import read_cells, read_crops
from cellprof.learn.data import CropData, DataConfig, scale_crops
from cellprof.learn.device import Compute, cpu_model
from cellprof.learn.diagnostics import frame_report
from cellprof.learn.embed import encode_views
from cellprof.learn.model import ModelConfig, VAEPlus, model_config_of
from cellprof.learn.train import TrainConfig, initial_checkpoint, scaled_schedule, train
from cellprof.prepare.merge import merge_stores
from cellprof.prepare.singlecell import import_singlecell
from cellprof.profile.classic import classical_features
from cellprof.profile.match import MatchConfig, prepare
from cellprof.profile.retrieval import accuracy, retrieve

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "bbbc021"
CHANNELS = ("DNA", "Tubulin", "Actin")


# --- data ------------------------------------------------------------------------------
def stores(work: Path, train_cells: int | None = None) -> tuple[Path, Path, Path]:
    """(the 12-MOA store, the Week4 store, the merged training store), imported once.

    ``train_cells``: the training store holds only this many cells, drawn at random (seed 0)
    from both sources in proportion to their sizes; the 12-MOA and Week4 stores, which the
    evaluation reads, stay whole.
    """
    work.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("singlecell_moa", "singlecell"):
        out = work / f"{name}.h5"
        if not out.exists():
            import_singlecell(DATA / name, DATA / name / "metadata.csv", out,
                              moa=DATA / "BBBC021_v1_moa.csv", channels=CHANNELS)
        paths[name] = out
    if train_cells is None:
        sources, merged = [paths["singlecell"], paths["singlecell_moa"]], work / "train_all.h5"
    else:
        tables = {n: pd.read_csv(DATA / n / "metadata.csv")
                  for n in ("singlecell", "singlecell_moa")}
        total = sum(len(t) for t in tables.values())
        if not 2 <= train_cells <= total:
            raise SystemExit(f"--train-cells must be in 2..{total}, got {train_cells}")
        sources, merged = [], work / f"train_{train_cells}.h5"
        rng = np.random.default_rng(0)
        for name, t in tables.items():
            sub_store = work / f"{name}_{train_cells}.h5"
            if not sub_store.exists():
                take = t.iloc[np.sort(rng.choice(len(t), round(train_cells * len(t) / total),
                                                 replace=False))]
                take.to_csv(work / f"{name}_{train_cells}.csv", index=False)
                import_singlecell(DATA / name, work / f"{name}_{train_cells}.csv", sub_store,
                                  moa=DATA / "BBBC021_v1_moa.csv", channels=CHANNELS)
            sources.append(sub_store)
    if not merged.exists():
        merge_stores(sources, merged)
    return paths["singlecell_moa"], paths["singlecell"], merged


# --- evaluation ------------------------------------------------------------------------
def zscore_on_dmso(cells: pd.DataFrame, feats: np.ndarray) -> np.ndarray:
    """Each feature against all DMSO cells of the screen (mean, sample sd)."""
    ctrl = feats[(cells["Metadata_Compound"] == "DMSO").to_numpy()]
    sd = ctrl.std(axis=0, ddof=1)
    return (feats - ctrl.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)


def compound_halves(cells: pd.DataFrame) -> dict[str, str]:
    """Each compound's half, 'a' or 'b': within every MOA, compounds in name order alternate.

    For choosing settings without looking at the evaluation: a setting is chosen on the NSC
    of the queries of half 'a' (``nsc_a``) and reported on half 'b' (``nsc_b``). Both
    halves keep every treatment as a candidate neighbour, so each MOA keeps its compounds
    (some MOAs have only two).
    """
    t = cells[cells["Metadata_Compound"] != "DMSO"].drop_duplicates("Metadata_Compound")
    half = {}
    for _, group in t.sort_values("Metadata_Compound").groupby("Metadata_MOA"):
        for i, compound in enumerate(group["Metadata_Compound"]):
            half[compound] = "ab"[i % 2]
    return half


def zscore_on_all(cells: pd.DataFrame, feats: np.ndarray) -> np.ndarray:
    """Each feature against every cell of the screen (mean, sample sd)."""
    sd = feats.std(axis=0, ddof=1)
    return (feats - feats.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)


PROTOCOLS = {"dmso-mean": (zscore_on_dmso, "mean"), "dmso-median": (zscore_on_dmso, "median"),
             "all-mean": (zscore_on_all, "mean"), "all-median": (zscore_on_all, "median")}
"""Ways to turn cell features into treatment profiles; the benchmark's is ``dmso-mean``
(pycytominer's DMSO z-score, then means), the others are compared with ``--protocols``."""


def moa_metrics(cells: pd.DataFrame, feats: np.ndarray | list[np.ndarray],
                protocol: str = "dmso-mean", spread: bool = False) -> dict[str, float]:
    """NSC, NSCB (per treatment and per compound) and mAP of cell features (see module),
    and each over the queries of either compound half (:func:`compound_halves`).

    ``feats`` a list: blocks of features of the same cells (e.g. learned and hand-crafted),
    each scaled by the protocol on its own and concatenated, then weighed as ``cellprof
    match`` weighs a combined profile's blocks (:mod:`cellprof.profile.blocks`: equal total
    variance across the treatment profiles). ``spread``: each block also gives a block of
    its scaled features' absolute values, scaled again, whose treatment means measure how
    far its cells stray from the centre: a treatment's cell-to-cell spread beside its mean
    (a mixed or more variable population, which a mean of cells hides)."""
    scale, aggregate = PROTOCOLS[protocol]
    parts = [scale(cells, f) for f in (feats if isinstance(feats, list) else [feats])]
    if spread:
        parts += [scale(cells, np.abs(z)) for z in parts]
    z = np.concatenate(parts, axis=1)
    names = [f"F_{i:04d}" for i in range(z.shape[1])]
    edges = np.cumsum([0] + [f.shape[1] for f in parts])
    blocks = {f"block{b}": names[edges[b]:edges[b + 1]] for b in range(len(parts))} \
        if len(parts) > 1 else None
    meta = cells[[c for c in cells.columns if c.startswith("Metadata_")]].reset_index(drop=True)
    table = pd.concat([meta, pd.DataFrame(z, columns=names)], axis=1)
    treat, _ = prepare(table, MatchConfig(normalize="none", aggregate=aggregate), blocks)
    res = retrieve(treat, "cosine")
    nsc, nsc_c = accuracy(res, "nsc_correct")
    nscb, nscb_c = accuracy(res, "nscb_correct")
    half = res["Metadata_Compound"].map(compound_halves(cells))
    return {"nsc": nsc, "nsc_per_compound": nsc_c, "nscb": nscb, "nscb_per_compound": nscb_c,
            "map": float(res.loc[res["query"], "ap"].mean()), "n_treatments": len(treat),
            **{f"{k}_{h}": v for h in "ab" for k, v in (
                ("nsc", accuracy(res[half == h], "nsc_correct")[0]),
                ("nscb", accuracy(res[half == h], "nscb_correct")[0]),
                ("map", float(res.loc[res["query"] & (half == h), "ap"].mean())))}}


def chance(cells: pd.DataFrame) -> float:
    """Expected NSC of a neighbour drawn at random among other compounds' treatments."""
    t = cells[cells["Metadata_Compound"] != "DMSO"].drop_duplicates(
        ["Metadata_Compound", "Metadata_Concentration"])
    comp, moa = t["Metadata_Compound"].to_numpy(), t["Metadata_MOA"].to_numpy()
    shares = [np.mean(moa[comp != c] == m) for c, m in zip(comp, moa)]
    return float(np.mean(shares))


def _logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2
              ) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2 on weights, full-batch L-BFGS) on standardised x."""
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).long()
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * w.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    from scipy.stats import rankdata
    r = rankdata(scores)
    n1, n0 = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def cell_level(cells: pd.DataFrame, feats: np.ndarray,
               plates: tuple[str, str] = ("Week4_27801", "Week4_27821")) -> dict[str, float]:
    """Cell-level transfer between the two plates holding DMSO and cycloheximide: fit on one
    plate's cells, test on the other's, both ways. AUC of cycloheximide (any dose) against
    DMSO, and macro-F1 of the dose (DMSO, 5, 15, 50 uM; over the doses the test plate has)."""
    dose = cells["Metadata_Concentration"].to_numpy(float)
    doses = np.unique(dose[cells["Metadata_Plate"].isin(plates).to_numpy()])
    label = np.searchsorted(doses, dose)
    aucs, f1s = [], []
    for train_p, test_p in (plates, plates[::-1]):
        tr = (cells["Metadata_Plate"] == train_p).to_numpy()
        te = (cells["Metadata_Plate"] == test_p).to_numpy()
        mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-8
        xtr, xte = (feats[tr] - mu) / sd, (feats[te] - mu) / sd
        w, b = _logistic(xtr, (label[tr] > 0).astype(int), 2)
        aucs.append(_auc((xte @ w + b) @ np.array([-1.0, 1.0]), label[te] > 0))
        w, b = _logistic(xtr, label[tr], len(doses))
        pred, true = (xte @ w + b).argmax(1), label[te]
        f1 = []
        for c in np.unique(true):
            tp = np.sum((pred == c) & (true == c))
            f1.append(2 * tp / max(np.sum(pred == c) + np.sum(true == c), 1))
        f1s.append(float(np.mean(f1)))
    return {"cell_auc": float(np.mean(aucs)), "cell_dose_f1": float(np.mean(f1s))}


def load_model(checkpoint: Path) -> tuple[VAEPlus, dict]:
    ckpt = load_checkpoint(checkpoint)
    model = VAEPlus(model_config_of(ckpt))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def encode(model: VAEPlus, x: np.ndarray, batch: int = 256, tta: str = "none") -> np.ndarray:
    """Posterior means of model input ``x`` (already scaled), averaged over the views of
    ``tta`` as ``cellprof embed --tta`` averages them (:func:`encode_views`)."""
    return np.concatenate([encode_views(model.encoder, torch.from_numpy(x[i:i + batch]), tta)[0]
                           for i in range(0, len(x), batch)])


@torch.no_grad()
def reconstruct(model: VAEPlus, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(x[i:i + batch]))[0].numpy()
                           for i in range(0, len(x), batch)])


class Evaluator:
    """Everything a checkpoint is judged on, with the data loaded once."""

    def __init__(self, moa_store: Path, train_store: Path, seed: int,
                 week4_store: Path | None = None) -> None:
        self.cells = read_cells(moa_store)
        raw = read_crops(moa_store)
        self.x_moa = scale_crops(raw, "max")
        self.week4 = None
        if week4_store is not None:
            w4 = read_cells(week4_store)
            keep = w4["Metadata_Plate"].isin(["Week4_27801", "Week4_27821"]).to_numpy()
            self.week4 = (w4[keep].reset_index(drop=True),
                          scale_crops(read_crops(week4_store)[keep], "max"))
        data = CropData(train_store, DataConfig(), seed=seed)
        idx = data.val_indices()
        self.x_val = data.scaled(idx)

    def __call__(self, checkpoint: Path) -> dict[str, Any]:
        model, ckpt = load_model(checkpoint)
        out = moa_metrics(self.cells, encode(model, self.x_moa))
        if self.week4 is not None:
            out.update(cell_level(self.week4[0], encode(model, self.week4[1])))
        recon = reconstruct(model, self.x_val)
        frame = frame_report(recon, self.x_val)
        out.update(step=int(ckpt["step"]), val_mse=float(((recon - self.x_val) ** 2).mean()),
                   frame=frame.recon, frame_original=frame.original, frame_ratio=frame.ratio,
                   frame_worst_ring=frame.worst_ring)
        return out


# --- runs ------------------------------------------------------------------------------
def parse_sets(items: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``key=value`` overrides, split into ModelConfig, TrainConfig and DataConfig fields
    (``balance_by=Metadata_Compound,Metadata_Concentration`` for balanced batches)."""
    model_fields = set(ModelConfig.__dataclass_fields__)
    train_fields = set(TrainConfig.__dataclass_fields__)
    data_fields = set(DataConfig.__dataclass_fields__)
    m, t, d = {}, {}, {}
    for item in items:
        key, _, value = item.partition("=")
        parsed: Any = json.loads(value) if value[:1] in "[{0123456789-tfn" else value
        if key in model_fields:
            m[key] = parsed
        elif key in train_fields:
            t[key] = parsed
        elif key in data_fields:
            d[key] = parsed
        else:
            raise SystemExit(f"--set {item}: {key} is not a ModelConfig, TrainConfig or "
                             "DataConfig field")
    return m, t, d


def run(model: str, seed: int, steps: int, batch: int, curve_every: int, train_store: Path,
        out: Path, evaluate: Evaluator, model_set: dict, train_set: dict,
        data_set: dict | None = None) -> list[dict]:
    """Train one model segment by segment, evaluating at each curve point."""
    config = ModelConfig(variant=model, **model_set)
    if model == "vae-gan-progressive":
        # the budget's schedule, unless --set fixes it explicitly
        config = replace(scaled_schedule(steps, config),
                         **{k: v for k, v in model_set.items()
                            if k in ("warmup", "ramp_start", "ramp_length")})
    points = list(range(curve_every, steps, curve_every)) + [steps] if curve_every else [steps]
    tc = TrainConfig(steps=steps, batch_size=batch, seed=seed, log_every=25,
                     val_every=max(points[0], 100), image_every=points[-1],
                     checkpoint_every=10**9, device="cpu",
                     **{"precision": "auto", **train_set})  # bf16 where the CPU has it
    rows, t0 = [], time.perf_counter()
    for i, point in enumerate(points):
        train(train_store, out, model_config=None if i else config,
              config=replace(tc, steps=point), data_config=DataConfig(**(data_set or {})),
              resume=i > 0, overwrite=i == 0)
        ckpt = out / ("model.pt" if point == steps else "checkpoints/last.pt")
        shutil.copy(out / "checkpoints" / "last.pt", out / "checkpoints" / f"step{point}.pt")
        row = {"model": model, "seed": seed, **evaluate(ckpt),
               "train_min": (time.perf_counter() - t0) / 60}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)
        rows.append(row)
    return rows


# --- variants: symmetry, combined profiles, balanced batches, protocols ------------------
VARIANT_METRICS = ("nsc", "nscb", "map", "nsc_a", "nscb_a", "map_a", "nsc_b", "nscb_b",
                   "map_b")


def cached_features(checkpoint: Path, x: np.ndarray, tta: str) -> np.ndarray:
    """Posterior means of the 12-MOA cells by ``checkpoint`` under ``tta``, computed once
    and kept beside the checkpoint (``features_<tta>.npy``)."""
    path = checkpoint.parent / f"moa_features_{tta}.npy"
    if path.exists() and path.stat().st_mtime > checkpoint.stat().st_mtime:
        return np.load(path)
    feats = encode(load_model(checkpoint)[0], x, tta=tta).astype(float)
    np.save(path, feats)
    return feats


PIXELS = "mean pixels, 8-view"
"""The linear floor: each crop's 8 rotations and mirrors averaged, then 4x4-pixel block means
(17 x 17 x 3 = 867 numbers for a 68-px crop). A profile of it is the treatment's average cell
image; what a learned encoder adds must beat it, as it must beat random weights."""


def pixel_features(x: np.ndarray, block: int = 4) -> np.ndarray:
    """:data:`PIXELS` of scaled crops ``(n, C, H, W)``: the dihedral mean, block-averaged."""
    views = [np.rot90(x, k, axes=(2, 3)) for k in range(4)]
    sym = np.mean(views + [v[..., ::-1] for v in views], axis=0)
    n, c, h, w = sym.shape
    h, w = h - h % block, w - w % block
    sym = sym[:, :, :h, :w].reshape(n, c, h // block, block, w // block, block)
    return sym.mean(axis=(3, 5)).reshape(n, -1).astype(float)


def run_label(folder: Path) -> tuple[str, int]:
    """(profile name, seed) of a run folder ``<tag>_<model>_s<seed>``: the model and, for a
    balanced run, ``balanced``; a folder whose model.pt is an untrained checkpoint
    (:func:`initial_checkpoint`) is the untrained encoder, the floor every row must beat."""
    stem, _, seed = folder.name.rpartition("_s")
    tag, _, model = stem.partition("_")
    name = {"vae": "plain VAE", "vae-gan-progressive": "full model"}.get(model, model)
    ckpt = load_checkpoint(folder / "model.pt")
    if ckpt.get("status") == "untrained":
        return "untrained encoder", int(seed)
    balance = ckpt["data_config"].get("balance_by")
    return (f"{name}, balanced" if balance else name), int(seed)


SPREAD = ", with spread"
"""Profiles whose cell-to-cell spread stands beside their mean (``moa_metrics(spread=True)``)."""


def variants(work: Path, runs: list[Path], ttas: tuple[str, ...], docs: Path | None,
             spread: bool = False) -> None:
    """Every profile of issue 19 from trained runs (no training): each run's posterior
    means with and without test-time symmetry, alone and combined with hand-crafted
    features, under every normalisation protocol; the protocol and the symmetry are chosen
    on compound half a, the table reports halves a, b and all. ``spread``: also each
    profile with its cells' spread beside its mean (the last symmetry of ``ttas`` only,
    and hand-crafted features and mean pixels alike)."""
    moa_store, _, _ = stores(work)
    cells, raw = read_cells(moa_store), read_crops(moa_store)
    x = scale_crops(raw, "max")
    hand = classical_features(raw, CHANNELS).to_numpy().astype(float)
    rows: list[dict] = []
    pixels = pixel_features(x)
    for p in PROTOCOLS:
        rows.append({"profile": "hand-crafted", "protocol": p, "seed": None,
                     **moa_metrics(cells, hand, p)})
        rows.append({"profile": PIXELS, "protocol": p, "seed": None,
                     **moa_metrics(cells, pixels, p)})
        rows.append({"profile": PIXELS + " + hand-crafted", "protocol": p, "seed": None,
                     **moa_metrics(cells, [pixels, hand], p)})
        if spread:
            rows.append({"profile": "hand-crafted" + SPREAD, "protocol": p, "seed": None,
                         **moa_metrics(cells, hand, p, spread=True)})
            rows.append({"profile": PIXELS + SPREAD, "protocol": p, "seed": None,
                         **moa_metrics(cells, pixels, p, spread=True)})
    for folder in runs:
        name, seed = run_label(folder)
        for tta in ttas:
            feats = cached_features(folder / "model.pt", x, tta)
            suffix = "" if tta == "none" else f", TTA {tta}"
            for p in PROTOCOLS:
                rows.append({"profile": name + suffix, "protocol": p, "seed": seed,
                             **moa_metrics(cells, feats, p)})
                rows.append({"profile": name + suffix + " + hand-crafted", "protocol": p,
                             "seed": seed, **moa_metrics(cells, [feats, hand], p)})
                if spread and tta == ttas[-1]:
                    rows.append({"profile": name + suffix + SPREAD, "protocol": p,
                                 "seed": seed, **moa_metrics(cells, feats, p, spread=True)})
                    rows.append({"profile": name + suffix + SPREAD + " + hand-crafted",
                                 "protocol": p, "seed": seed,
                                 **moa_metrics(cells, [feats, hand], p, spread=True)})
        print(f"{folder.name}: done", flush=True)
    out = work / "results_variants.json"
    out.write_text(json.dumps({"date": str(date.today()), "machine": cpu_model(),
                               "cpus": os.cpu_count(), "runs": [str(r) for r in runs],
                               "rows": rows}, indent=1, default=str))
    text = variants_tables(rows)
    print(text)
    if docs is not None:
        _write_block(docs, "bbbc021_variants", (
            f"Measured {date.today()} on {cpu_model()} ({os.cpu_count()} cores), torch "
            f"{torch.__version__}; the runs of {', '.join(sorted({r.name for r in runs}))}; "
            "mean ± sd over seeds (n = runs).\n\n" + text))


def _mean_sd(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows], float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def half_a_score(rows: list[dict]) -> float:
    """What settings are chosen by: the mean over seeds of NSC, NSCB and mAP on compound
    half a. NSC alone moves in steps of 1/50 there (about 50 queries), so one metric would
    choose by a query or two; the three together are steadier."""
    return float(np.mean([np.mean([r[k] for r in rows]) for k in ("nsc_a", "nscb_a", "map_a")]))


def variants_tables(rows: list[dict]) -> str:
    """The protocol table (each protocol's half-a score and its NSC on halves a and b, per
    profile), the main table (each profile under the protocol its half a chose), and the
    best profile chosen on half a against hand-crafted features on half b and overall."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["profile"], r["protocol"]), []).append(r)
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    lines = ["Half-a score (mean of NSC, NSCB, mAP on half a) and NSC a / b of each protocol:",
             "", "| profiles | " + " | ".join(PROTOCOLS) + " | chosen on a |",
             "|---" * (2 + len(PROTOCOLS)) + "|"]
    chosen = {}
    for name in profiles:
        score = {p: half_a_score(groups[(name, p)]) for p in PROTOCOLS}
        chosen[name] = max(PROTOCOLS, key=lambda p: score[p])
        cells = [f"{score[p]:.3f} ({np.mean([r['nsc_a'] for r in groups[(name, p)]]):.3f} / "
                 f"{np.mean([r['nsc_b'] for r in groups[(name, p)]]):.3f})" for p in PROTOCOLS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {chosen[name]} |")
    head = ("| profiles | NSC | NSCB | mAP | NSC a | NSCB a | mAP a | NSC b | NSCB b | mAP b |",
            "|---" * 10 + "|")
    lines += ["", "Each profile under the protocol chosen on half a (mean ± sd over seeds):", "",
              head[0].replace("| profiles |", "| profiles | protocol |"), "|---" + head[1]]
    for name in profiles:
        got = groups[(name, chosen[name])]
        lines.append(f"| {name} (n={len(got)}) | {chosen[name]} | "
                     + " | ".join(_mean_sd(got, k) for k in VARIANT_METRICS) + " |")
    lines += ["", "Every profile under the benchmark's protocol (dmso-mean):", "", *head]
    for name in profiles:
        got = groups[(name, "dmso-mean")]
        lines.append(f"| {name} (n={len(got)}) | "
                     + " | ".join(_mean_sd(got, k) for k in VARIANT_METRICS) + " |")
    floors = ("hand-crafted", PIXELS, "untrained encoder")
    best = max((n for n in profiles if not n.startswith(floors)),
               key=lambda n: half_a_score(groups[(n, chosen[n])]))
    hand = groups[("hand-crafted", chosen["hand-crafted"])][0]
    got = groups[(best, chosen[best])]
    lines += ["", f"Best learned or combined profile on half a: **{best}** ({chosen[best]}); "
              f"against hand-crafted ({chosen['hand-crafted']}), mean ± sd over seeds:", "",
              "| | NSC | NSCB | mAP |", "|---|---|---|---|"]
    for part, suffix in (("half b", "_b"), ("overall", "")):
        diffs = [f"{np.mean([r[k + suffix] for r in got]) - hand[k + suffix]:+.3f} ± "
                 f"{np.std([r[k + suffix] for r in got], ddof=1) if len(got) > 1 else 0:.3f}"
                 for k in ("nsc", "nscb", "map")]
        lines.append(f"| {part}: difference | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def _write_block(docs: Path, name: str, text: str) -> None:
    """``text`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``docs``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text}\n{end}"
    doc = docs.read_text()
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    docs.write_text(doc)


def compare_protocols(work: Path, checkpoints: list[Path]) -> None:
    """NSC of every protocol on compound halves a and b: choose on a, report on b."""
    moa_store, _, _ = stores(work)
    cells, raw = read_cells(moa_store), read_crops(moa_store)
    x = scale_crops(raw, "max")
    feats = {"hand-crafted": classical_features(raw, CHANNELS).to_numpy().astype(float)}
    for path in checkpoints:
        feats[str(path)] = encode(load_model(path)[0], x).astype(float)
    print("| profiles | " + " | ".join(f"{p} a | {p} b" for p in PROTOCOLS) + " |")
    print("|---" * (1 + 2 * len(PROTOCOLS)) + "|")
    for name, f in feats.items():
        got = [moa_metrics(cells, f, p) for p in PROTOCOLS]
        print(f"| {name} | " + " | ".join(f"{m['nsc_a']:.3f} | {m['nsc_b']:.3f}" for m in got)
              + " |", flush=True)


def summarise(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows], float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def _asked_precision(sets: list[str], default: str) -> str:
    """The precision a ``--set precision=...`` asks for, else ``default``."""
    return next((s.split("=", 1)[1] for s in sets if s.startswith("precision=")), default)


def _precision(sets: list[str]) -> str:
    """The precision the runs train at: ``--set precision=...``, else what ``auto`` picks
    on this machine's CPU."""
    return Compute.of(torch.device("cpu"), _asked_precision(sets, "auto")).precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="vae,vae-gan,vae-gan-progressive")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="evaluate a checkpoint every N steps (first seed only); 0: at the end")
    ap.add_argument("--work", type=Path, default=Path("bench-moa"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a ModelConfig or TrainConfig field for every model")
    ap.add_argument("--train-cells", type=int, default=None,
                    help="train on this many of the 7,860 cells (a random subset), to see how "
                         "the profiles grow with the training set")
    ap.add_argument("--tag", default="", help="name of this configuration in the results")
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--docs", type=Path, default=None)
    ap.add_argument("--label", default="", help="model name in the results (default: the variant)")
    ap.add_argument("--report", nargs="+", default=None, metavar="RESULTS[=LABEL]",
                    help="only combine earlier results files (results*.json, or a run's "
                         "printed log) into a table, curve.png and --docs")
    ap.add_argument("--at-step", type=int, default=None,
                    help="with --report: the table's rows at this step (default: each run's last)")
    ap.add_argument("--mean-images", nargs="+", default=None, metavar="CHECKPOINT[=LABEL]",
                    help="only draw the mean held-out cell beside each checkpoint's mean "
                         "reconstruction into WORK/mean_images.png")
    ap.add_argument("--protocols", nargs="+", default=None, metavar="CHECKPOINT",
                    help="only compare the ways of making treatment profiles (PROTOCOLS) on "
                         "each compound half, for hand-crafted features and these checkpoints")
    ap.add_argument("--variants", nargs="+", default=None, metavar="RUN",
                    help="only evaluate trained run folders (TAG_MODEL_sSEED) with and without "
                         "test-time symmetry, alone and combined with hand-crafted features, "
                         "under every protocol (issue 19's table)")
    ap.add_argument("--tta", default="none,flips,dihedral",
                    help="with --variants: the symmetries to compare")
    ap.add_argument("--spread", action="store_true",
                    help="with --variants: also each profile with its cells' spread beside "
                         "its mean (the last --tta only)")
    args = ap.parse_args()
    if args.variants:
        variants(args.work, [Path(r) for r in args.variants], tuple(args.tta.split(",")),
                 args.docs, spread=args.spread)
        return
    if args.protocols:
        compare_protocols(args.work, [Path(p) for p in args.protocols])
        return
    if args.mean_images:
        _, _, train_store = stores(args.work)
        print(mean_images(train_store, args.mean_images, args.work / "mean_images.png"))
        return
    if args.report:
        report(args.report, args.work, args.docs, args.at_step)
        return
    if not (DATA / "singlecell_moa").is_dir():
        raise SystemExit(f"needs {DATA / 'singlecell_moa'} (the shared real data)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    moa_store, week4_store, train_store = stores(args.work, args.train_cells)
    model_set, train_set, data_set = parse_sets(args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: list[dict] = []
    cells = read_cells(moa_store)
    if args.baselines:
        ev0 = Evaluator(moa_store, train_store, seeds[0], week4_store)
        hand = classical_features(read_crops(moa_store), CHANNELS).to_numpy()
        w4 = ev0.week4
        w4_raw = read_crops(week4_store)[read_cells(week4_store)["Metadata_Plate"].isin(
            ["Week4_27801", "Week4_27821"]).to_numpy()]
        results.append({"model": "hand-crafted", "seed": None, **moa_metrics(cells, hand),
                        **cell_level(w4[0], classical_features(w4_raw, CHANNELS).to_numpy())})
        results.append({"model": "hand-crafted (max-normalised crops)", "seed": None,
                        **moa_metrics(cells, classical_features(
                            scale_crops(read_crops(moa_store), "max"), CHANNELS).to_numpy())})
        for seed in seeds:
            path = initial_checkpoint(args.work / f"untrained_{seed}.pt",
                                      ModelConfig(**model_set), CHANNELS, seed)
            results.append({"model": "untrained encoder", "seed": seed, **ev0(path)})
        results.append({"model": "chance", "seed": None, "nsc": chance(cells)})
        for r in results:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in r.items()}), flush=True)
    evaluators: dict[int, Evaluator] = {}  # the data read once per seed (its held-out split)
    for model in [m for m in args.models.split(",") if m]:
        for seed in seeds:
            if seed not in evaluators:
                evaluators[seed] = Evaluator(moa_store, train_store, seed, week4_store)
            ev = evaluators[seed]
            out = args.work / f"{args.tag or 'run'}_{model}_s{seed}"
            every = args.curve_every if seed == seeds[0] else 0
            for row in run(model, seed, args.steps, args.batch_size, every, train_store, out,
                           ev, model_set, train_set, data_set):
                results.append({**row, "tag": args.tag, "label": args.label,
                                "final": row["step"] == args.steps})
    (args.work / f"results{('_' + args.tag) if args.tag else ''}.json").write_text(
        json.dumps({"date": str(date.today()),
                    "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "steps": args.steps, "batch_size": args.batch_size,
                    "seeds": seeds, "set": args.set, "train_cells": args.train_cells,
                    "torch": torch.__version__,
                    "precision": _precision(args.set),
                    "results": results}, indent=1, default=str))
    print(table(results))


def curve_plot(results: list[dict], path: Path, baselines: dict[str, float]) -> Path:
    """NSC against training steps, one line per model (its curve seed), baselines dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = dict.fromkeys(r["model"] for r in results if "step" in r and r.get("curve"))
    for name in names:
        rows = sorted((r for r in results if r["model"] == name and r.get("curve")),
                      key=lambda r: r["step"])
        ax.plot([r["step"] for r in rows], [r["nsc"] for r in rows], marker="o", label=name)
    for (name, value), style in zip(baselines.items(), ("--", ":", "-.")):
        ax.axhline(value, color="grey", linestyle=style, label=name)
    ax.set_xlabel("training step (batch 32)")
    ax.set_ylabel("NSC (103 treatments)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("BBBC021 12-MOA benchmark: NSC along training")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _load(spec: str) -> tuple[list[dict], dict]:
    """Rows of a results file (``results*.json``) or of a run's printed log (one JSON row a
    line), optionally ``PATH=LABEL`` to name the model of every trained row, or
    ``PATH=vae:plain VAE,vae-gan-progressive:full model`` to name each variant."""
    path, _, label = spec.partition("=")
    text = Path(path).read_text()
    if path.endswith(".json"):
        run_ = json.loads(text)
        rows, meta = run_["results"], run_
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        meta = {}
    out = []
    for r in rows:
        tag = r.get("tag") or ""
        name = r.get("label") or (f"{r['model']} [{tag}]" if tag not in ("", "final")
                                  else r["model"])
        if label and "step" in r and r["model"] != "untrained encoder":
            # LABEL, or VARIANT:LABEL,VARIANT:LABEL for a file holding several models
            named = dict(p.split(":", 1) for p in label.split(",")) if ":" in label else None
            name = label if named is None else named.get(r["model"], name)
        out.append({**r, "model": name})
    return out, meta


def seeds_of(results: list[dict]) -> list[int]:
    """The integer seeds of the results, sorted (baselines have none)."""
    return sorted({r["seed"] for r in results if isinstance(r.get("seed"), int)})


def report(specs: list[str], out: Path, docs: Path | None, at_step: int | None) -> None:
    """Combine results into one table (rows at ``at_step``, else each run's last), curve.png
    and (optionally) the docs block."""
    results: list[dict] = []
    metas = []
    for spec in specs:
        rows, meta = _load(spec)
        results += rows
        if meta:
            metas.append(meta)
    # one row per (model, seed, step): a later file's baselines replace an earlier one's
    unique = {(r["model"], r.get("seed"), r.get("step")): r for r in results}
    results = list(unique.values())
    # a model's curve: the checkpoints of its first seed
    first: dict[str, int] = {}
    for r in results:
        if "step" in r and isinstance(r.get("seed"), int) and r["model"] != "untrained encoder":
            first.setdefault(r["model"], r["seed"])
            r["curve"] = r["seed"] == first[r["model"]]
    last = {}
    for r in results:
        if "step" in r and r["model"] != "untrained encoder":
            key = (r["model"], r["seed"])
            last[key] = max(last.get(key, 0), r["step"])
    for r in results:
        if "step" in r and r["model"] != "untrained encoder":
            r["final"] = r["step"] == (at_step or last[(r["model"], r["seed"])])
    base = {f"{r['model']} ({r['nsc']:.2f})": r["nsc"] for r in results
            if r["model"] in ("hand-crafted", "chance")}
    untrained = [r["nsc"] for r in results if r["model"] == "untrained encoder"]
    if untrained:
        base[f"untrained encoder ({np.mean(untrained):.2f})"] = float(np.mean(untrained))
    out.mkdir(parents=True, exist_ok=True)
    plot = curve_plot(results, out / "curve.png", base)
    text = table(results)
    print(text)
    print(f"curve: {plot}")
    if docs is not None:
        meta = metas[-1]
        # results written before the default became auto trained at fp32 unless asked
        precision = meta.get("precision") or _asked_precision(meta.get("set", []), "fp32")
        _write_block(docs, "bbbc021_moa", "\n".join([
            f"Measured {meta['date']} on {meta['cpus']} CPU cores ({meta['machine'] or 'x86_64'}), "
            f"torch {meta['torch']}, {precision}; {at_step or meta['steps']} steps x batch "
            f"{meta['batch_size']} "
            f"per run; seeds {', '.join(map(str, seeds_of(results)))}; "
            "mean ± sd over seeds (n = runs).", "", text, ""]))


def mean_images(train_store: Path, specs: list[str], path: Path, seed: int = 0,
                n: int = 400) -> Path:
    """Per channel, the mean of n held-out cells beside the mean of each model's
    reconstructions of them: a frame or stripes drawn on every cell stand out here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = CropData(train_store, DataConfig(), seed=seed)
    x = data.scaled(data.val_indices()[:n])
    cols = [("cells", x)]
    for spec in specs:
        ckpt, _, label = spec.partition("=")
        cols.append((label or Path(ckpt).parent.name, reconstruct(load_model(Path(ckpt))[0], x)))
    fig = Figure(figsize=(2.0 * len(cols), 6.4))
    FigureCanvasAgg(fig)
    for j, (name, images) in enumerate(cols):
        mean = images.mean(axis=0)
        for c, channel in enumerate(CHANNELS):
            ax = fig.add_subplot(len(CHANNELS), len(cols), c * len(cols) + j + 1)
            ax.imshow(mean[c], cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(name, fontsize=7)
            if j == 0:
                ax.set_ylabel(channel, fontsize=8)
    fig.suptitle(f"Mean of {len(x)} held-out cells and of their reconstructions", fontsize=9)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def table(results: list[dict]) -> str:
    lines = ["| profiles | NSC | NSC per compound | NSCB | mAP | cell AUC | cell dose F1 "
             "| held-out MSE | frame (ratio to cells) |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("final", True):
            groups.setdefault(r["model"], []).append(r)
    for name, rows in groups.items():
        # an untrained decoder's reconstructions (eval mode, initial batch-norm statistics)
        # say nothing; only its encoder is a baseline
        untrained = ("val_mse", "frame_ratio") if name == "untrained encoder" else ()
        cols = [summarise(rows, k) if k not in untrained and
                all(k in r and r[k] is not None for r in rows) else "–"
                for k in ("nsc", "nsc_per_compound", "nscb", "map", "cell_auc", "cell_dose_f1",
                          "val_mse", "frame_ratio")]
        lines.append(f"| {name} (n={len(rows)}) | " + " | ".join(cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
