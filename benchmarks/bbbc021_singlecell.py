"""Real-data benchmark: the three VAE ablations and hand-crafted features on BBBC021 single cells.

Run by hand from the repository root (needs ../shared/data/bbbc021/singlecell)::

    python benchmarks/bbbc021_singlecell.py [--steps 500] [--batch-size 32] [--work DIR]
        [--models vae,vae-gan,vae-gan-progressive] [--small] [--docs docs/benchmarks.md]

Protocol (leave one plate out; every model at the same steps, batch, seed and data):

1. The 5,873 crops come from five Week4 plates; the plates holding both DMSO and
   cycloheximide (spelled ``cyclohexamide`` in the data; any concentration) are found from
   the metadata (Week4_27801 and Week4_27821). For each such plate P, two crop stores are
   imported from filtered copies of ``metadata.csv``: one without P (training) and one of
   P alone (test).
2. Each model (``vae``; ``vae-gan``, every feature-matching term at full weight from step
   0; ``vae-gan-progressive``, the paper's schedule compressed into the budget by
   :func:`cellprof.learn.train.scaled_schedule`) is trained on the store without P, holding out
   15% of its fields; its validation error on those fields (per-pixel MSE and ½·SSE per
   cell, on max-normalised crops) is reported as the mean over the runs of all held-out
   plates.
3. The trained encoder embeds P's cells (posterior means). The hand-crafted baseline,
   :func:`cellprof.profile.classic.classical_features`, measures the same crops (no training).
4. Cells -> sites (mean per plate, well, site = one field); each feature z-scored against
   P's DMSO sites (:func:`cellprof.profile.normalize.normalize`).
5. Cosine similarity between sites. **1-NN acc**: share of cycloheximide sites whose most
   similar other site is also cycloheximide; **mAP**: their mean average precision of
   retrieving the other cycloheximide sites among all other sites (DMSO sites are not
   queries, as in ``cellprof match``). The *all sites* columns make every site a query;
   there DMSO queries fail by construction: z-scored DMSO sites sum to zero, so they point
   away from each other (cosine ~ -1/3 for four sites). Both averaged over plates.

Prints the table and writes it, with the machine and the published anchors, between
``<!-- bbbc021_singlecell:start/end -->`` in ``docs/benchmarks.md`` (rest of the file kept).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellprof.formats.profiles import read_profiles
from cellprof.formats.store import read_cells, read_crops, read_info
from cellprof.learn.data import DataConfig
from cellprof.learn.device import cpu_model
from cellprof.learn.embed import EmbedConfig, embed
from cellprof.learn.model import VARIANTS, ModelConfig
from cellprof.learn.train import TrainConfig, initial_checkpoint, scaled_schedule, train
from cellprof.prepare.singlecell import import_singlecell
from cellprof.prepare.tables import COMPOUND, PLATE, SITE, WELL, canonical_columns, read_table
from cellprof.profile.aggregate import aggregate
from cellprof.profile.classic import classical_features
from cellprof.profile.normalize import normalize
from cellprof.profile.retrieval import average_precision, similarity_blocks

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "bbbc021"
START, END = "<!-- bbbc021_singlecell:start -->", "<!-- bbbc021_singlecell:end -->"
VAL_FRACTION = 0.15
# Rough training speed at batch 32 on a quiet 2-core CPU (measured; the plain VAE has no
# discriminator and runs ~3x faster); only used to print an estimate before starting.
CELLS_PER_S = {"vae": 135.0, "vae-gan": 45.0, "vae-gan-progressive": 45.0}
PUBLISHED = [  # ../shared/METHOD.md, "Published 1-NN MOA accuracies on BBBC021"
    ("plain VAE (Pawlowski, reported in the CytoGAN paper)", "49%", "–"),
    ("GANs: CytoGAN DCGAN / WGAN / LSGAN (Goldsborough et al. 2017)", "51 / 56 / 68%", "–"),
    ("CellProfiler features (Singh et al. 2014)", "90%", "–"),
    ("CellProfiler per-well means, per-plate DMSO z-score (cytominergallery vignette)",
     "82%", "–"),
    ("CellProfiler features + factor analysis (Ljosa et al. 2013)", "94%", "–"),
    ("**VAE+ (Lafarge et al. 2019)**", "**90%**", "not read"),
    ("transfer learning from ImageNet (Pawlowski et al. 2016)", "91%", "–"),
    ("DeepMetric + TVN (Ando et al. 2017)", "96%", "–"),
    ("unsupervised whole-image (Janssens et al. 2021)", "97%", "–"),
    ("WS-DINO (2022, weakly supervised)", "98%", "96%"),
]


@dataclass
class Row:
    """One line of the table: scores per held-out plate, validation error per run."""

    name: str
    scores: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    minutes: list[float] = field(default_factory=list)

    def mean(self, key: str) -> float:
        values = [s[key] for s in self.scores] if key in ("acc", "map", "acc_all", "map_all") \
            else [v[key] for v in self.val]
        return float(np.mean(values)) if values else float("nan")


def is_chx(compounds: pd.Series) -> np.ndarray:
    """Cycloheximide, however the table spells it (BBBC021: ``cyclohexamide``)."""
    return compounds.astype(str).str.lower().str.startswith("cyclohex").to_numpy()


def expected_ap(n: int, positives: int) -> float:
    """Average precision of a random ranking of ``n`` items, ``positives`` of them relevant:
    a given positive lands at rank i (uniform), with 1 + (P-1)(i-1)/(n-1) positives in the
    top i on average."""
    if positives == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(np.mean((1 + (positives - 1) * (i - 1) / max(n - 1, 1)) / i))


def separation(x: np.ndarray, chx: np.ndarray) -> dict[str, float]:
    """1-NN accuracy and mAP of sites ``x`` ``(n, D)`` labelled cycloheximide / DMSO (cosine),
    for cycloheximide queries and for every site as a query; and both at chance."""
    sim = np.vstack([block for _, block in similarity_blocks(x, "cosine")])
    np.fill_diagonal(sim, -np.inf)
    same = chx[:, None] == chx[None, :]
    correct = same[np.arange(len(x)), sim.argmax(axis=1)]
    others = ~np.eye(len(x), dtype=bool)
    ap = np.array([average_precision(sim[i][others[i]], same[i][others[i]])
                   for i in range(len(x))])
    pos = (same & others).sum(axis=1)
    chance_acc = pos / (len(x) - 1)
    chance_ap = np.array([expected_ap(len(x) - 1, int(p)) for p in pos])
    return {"acc": correct[chx].mean(), "map": np.nanmean(ap[chx]),
            "acc_all": correct.mean(), "map_all": np.nanmean(ap),
            "chance_acc": chance_acc[chx].mean(), "chance_map": np.nanmean(chance_ap[chx]),
            "chance_acc_all": chance_acc.mean(), "chance_map_all": np.nanmean(chance_ap),
            "n_sites": len(x), "n_chx": int(chx.sum())}


def site_scores(cells: pd.DataFrame, features: pd.DataFrame) -> dict[str, float]:
    """Cells -> site means -> z-score against the plate's DMSO sites -> :func:`separation`."""
    names = list(features.columns)
    table = pd.concat([cells.reset_index(drop=True), features.reset_index(drop=True)], axis=1)
    sites = aggregate(table, [PLATE, WELL, SITE], "mean", features=names)
    dmso = sites[COMPOUND].astype(str).str.upper().eq("DMSO").to_numpy()
    normed, dropped = normalize(sites, names, method="zscore", controls=dmso)
    x = normed[[c for c in names if c not in dropped]].to_numpy(np.float64)
    return separation(x, is_chx(sites[COMPOUND]))


