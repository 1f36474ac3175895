"""Does bf16 training cost reconstruction quality? fp32 and bf16 at the same fixed budget.

Run by hand: ``python benchmarks/precision_quality.py --store crops.h5 [--steps 500]
[--batch-size 32]``.

Trains the full model (``vae-gan-progressive``, paper size, the schedule scaled to the
budget) twice with the same seed, data and steps, once per precision, and prints each
run's held-out reconstruction error (per-pixel MSE and ½·SSE per cell on the store's held-
out fields, evaluated in float32 for both), its training cells/s, and the bf16/fp32
ratios. The issue's bar: held-out error within 5% of fp32's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from cellprof.learn.data import DataConfig
from cellprof.learn.model import ModelConfig
from cellprof.learn.train import TrainConfig, scaled_schedule, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            res = train(args.store, Path(tmp) / precision,
                        model_config=scaled_schedule(args.steps, ModelConfig()),
                        config=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                           precision=precision, log_every=10**9,
                                           val_every=10**9, image_every=10**9,
                                           checkpoint_every=10**9),
                        data_config=DataConfig(val_fraction=0.15))
            results[precision] = res
    print(f"{args.store}, {args.steps} steps x batch {args.batch_size}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("| precision | held-out MSE/pixel | held-out ½SSE/cell | train cells/s |")
    print("| --- | --- | --- | --- |")
    for p, r in results.items():
        print(f"| {p} | {r.val['val_mse']:.5f} | {r.val['val_pixel']:.2f} | "
              f"{r.cells_per_s:.1f} |")
    a, b = results["fp32"], results["bf16"]
    print(f"| bf16 / fp32 | {b.val['val_mse'] / a.val['val_mse']:.3f} | "
          f"{b.val['val_pixel'] / a.val['val_pixel']:.3f} | "
          f"{b.cells_per_s / a.cells_per_s:.2f} |")


if __name__ == "__main__":
    main()
