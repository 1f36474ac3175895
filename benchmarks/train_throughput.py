"""`cellprof train` as a whole command beside its training step alone, in one run.

Run by hand on an idle machine::

    python benchmarks/train_throughput.py [--store crops.h5] [--steps 150] [--batch-size 32]
        [--models vae-gan-progressive,vae] [--precision auto]

For each model:

1. *step alone*: the model :func:`cellprof.learn.train.train` builds (same config, the same
   :class:`~cellprof.learn.device.Compute`: precision, channels-last, autocast), stepping on two
   batches already on the device, through the same :func:`~cellprof.learn.losses.compute_losses`
   (the adaptive balance's extra gradient included) and the same optimisers, at the same step
   numbers as the command, so the schedule switches the same discriminator layers on. Its
   cells/s is the batch over the median step time.
2. *whole command*: ``cellprof train`` in a subprocess at its defaults but ``--steps``,
   ``--batch-size`` and ``--model`` (so it logs every 25 steps, validates every 500, draws
   pictures every 1000, checkpoints every 500, with the background loader, augmentation and
   the discriminator's second batch). Its cells/s is the median over ``losses.csv``'s log
   intervals (25 steps each), and beside it the whole run's cells/s from the first step to
   the last (validation and checkpoints included), and the wall time of the process
   (imports and start-up included).

The ratio whole / alone is what the command costs beyond its step (aim: >= 0.90). Prints the
CPU model, cores, torch and the precision with every figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellprof.example.synth import SynthConfig, synthesize
from cellprof.learn.data import CropData, DataConfig
from cellprof.learn.device import Compute, cpu_model
from cellprof.learn.losses import compute_losses
from cellprof.learn.model import ModelConfig, VAEPlus
from cellprof.learn.train import TrainConfig
from cellprof.prepare.crop import CropConfig, crop_screen


def step_alone(data: CropData, variant: str, batch: int, steps: int, precision: str
               ) -> tuple[float, list[float]]:
    """(cells/s over the median step, every step's seconds) of the bare training step."""
    torch.manual_seed(0)
    config = ModelConfig.from_dict({**ModelConfig(variant=variant).to_dict(),
                                    "in_channels": len(data.channels),
                                    "image_size": data.info.crop_size})
    compute = Compute.of(torch.device("cpu"), precision)
    model = compute.prepare(VAEPlus(config)).train()
    tc = TrainConfig()
    opt = torch.optim.Adam(model.vae_parameters(), lr=tc.lr)
    dopt = torch.optim.SGD(model.discriminator.parameters(), lr=tc.disc_lr,
                           momentum=tc.disc_momentum) if model.discriminator is not None else None
    x = compute.layout(torch.from_numpy(data.train_batch(0, batch)))
    xr = compute.layout(torch.from_numpy(data.train_batch(1, batch))) if dopt else None
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        with compute.autocast():
            losses = compute_losses(model, x, xr, step)
        opt.zero_grad(set_to_none=True)
        if dopt is not None:
            dopt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        if dopt is not None:
            dopt.step()
        float(losses["total"].detach())  # the step is done when its loss is
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times[3:])), times


def whole_command(store: Path, out: Path, variant: str, batch: int, steps: int,
                  precision: str) -> dict[str, float]:
    """Run ``cellprof train`` at its defaults; its cells/s from ``losses.csv``."""
    cmd = [sys.executable, "-m", "cellprof", "train", str(store), "--out", str(out),
           "--steps", str(steps), "--batch-size", str(batch), "--model", variant,
           "--precision", precision, "--overwrite"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    log = pd.read_csv(out / "losses.csv")
    log = log[log["total"].notna()].drop_duplicates("step")
    d_step, d_time = log["step"].diff().to_numpy()[1:], log["elapsed_s"].diff().to_numpy()[1:]
    rates = d_step * batch / d_time
    span = (log["step"].iloc[-1] - log["step"].iloc[0]) * batch / (
        log["elapsed_s"].iloc[-1] - log["elapsed_s"].iloc[0])
    return {"median": float(np.median(rates)), "span": float(span),
            "wall": steps * batch / wall, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="crop store (default: a synthetic one)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--models", default="vae-gan-progressive,vae")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rounds", type=int, default=3,
                    help="step alone, then the command, this many times (medians of ratios)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            res = synthesize(tmp / "screen", SynthConfig())
            store = tmp / "crops.h5"
            crop_screen(res.image_table, store, objects=res.object_table, config=CropConfig())
        data = CropData(store, DataConfig())
        precision = Compute.of(torch.device("cpu"), args.precision).precision
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), precision {args.precision} -> {precision}")
        print(f"store: {store} ({data.info.n_cells} cells, {data.info.crop_size} px); "
              f"batch {args.batch_size}, {args.steps} steps")
        print(f"{'model':>20} {'step alone':>11} {'command':>8} {'ratio':>6} "
              f"{'first-last':>11} {'wall':>6} {'wall s':>7}  (cells/s)")
        for variant in args.models.split(","):
            ratios = []
            for r in range(args.rounds):  # A B A B: this VM's speed drifts by ~10%
                alone, _ = step_alone(data, variant, args.batch_size, args.steps,
                                      args.precision)
                got = whole_command(store, tmp / f"run-{variant}", variant, args.batch_size,
                                    args.steps, args.precision)
                ratios.append(got["median"] / alone)
                print(f"{variant + f' #{r + 1}':>20} {alone:>11.1f} {got['median']:>8.1f} "
                      f"{ratios[-1]:>6.2f} {got['span']:>11.1f} {got['wall']:>6.1f} "
                      f"{got['wall_s']:>7.1f}", flush=True)
            print(f"{variant:>20} median ratio over {args.rounds} rounds: "
                  f"{float(np.median(ratios)):.2f}", flush=True)


if __name__ == "__main__":
    main()