def import_subset(rows: pd.DataFrame, name: str, work: Path) -> Path:
    """A crop store of these metadata rows (crop paths stay relative to the data folder)."""
    store = work / f"{name}.h5"
    if not store.exists():
        table = work / f"metadata_{name}.csv"
        rows.to_csv(table, index=False)
        import_singlecell(DATA / "singlecell", table, store, moa=DATA / "BBBC021_v1_moa.csv",
                          workers=2)
    return store


def model_config(variant: str, steps: int, small: bool) -> ModelConfig:
    size = dict(latent_dim=16, enc_filters=8, dec_filters=8, disc_channels=(8, 8, 8, 8, 1)) \
        if small else {}
    config = ModelConfig(variant=variant, **size)
    return scaled_schedule(steps, config) if variant == "vae-gan-progressive" else config


def train_and_score(variant: str, plate: str, stores: tuple[Path, Path], args: argparse.Namespace
                    ) -> tuple[dict[str, float], dict[str, float], float]:
    """Train on the store without ``plate``; score its embedding of ``plate``'s cells."""
    train_store, test_store = stores
    run = args.work / variant / f"without_{plate}"
    every = max(1, args.steps // 10)

    def progress(step: int, total: int, row: dict[str, float]) -> None:
        if step % every == 0 or step == total:
            print(f"    step {step}/{total}  loss {row.get('total', float('nan')):.4g}  "
                  f"{row.get('cells_per_s', 0.0):.0f} cells/s", flush=True)

    t0 = time.perf_counter()
    res = train(train_store, run, model_config=model_config(variant, args.steps, args.small),
                config=TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                   log_every=every, val_every=args.steps,
                                   image_every=args.steps, checkpoint_every=max(250, every)),
                data_config=DataConfig(val_fraction=VAL_FRACTION), overwrite=True,
                progress=progress)
    minutes = (time.perf_counter() - t0) / 60
    if res.status != "complete" or res.checkpoint is None:
        raise SystemExit(f"{run}: training was {res.status}; benchmark stopped")
    profiles = run / f"profiles_{plate}.h5"
    embed(res.checkpoint, test_store, profiles, config=EmbedConfig(batch_size=256),
          overwrite=True)
    cells, feats, names = read_profiles(profiles)
    return site_scores(cells, pd.DataFrame(feats, columns=names)), res.val, minutes


