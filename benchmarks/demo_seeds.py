"""What `cellprof demo` prints across training seeds, for the default model, the plain VAE
and an untrained encoder: is its headline one a newcomer can trust?

Run by hand on an idle machine::

    python benchmarks/demo_seeds.py [--seeds 0,1,2] [--models vae-gan-progressive,vae]
        [--steps N] [--set key=value ...] [--work DIR]

Each run is the whole demo (:func:`cellprof.example.demo.run_demo`) on the default screen,
changing only the training seed (and the model); the untrained rows are the demo's own
baseline (the same crops embedded with the first model's initial weights of that seed,
matched the same way). Prints NSC, NSCB, mAP and held-out reconstruction error per run,
mean ± sd per model, the spread (max - min) of NSC, and each run's minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cellprof.example.config import DemoConfig
from cellprof.example.demo import run_demo
from cellprof.learn.config import ModelConfig


def mean_sd(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows], float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="vae-gan-progressive,vae")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a DemoConfig field (steps, batch_size, ...) for every run")
    ap.add_argument("--synth", action="append", default=[], metavar="KEY=VALUE",
                    help="a SynthConfig field of the demo's screen (effect_scale, ...)")
    ap.add_argument("--work", type=Path, default=Path("bench-demo"))
    args = ap.parse_args()
    base = DemoConfig()
    for item in args.set:
        key, _, value = item.partition("=")
        base = replace(base, **{key: json.loads(value)})
    for item in args.synth:
        key, _, value = item.partition("=")
        base = replace(base, synth=replace(base.synth, **{key: json.loads(value)}))
    if args.steps:
        base = replace(base, steps=args.steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, baselines = [], []
    for i, model in enumerate(args.models.split(",")):
        for seed in seeds:
            config = replace(base, train_seed=seed, model=ModelConfig(variant=model),
                             baseline=base.baseline and i == 0)
            t0 = time.perf_counter()
            res = run_demo(args.work / f"{model}_s{seed}", force=True, config=config)
            row = {"model": model, "seed": seed, "nsc": res.report.nsc, "nscb": res.report.nscb,
                   "map": res.report.map, "val_mse": res.training.val.get("val_mse"),
                   "min": (time.perf_counter() - t0) / 60}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if res.baseline is not None:
                baselines.append({"model": "untrained", "seed": seed, "nsc": res.baseline.nsc,
                                  "nscb": res.baseline.nscb, "map": res.baseline.map,
                                  "val_mse": (res.baseline_error or {}).get("val_mse")})
                print(json.dumps(baselines[-1]), flush=True)
    rows += baselines
    print(f"\ndemo: {base.steps} steps x {base.batch_size}, {base.crop_size}-px crops, "
          f"{base.synth.moas} MOAs x {base.synth.compounds_per_moa} compounds x 2 doses; "
          f"seeds {seeds}")
    print("| model | NSC | NSCB | mAP | NSC range | held-out MSE | minutes |\n"
          "|---|---|---|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in rows):
        got = [r for r in rows if r["model"] == model]
        nsc = [r["nsc"] for r in got]
        mins = (f"{min(r['min'] for r in got):.1f}–{max(r['min'] for r in got):.1f}"
                if "min" in got[0] else "–")
        print(f"| {model} | {mean_sd(got, 'nsc')} | {mean_sd(got, 'nscb')} | "
              f"{mean_sd(got, 'map')} | "
              f"{min(nsc):.2f}–{max(nsc):.2f} | {mean_sd(got, 'val_mse')} | {mins} |")


if __name__ == "__main__":
    main()
