"""One-minute check of a machine for cellprof: is the GPU (or CPU) busy, or waiting?

Run: ``python benchmarks/gpu_check.py [--store crops.h5] [--steps 60] [--device auto]``.

Without ``--store`` it synthesises a small screen and crops it (68 px) first. Then it runs
the real ``cellprof train`` loop (paper-size model, batch 104, ``--precision auto``) and
``cellprof embed`` on that store, and prints:

- train cells/s (steady state, after the first steps), and the share of the loop's wall
  time spent waiting for batches (ideally a few per cent: more means the input pipeline,
  not the GPU, sets the pace);
- embed cells/s;
- peak memory: the GPU's (``torch.cuda.max_memory_allocated``) on CUDA, else the process's
  resident set.

It runs on the CPU too (slowly: give ``--steps 10``). Send the printed block with a bug
report about speed.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from cellprof.example.synth import SynthConfig, synthesize
from cellprof.formats.store import read_info
from cellprof.learn.data import DataConfig
from cellprof.learn.device import Compute, setup
from cellprof.learn.embed import EmbedConfig, embed
from cellprof.learn.model import ModelConfig
from cellprof.learn.train import TrainConfig, initial_checkpoint, train
from cellprof.prepare.crop import CropConfig, crop_screen


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB on the GPU"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{rss_kib / 2**20:.2f} GiB resident (CPU)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=104)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    device = setup(args.device).device
    compute = Compute.of(device, args.precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine())
    print(f"device {device} ({name}), precision {compute.precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            t0 = time.perf_counter()
            res = synthesize(tmp / "screen", SynthConfig())
            store = tmp / "crops.h5"
            crop_screen(res.image_table, store, objects=res.object_table, config=CropConfig())
            print(f"synthetic store: {read_info(store).n_cells} cells, made in "
                  f"{time.perf_counter() - t0:.0f} s")
        info = read_info(store)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm = max(2, args.steps // 6)
        run = train(store, tmp / "run", model_config=ModelConfig(ramp_start=1, ramp_length=1),
                    config=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                       device=args.device, precision=args.precision,
                                       log_every=1, val_every=10**9, image_every=10**9,
                                       checkpoint_every=10**9),
                    data_config=DataConfig(val_fraction=0.0), overwrite=True)
        log = pd.read_csv(tmp / "run" / "losses.csv").set_index("step")
        steady = (args.steps - warm) * args.batch_size / (
            log.loc[args.steps, "elapsed_s"] - log.loc[warm, "elapsed_s"])
        train_peak = peak_memory(device)
        ckpt = initial_checkpoint(tmp / "model.pt", ModelConfig(
            in_channels=len(info.channels), image_size=info.crop_size), info.channels)
        t0 = time.perf_counter()
        emb = embed(ckpt, store, tmp / "profiles.h5",
                    config=EmbedConfig(device=args.device, precision=args.precision))
        t_embed = time.perf_counter() - t0
    print(f"train: {steady:,.0f} cells/s (steps {warm}-{args.steps}, batch "
          f"{args.batch_size}); waiting for data {run.data_wait:.1%} of the loop's time")
    print(f"embed: {emb.cells_per_s:,.0f} cells/s ({info.n_cells} cells in {t_embed:.1f} s)")
    print(f"peak memory: {train_peak} while training")


if __name__ == "__main__":
    main()
