"""Real-data training run: the full VAE+ against the plain VAE on BBBC021 single cells.

Run by hand from the repository root (needs ../shared/data/bbbc021/singlecell)::

    python benchmarks/bbbc021_train.py [--steps 1500] [--batch-size 32] [--work DIR]

Imports the 5,873 real crops into a store, trains ``vae-gan-progressive`` (the paper's
model, schedule scaled to the budget) and ``vae`` with the same steps, batch, seed and
held-out fields, and prints each model's validation reconstruction error (per-pixel MSE
on max-normalised crops, and the paper's 1/2-sum-of-squares per cell) and wall time. The
final reconstruction grids are copied to ``docs/images/`` for docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from datetime import date
from pathlib import Path

import torch

from cellprof.learn.data import DataConfig
from cellprof.learn.model import ModelConfig
from cellprof.learn.train import TrainConfig, scaled_schedule, train
from cellprof.prepare.singlecell import import_singlecell

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "bbbc021"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellprof-bbbc021"))
    ap.add_argument("--models", default="vae-gan-progressive,vae")
    args = ap.parse_args()
    if not (DATA / "singlecell").is_dir():
        raise SystemExit(f"needs {DATA / 'singlecell'} (../shared beside the repository)")
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "bbbc021.h5"
    if not store.exists():
        import_singlecell(DATA / "singlecell", DATA / "singlecell" / "metadata.csv", store,
                          moa=DATA / "BBBC021_v1_moa.csv", workers=2)
    rows = []
    for variant in args.models.split(","):
        mcfg = ModelConfig(variant=variant)
        if variant == "vae-gan-progressive":
            mcfg = scaled_schedule(args.steps, mcfg)
        t0 = time.perf_counter()
        res = train(store, args.work / variant, model_config=mcfg,
                    config=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                       val_every=max(1, args.steps // 6),
                                       image_every=args.steps, checkpoint_every=250),
                    data_config=DataConfig(val_fraction=0.15), overwrite=True)
        minutes = (time.perf_counter() - t0) / 60
        grid = args.work / variant / "images" / f"recon_{args.steps:07d}.png"
        dest = ROOT / "docs" / "images" / f"bbbc021_recon_{variant}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, dest)
        rows.append((variant, res.val["val_mse"], res.val["val_pixel"], minutes, res.cells_per_s))
    print(f"BBBC021 single cells (5 Week4 plates, 15% of fields held out), {args.steps} steps x "
          f"batch {args.batch_size}; {platform.machine()} CPU, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {date.today()}")
    print(f"{'model':>20} {'val MSE/pixel':>14} {'val 1/2 SSE/cell':>17} {'minutes':>8} "
          f"{'cells/s':>8}")
    for v, mse, pix, mins, rate in rows:
        print(f"{v:>20} {mse:>14.5f} {pix:>17.2f} {mins:>8.1f} {rate:>8.1f}")


if __name__ == "__main__":
    main()
