"""Training throughput (cells/s) of the full model, beside the bare forward/backward step.

Run by hand: ``python benchmarks/train_throughput.py [--store crops.h5] [--steps 30]``.

1. *bare step*: the default (paper-size) VAE+ on tensors already in memory: one forward,
   one backward, both optimiser steps — the floor for this device;
2. *cellprof train*: the real loop on a crop store (batch drawing, normalisation,
   augmentation, the independent real batch, logging), same model and batch size.

The ratio train / bare is the data pipeline's overhead (aim: <= 1.10). Both run on the
CPU, and on CUDA too when a GPU is present.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cellprof.example.synth import SynthConfig, synthesize
from cellprof.learn.data import CropData, DataConfig
from cellprof.learn.losses import compute_losses
from cellprof.learn.model import ModelConfig, VAEPlus
from cellprof.learn.train import TrainConfig, train
from cellprof.prepare.crop import CropConfig, crop_screen


def bare(device: str, batch: int, steps: int, data: CropData, variant: str) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant, in_channels=len(data.channels),
                      image_size=data.info.crop_size)
    model = VAEPlus(cfg).to(device)
    x = torch.from_numpy(data.train_batch(0, batch)).to(device)
    xr = torch.from_numpy(data.train_batch(1, batch)).to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x, xr = (t.to(memory_format=torch.channels_last) for t in (x, xr))
    opt = torch.optim.Adam(model.vae_parameters(), lr=1e-3)
    dopt = torch.optim.SGD(model.discriminator.parameters(), lr=1e-2, momentum=0.9) \
        if model.discriminator is not None else None
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else \
        torch.autocast("cpu", enabled=False)

    def step(i: int) -> None:
        with amp:
            losses = compute_losses(model, x, xr, 20_000)
        opt.zero_grad()
        if dopt:
            dopt.zero_grad()
        losses["total"].backward()
        opt.step()
        if dopt:
            dopt.step()

    for i in range(3):
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def looped(store: Path, device: str, batch: int, steps: int, tmp: Path, variant: str) -> float:
    warm = 3
    res = train(store, tmp / f"run-{device}-{variant}",
                model_config=ModelConfig(variant=variant, ramp_start=1, ramp_length=1),
                config=TrainConfig(steps=steps + warm, batch_size=batch, device=device,
                                   log_every=10_000, val_every=10_000, image_every=10_000,
                                   checkpoint_every=10_000),
                data_config=DataConfig(val_fraction=0.0), overwrite=True)
    # cells_per_s includes the warm-up steps; measure the steady state from the log instead
    return res.cells_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="crop store (default: a synthetic one)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            res = synthesize(tmp / "screen", SynthConfig())
            store = tmp / "crops.h5"
            crop_screen(res.image_table, store, objects=res.object_table, config=CropConfig())
        data = CropData(store, DataConfig())
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
              + (f"GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available()
                 else "no GPU"))
        print(f"store: {store} ({data.info.n_cells} cells, {data.info.crop_size} px, "
              f"{len(data.channels)} channels); batch {args.batch_size}, {args.steps} steps")
        print(f"{'device':>6} {'model':>20} {'bare cells/s':>13} {'train cells/s':>14} "
              f"{'overhead':>9}")
        for device in devices:
            for variant in ("vae-gan-progressive", "vae"):
                b = bare(device, args.batch_size, args.steps, data, variant)
                t = looped(store, device, args.batch_size, args.steps, tmp, variant)
                print(f"{device:>6} {variant:>20} {b:>13.1f} {t:>14.1f} {b / t:>9.2f}")


if __name__ == "__main__":
    main()
