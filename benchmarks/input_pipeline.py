"""The training input pipeline alone, and under a model step that takes a fixed time.

Run by hand: ``python benchmarks/input_pipeline.py --store crops.h5 [--rounds 3]``.

Prints, for an in-memory store and the same store streamed from its gzip chunks:

1. *loader crops/s*: :class:`cellprof.learn.loader.Loader` delivering normalised, augmented
   float32 tensors on the CPU device, both batches of a step (the autoencoder's and the
   discriminator's), batch 104; beside it the old path (numpy ``train_batch`` +
   ``disc_batch`` on the main thread).
2. *fast model*: the training loop with the model step replaced by a fixed wait (5 ms by
   default, a GPU-sized step that leaves the CPU free, as a GPU would) — the share of wall
   time the loop spends waiting for data.

Configurations alternate round by round (A B A B ...) and medians are printed, so the
ratios hold when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cellprof.learn.data import CropData, DataConfig
from cellprof.learn.loader import Loader

CPU = torch.device("cpu")


def loader_rate(data: CropData, batch: int, steps: int, start: int) -> float:
    with Loader(data, batch, range(start, start + steps), CPU, disc=True) as batches:
        t0 = time.perf_counter()
        for _ in batches:
            pass
        return 2 * batch * steps / (time.perf_counter() - t0)


def numpy_rate(data: CropData, batch: int, steps: int, start: int) -> float:
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        data.train_batch(s, batch)
        data.disc_batch(s, batch)
    return 2 * batch * steps / (time.perf_counter() - t0)


def fast_model_wait(data: CropData, batch: int, steps: int, start: int, step_s: float) -> float:
    # a GPU-sized step that leaves the CPU free: the loader a GPU run gets (a thread, ahead=1;
    # on the CPU device the default makes batches on the loop's thread)
    with Loader(data, batch, range(start, start + steps), CPU, disc=True, ahead=1) as batches:
        t0 = time.perf_counter()
        for _ in batches:
            time.sleep(step_s)
        wall = time.perf_counter() - t0
        return batches.wait_s / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=104)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step-ms", type=float, default=5.0)
    args = ap.parse_args()
    stores = {"in memory": CropData(args.store, DataConfig(val_fraction=0.0)),
              "streamed (gzip)": CropData(args.store, DataConfig(val_fraction=0.0,
                                                                 memory_limit_gb=1e-9))}
    print(f"{args.store}: {stores['in memory'].info.n_cells} cells, "
          f"{stores['in memory'].info.crop_size} px, batch {args.batch} (x2 per step), "
          f"{torch.get_num_threads()} torch threads")
    figures: dict[tuple[str, str], list[float]] = {}
    start = 0
    for _ in range(args.rounds):
        for name, data in stores.items():
            for what, rate in (
                    ("loader crops/s", loader_rate(data, args.batch, args.steps, start)),
                    ("numpy main-thread crops/s", numpy_rate(data, args.batch, args.steps, start)),
                    (f"data wait, {args.step_ms:g} ms step", fast_model_wait(
                        data, args.batch, args.steps, start, args.step_ms / 1000))):
                figures.setdefault((name, what), []).append(rate)
            start += args.steps  # fresh cells each round (a streamed store rereads)
    print("| store | loader crops/s | numpy on the main thread, crops/s | ratio | "
          f"data wait share, {args.step_ms:g} ms model step |")
    print("| --- | --- | --- | --- | --- |")
    for name in stores:
        new = statistics.median(figures[(name, "loader crops/s")])
        old = statistics.median(figures[(name, "numpy main-thread crops/s")])
        wait = statistics.median(figures[(name, f"data wait, {args.step_ms:g} ms step")])
        print(f"| {name} | {new:,.0f} | {old:,.0f} | {new / old:.2f} | {wait:.0%} |")


if __name__ == "__main__":
    main()
