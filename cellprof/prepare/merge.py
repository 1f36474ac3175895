"""``cellprof merge``: join crop stores cut in shards (e.g. one cluster job per plate).

Cropping parallelises across machines by plate (``cellprof crop --plates P``); training
wants one store. Merging copies the shards' crops chunk by chunk (memory: one chunk) and
concatenates their cell, field and issue tables and illumination functions, in the order
given. Shards must agree on channels, crop size and pixel type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from cellprof.formats import store
from cellprof.errors import InputError
from cellprof.formats.safeio import refuse_inputs, refuse_repeats
from cellprof.formats.schema import merged_columns
from cellprof.formats.store import CELLS, CROPS, FIELDS, ISSUES, ColumnTable, CropStoreWriter


def merge_stores(inputs: Sequence[str | Path], out: str | Path, *, overwrite: bool = False,
                 progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Concatenate complete crop stores into ``out`` (atomically)."""
    out = Path(out)
    if len(inputs) < 1:
        raise InputError("merge needs at least one crop store")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    refuse_inputs(out, inputs)
    refuse_repeats(inputs, "merge")
    infos = [store.read_info(p) for p in inputs]
    first = infos[0]
    for info in infos[1:]:
        if (info.channels, info.crop_size, info.dtype) != (first.channels, first.crop_size,
                                                           first.dtype):
            raise InputError(
                f"{info.path}: channels {', '.join(info.channels)} at {info.crop_size} px "
                f"({info.dtype}) do not match {first.path}: {', '.join(first.channels)} at "
                f"{first.crop_size} px ({first.dtype})")
    layouts, compressed = [], []
    for p in inputs:
        with store.open_store(p) as f:
            layouts.append(tuple({c: f[t][c].attrs["kind"] for c in ColumnTable(f[t]).columns}
                                 for t in (CELLS, FIELDS)))
            compressed.append(f[CROPS].compression is not None)
    cell_kinds = merged_columns(cells for cells, _ in layouts)
    field_kinds = merged_columns(fields for _, fields in layouts)
    writer = CropStoreWriter(
        out, channels=first.channels, crop_size=first.crop_size, dtype=first.dtype,
        cell_columns=cell_kinds, field_columns=field_kinds, resume=False,
        # Shards cropped with --compression none merge uncompressed; any compressed shard
        # makes the whole store gzip, the default.
        compression="gzip" if any(compressed) else "none",
        config={"mode": "merge", "inputs": [str(Path(p).resolve()) for p in inputs],
                "sources": [i.config for i in infos]})
    total = sum(i.n_cells for i in infos)
    done = 0
    try:
        f = writer.file
        for p in inputs:
            with store.open_store(p) as src:
                n0 = int(f.attrs["n_cells"])
                n = src[CROPS].shape[0]
                f[CROPS].resize((n0 + n,) + f[CROPS].shape[1:])
                step = store.CHUNK_CELLS * 16
                for lo in range(0, n, step):
                    f[CROPS][n0 + lo:n0 + min(lo + step, n)] = src[CROPS][lo:lo + step]
                    done += min(step, n - lo)
                    if progress:
                        progress("merge", done, total)
                ColumnTable(f[CELLS]).append(ColumnTable(src[CELLS]).read(), n0)
                nf = ColumnTable(f[FIELDS]).append(ColumnTable(src[FIELDS]).read(),
                                                   int(f.attrs["n_fields"]))
                ni = ColumnTable(f[ISSUES]).append(ColumnTable(src[ISSUES]).read(),
                                                   int(f.attrs["n_issues"]))
                f.attrs.update(n_cells=n0 + n, n_fields=nf, n_issues=ni)
                for ds in src[store.ILLUMINATION].values():
                    writer.set_illumination(str(ds.attrs["plate"]), ds[()])
        summaries = [i.summary for i in infos]
        return writer.finish({"merged": len(inputs), "n_cells": total,
                              "shards": json.loads(json.dumps(summaries, default=str))})
    finally:
        writer.close()

