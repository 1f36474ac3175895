"""Embedding throughput (cells/s) beside the bare encoder, and ``match`` on a large table.

Run by hand: ``python benchmarks/embed_throughput.py [--store crops.h5] [--batch-size 512]``.

1. *bare encoder*: the default (paper-size) encoder's forward pass on tensors already in
   memory, eval mode, no gradients;
2. *cellprof embed*: the whole command (read the store in chunk-aligned blocks, normalise,
   encode, write the profiles file), same model and batch size, with ``--precision fp32``
   and with ``auto`` (bf16 and channels-last where the hardware has bf16; batch norm folded
   into the convolutions either way). The bare fp32 encoder is what embed computed before
   those changes, so *auto / bare* is the speed-up over the old path, I/O included;
3. *cellprof match* on 10,000 treatments x 256 features (random profiles: timing only).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellprof.example.synth import SynthConfig, synthesize
from cellprof.formats.store import read_crops, read_info
from cellprof.learn.data import scale_crops
from cellprof.learn.embed import EmbedConfig, embed
from cellprof.learn.model import ModelConfig, VAEPlus
from cellprof.learn.train import initial_checkpoint
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.profile.match import MatchConfig, run_match


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--treatments", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            res = synthesize(tmp / "screen", SynthConfig(sites=3))
            store = tmp / "crops.h5"
            crop_screen(res.image_table, store, objects=res.object_table, config=CropConfig())
        info = read_info(store)
        # speed does not depend on the weights: a freshly initialised paper-size model
        ckpt = initial_checkpoint(tmp / "model.pt", ModelConfig(
            in_channels=len(info.channels), image_size=info.crop_size), info.channels)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}; store {info.n_cells} cells x "
              f"{len(info.channels)} x {info.crop_size}^2; batch {args.batch_size}")
        print(f"{'device':>6} {'bare fp32 encoder cells/s':>26} {'embed fp32 cells/s':>19} "
              f"{'embed auto cells/s':>19} {'auto / bare':>12}")
        for device in devices:
            model = VAEPlus(ModelConfig(in_channels=len(info.channels),
                                        image_size=info.crop_size)).to(device).eval()
            x = torch.from_numpy(scale_crops(read_crops(store, slice(0, args.batch_size)),
                                           "max")).to(device)
            with torch.no_grad():
                model.encode(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                reps = max(1, info.n_cells // args.batch_size)
                for _ in range(reps):
                    model.encode(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                bare = reps * len(x) / (time.perf_counter() - t0)
            whole = {}
            for precision in ("fp32", "auto"):  # auto: bf16 where the hardware has it
                t0 = time.perf_counter()
                embed(ckpt, store, tmp / f"profiles-{device}-{precision}.h5", config=EmbedConfig(
                    batch_size=args.batch_size, device=device, precision=precision))
                whole[precision] = info.n_cells / (time.perf_counter() - t0)
            print(f"{device:>6} {bare:>26.0f} {whole['fp32']:>19.0f} {whole['auto']:>19.0f} "
                  f"{whole['auto'] / bare:>12.2f}")

        rng = np.random.default_rng(0)
        n, moas = args.treatments, 12
        wells = pd.DataFrame(rng.normal(size=(n + 200, 256)),
                             columns=[f"f{i:03d}" for i in range(256)])
        wells.insert(0, "Metadata_Plate", [f"Week{i % 10}_{i % 40}" for i in range(n + 200)])
        wells.insert(1, "Metadata_Well", [f"W{i}" for i in range(n + 200)])
        wells.insert(2, "Metadata_Compound", [f"c{i // 3}" for i in range(n)] + ["DMSO"] * 200)
        wells.insert(3, "Metadata_Concentration", [float(i % 3) for i in range(n)] + [0.0] * 200)
        wells.insert(4, "Metadata_MOA", [f"moa{(i // 3) % moas}" for i in range(n)]
                     + ["DMSO"] * 200)
        t0 = time.perf_counter()
        run_match(wells, tmp / "report", MatchConfig(normalize="zscore"))
        print(f"match: {n} treatments x 256 features (NSC, NSCB, mAP, report): "
              f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