def machine() -> str:
    cpu = cpu_model()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
            f"{device}, torch {torch.__version__}")


def fmt(value: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def table_lines(rows: list[Row]) -> list[str]:
    head = ("| model | val MSE/pixel | val ½SSE/cell | 1-NN acc | mAP | 1-NN acc (all sites) "
            "| mAP (all sites) | train min/run |")
    lines = [head, "| " + " | ".join(["---"] * 8) + " |"]
    for r in rows:
        lines.append(f"| {r.name} | {fmt(r.mean('val_mse'), 5)} | {fmt(r.mean('val_pixel'), 2)} | "
                     f"{fmt(r.mean('acc'))} | {fmt(r.mean('map'))} | {fmt(r.mean('acc_all'))} | "
                     f"{fmt(r.mean('map_all'))} | "
                     f"{fmt(float(np.mean(r.minutes)) if r.minutes else float('nan'), 1)} |")
    return lines


def section(rows: list[Row], args: argparse.Namespace, plates: list[str], n_train: list[int],
            classic: Row, classic_s: float) -> str:
    cells = args.steps * args.batch_size
    arch = "reduced smoke-test model (`--small`)" if args.small else "paper architecture"
    per_plate = "; ".join(
        f"{p}: {int(s['n_sites'])} sites ({int(s['n_chx'])} cycloheximide)"
        for p, s in zip(plates, classic.scores))
    anchors = ["| method | NSC | NSCB |", "| --- | --- | --- |"] + \
        [f"| {m} | {a} | {b} |" for m, a, b in PUBLISHED]
    return "\n".join([
        START,
        "## BBBC021 single cells: VAE ablations against hand-crafted features",
        "",
        f"`python benchmarks/bbbc021_singlecell.py --steps {args.steps} --batch-size "
        f"{args.batch_size}{' --small' if args.small else ''}`, {date.today()}, on "
        f"{machine()}. Budget per model-run: {args.steps} steps × batch {args.batch_size} = "
        f"{cells:,} cells (~{cells / np.mean(n_train):.1f} passes over a training store's "
        f"{int(np.mean(n_train)):,} cells), seed {args.seed}, {arch}; the progressive "
        "schedule scaled to the budget (`scaled_schedule`).",
        "",
        "Leave one plate out over the plates holding both DMSO and cycloheximide "
        f"({', '.join(plates)}): each model is trained on the other four plates, embeds the "
        "held-out plate, cells are averaged per site (field), z-scored against that plate's "
        "DMSO sites, and sites are compared by cosine similarity. **1-NN acc**: share of "
        "cycloheximide sites whose most similar other site is cycloheximide; **mAP**: "
        "retrieving the other cycloheximide sites among all other sites (DMSO is not a "
        "query). *All sites*: every site a query; DMSO queries fail by construction there "
        "(z-scored DMSO sites sum to zero, so they point away from each other). Scores are "
        f"means over the held-out plates ({per_plate}). Validation error: per-pixel MSE and "
        f"½·SSE per cell on max-normalised crops of the {VAL_FRACTION:.0%} of training-store "
        "fields held out, mean over the leave-one-plate-out runs. "
        f"Hand-crafted features: `cellprof.profile.classic` ({classic_s:.0f} s for both plates). "
        "Caveat: each plate has one DMSO well, so label and well coincide.",
        "",
        *table_lines(rows),
        "",
        "Published 1-NN MOA accuracies on BBBC021 (treatment level, from ../shared/METHOD.md). "
        "**Published figures on the full 12-MOA set** (103 treatments, 55 plates, "
        "not-same-compound matching): not comparable one-to-one with the 2-class, 5-plate, "
        "site-level test above.",
        "",
        *anchors,
        END,
    ])


def write_section(path: Path, text: str) -> None:
    """Replace the text between the markers (or append it), keeping the rest of the file."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in old and END in old:
        before, rest = old.split(START, 1)
        new = before + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(new)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellprof-bbbc021-singlecell"))
    ap.add_argument("--models", default="vae,vae-gan,vae-gan-progressive")
    ap.add_argument("--small", action="store_true",
                    help="tiny networks, for smoke-testing the script only")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in VARIANTS]
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; "
                         f"choose from {', '.join(VARIANTS)}")
    if not (DATA / "singlecell").is_dir():
        raise SystemExit(f"needs {DATA / 'singlecell'} (../shared beside the repository)")
    args.work.mkdir(parents=True, exist_ok=True)

    meta = read_table(DATA / "singlecell" / "metadata.csv")
    canon = canonical_columns(meta)
    plate_of = canon[PLATE].astype(str).to_numpy()
    both = pd.DataFrame({"plate": plate_of, "chx": is_chx(canon[COMPOUND]),
                         "dmso": canon[COMPOUND].astype(str).str.upper().eq("DMSO")})
    flags = both.groupby("plate")[["chx", "dmso"]].any()
    plates = sorted(flags.index[flags["chx"] & flags["dmso"]])
    if not plates:
        raise SystemExit("no plate holds both DMSO and cycloheximide")
    stores = {p: (import_subset(meta[plate_of != p], f"without_{p}", args.work),
                  import_subset(meta[plate_of == p], p, args.work)) for p in plates}
    n_train = [read_info(s[0]).n_cells for s in stores.values()]
    runs = len(plates) * len(models)
    est = sum(args.steps * args.batch_size / CELLS_PER_S[m] / 60 for m in models) * len(plates)
    print(f"held-out plates: {', '.join(plates)}; {runs} training runs of {args.steps} steps x "
          f"batch {args.batch_size}" + ("" if args.small else
                                        f"; roughly {est:.0f} min of training on a quiet "
                                        "2-core CPU"), flush=True)

    classic = Row("hand-crafted features (`cellprof.profile.classic`)")
    t0 = time.perf_counter()
    for p in plates:
        test = stores[p][1]
        feats = classical_features(read_crops(test), read_info(test).channels)
        classic.scores.append(site_scores(read_cells(test), feats))
        print(f"  hand-crafted on {p}: 1-NN {classic.scores[-1]['acc']:.3f}  "
              f"mAP {classic.scores[-1]['map']:.3f}", flush=True)
    classic_s = time.perf_counter() - t0
    print(f"hand-crafted features: {classic_s:.0f} s", flush=True)

    rows = []
    for variant in models:
        row = Row(variant)
        for p in plates:
            print(f"  {variant}, holding out {p}", flush=True)
            scores, val, minutes = train_and_score(variant, p, stores[p], args)
            row.scores.append(scores)
            row.val.append(val)
            row.minutes.append(minutes)
            print(f"  {variant} on {p}: 1-NN {scores['acc']:.3f}  mAP {scores['map']:.3f}  "
                  f"val MSE {val['val_mse']:.5f}  {minutes:.1f} min", flush=True)
        rows.append(row)
    floor = Row("untrained encoder (random weights)")
    for p in plates:
        test = stores[p][1]
        info = read_info(test)
        config = ModelConfig.from_dict({**model_config("vae", args.steps, args.small).to_dict(),
                                        "in_channels": len(info.channels),
                                        "image_size": info.crop_size})
        ckpt = initial_checkpoint(args.work / "untrained.pt", config, info.channels,
                                  seed=args.seed)
        prof = args.work / f"untrained_{p}.h5"
        embed(ckpt, test, prof, config=EmbedConfig(batch_size=256), overwrite=True)
        cells, feats, names = read_profiles(prof)
        floor.scores.append(site_scores(cells, pd.DataFrame(feats, columns=names)))
    chance = Row("chance (random ranking)", scores=[
        {k: s[f"chance_{k}"] for k in ("acc", "map", "acc_all", "map_all")}
        for s in classic.scores])
    rows += [classic, floor, chance]

    text = section(rows, args, plates, n_train, classic, classic_s)
    print("\n".join(line for line in text.splitlines() if not line.startswith("<!--")))
    write_section(args.docs, text)
    print(f"\nwritten to {args.docs}")


if __name__ == "__main__":
    main()
