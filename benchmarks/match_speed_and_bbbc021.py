"""MOA matching: the published BBBC021 baseline under each normalisation, and speed.

Run by hand from the repository root::

    python benchmarks/match_speed_and_bbbc021.py [--treatments 10000] [--features 256]

Part 1 (needs ../shared/data/bbbc021): Ljosa et al.'s CellProfiler per-well means, joined
to the image and moa tables, treatment means, for every ``--normalize`` and ``--metric``:
NSC and NSCB per treatment and per compound, and mAP. Per-plate DMSO z-score with cosine
is the published 0.82 baseline. Part 2: wall time of ``retrieve`` (NSC + NSCB + mAP in one
pass) and of a whole ``run_match`` from a well-level table, on random treatments.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellprof.profile.match import MatchConfig, load_profiles, run_match
from cellprof.profile.retrieval import retrieve

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bbbc021"


def bbbc021(work: Path) -> None:
    if not DATA.exists():
        print(f"skipping BBBC021: {DATA} not found")
        return
    table = load_profiles(DATA / "ljosa2013_per_well_mean.csv.gz",
                          image_table=DATA / "BBBC021_v1_image.csv.gz",
                          moa=DATA / "BBBC021_v1_moa.csv")
    print(f"{'normalize':9} {'metric':11} {'NSC':>6} {'NSC/cpd':>7} {'NSCB':>6} "
          f"{'NSCB/cpd':>8} {'mAP':>6}")
    for norm in ("none", "zscore", "robust", "sphere"):
        for metric in ("cosine", "correlation", "euclidean"):
            r = run_match(table, work / f"{norm}-{metric}",
                          MatchConfig(normalize=norm, metric=metric))
            print(f"{norm:9} {metric:11} {r.nsc:6.3f} {r.nsc_per_compound:7.3f} "
                  f"{r.nscb:6.3f} {r.nscb_per_compound:8.3f} {r.map:6.3f}")
    print(f"({r.n_treatments} treatments, {r.n_compounds} compounds, {r.n_moas} MOAs; "
          f"NSCB without {', '.join(r.nscb_excluded_moas)})\n")


def random_treatments(n: int, d: int, wells: int, seed: int = 0) -> pd.DataFrame:
    """``wells`` wells per treatment, 4 concentrations per compound, 20 MOAs, 10 batches."""
    rng = np.random.default_rng(seed)
    t = np.repeat(np.arange(n), wells)
    compound = t // 4
    plate = rng.integers(0, 40, len(t))
    meta = pd.DataFrame({"Metadata_Plate": [f"Week{p % 10}_{p}" for p in plate],
                         "Metadata_Well": [f"W{i}" for i in range(len(t))],
                         "Metadata_Compound": [f"c{c}" for c in compound],
                         "Metadata_Concentration": (t % 4 + 1) * 0.1,
                         "Metadata_MOA": [f"moa{c % 20}" for c in compound]})
    feats = rng.normal(size=(len(t), d)) + rng.normal(size=(20, d))[compound % 20]
    feats = pd.DataFrame(feats, columns=[f"f{i}" for i in range(d)])
    ctrl = pd.DataFrame({"Metadata_Plate": [f"Week{p % 10}_{p}" for p in range(40)
                                            for _ in range(4)],
                         "Metadata_Well": [f"D{i}" for i in range(160)],
                         "Metadata_Compound": "DMSO", "Metadata_Concentration": 0.0,
                         "Metadata_MOA": "DMSO"})
    ctrl = pd.concat([ctrl, pd.DataFrame(rng.normal(size=(160, d)), columns=feats.columns)],
                     axis=1)
    return pd.concat([pd.concat([meta, feats], axis=1), ctrl], ignore_index=True)


def speed(n: int, d: int, work: Path) -> None:
    wells = random_treatments(n, d, wells=3)
    t0 = time.perf_counter()
    result = run_match(wells, work / "speed", MatchConfig())
    total = time.perf_counter() - t0
    treat = pd.read_parquet(result.paths["profiles"])
    t0 = time.perf_counter()
    retrieve(treat, "cosine")
    search = time.perf_counter() - t0
    print(f"{n} treatments x {d} features ({len(wells)} wells): NSC+NSCB+mAP "
          f"{search:.1f} s; whole run_match {total:.1f} s (NSC {result.nsc:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--treatments", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bbbc021(Path(tmp))
        speed(args.treatments, args.features, Path(tmp))


if __name__ == "__main__":
    main()
