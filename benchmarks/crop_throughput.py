"""Crop throughput (cells/s) beside the throughput of merely reading the same TIFFs.

Run by hand: ``python benchmarks/crop_throughput.py [--fields-per-well-site ...]``. It
synthesises a screen of at least 100 fields (1024 x 1024 px by default, so a field costs
about what a real one does), then times

1. reading every field's TIFFs as ``crop`` reads them (``fieldwork.load_field`` into a buffer
   kept between fields: the floor any cropper pays, at the fastest reading we have),
2. ``cellprof crop`` end to end (plan, read, crop, write the gzip-compressed HDF5 store), and
3. the same with ``--compression none`` (an uncompressed store),

each with 1 and with N workers, in ``--rounds`` rounds, and prints the median cells/s and
ratios crop / read, of wall time and of CPU time (workers included; each ratio taken within
one round). On a machine with as many cores as workers the wall ratio cannot fall below the
CPU ratio: the parent's share has no core of its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from cellprof.example.synth import SynthConfig, synthesize
from cellprof.prepare.crop import CropConfig, crop_screen, plan
from cellprof.prepare.fieldwork import WORKER_BUFFER, FieldTask, load_field
from cellprof.prepare.runner import ordered_map


def _read_field(task: FieldTask) -> int:
    return int(load_field(task, WORKER_BUFFER).shape[0])


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--field-size", type=int, default=1024)
    ap.add_argument("--cells-per-field", type=int, default=60)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        res = synthesize(tmp / "screen", SynthConfig(
            field_size=args.field_size, cells_per_field=args.cells_per_field, sites=args.sites))
        t_synth = time.perf_counter() - t0
        assert res.n_fields >= 100, f"only {res.n_fields} fields; raise --sites"
        fields, _, _ = plan(res.image_table, res.object_table, CropConfig())
        rows = []
        for workers in sorted({1, args.workers}):
            # Rounds of read, crop gzip, crop none: each ratio is taken within its round
            # (the machine's speed drifts between rounds), then the median over rounds.
            rounds: dict[str, list[tuple[float, ...]]] = {"gzip": [], "none": []}
            for _ in range(args.rounds):
                t0, c0 = time.perf_counter(), _cpu()
                for _ in ordered_map(_read_field, fields, workers):
                    pass
                t_read, c_read = time.perf_counter() - t0, _cpu() - c0
                for compression in ("gzip", "none"):
                    out = tmp / f"crops{workers}{compression}.h5"
                    t0, c0 = time.perf_counter(), _cpu()
                    summary = crop_screen(res.image_table, out, objects=res.object_table,
                                          config=CropConfig(compression=compression),
                                          workers=workers)
                    t_crop, c_crop = time.perf_counter() - t0, _cpu() - c0
                    n = summary.n_cells
                    rounds[compression].append((n / t_read, n / t_crop, t_crop / t_read,
                                                c_crop / c_read, out.stat().st_size / 2**20))
                    out.unlink()
            for compression, figures in rounds.items():
                med = np.median(np.array(figures), axis=0)
                spread = np.ptp(np.array(figures)[:, 2])
                rows.append((workers, compression, n, *med[:3], spread, *med[3:]))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"screen: {res.n_fields} fields of {args.field_size}x{args.field_size} px x 3 "
          f"channels (uint16, zlib), synthesised in {t_synth:.1f} s")
    print(f"medians of {args.rounds} rounds; 'range' is the crop/read ratio's max - min; "
          "'crop/read CPU' counts the workers' CPU seconds too")
    print(f"{'workers':>7} {'store':>6} {'cells':>7} {'read-only cells/s':>18} "
          f"{'crop cells/s':>13} {'crop/read time':>15} {'range':>6} {'crop/read CPU':>14} "
          f"{'store MiB':>10}")
    for w, comp, n, r, c, ratio, spread, cpu, mib in rows:
        print(f"{w:>7} {comp:>6} {n:>7} {r:>18.0f} {c:>13.0f} {ratio:>15.2f} {spread:>6.2f} "
              f"{cpu:>14.2f} {mib:>10.1f}")


if __name__ == "__main__":
    main()
