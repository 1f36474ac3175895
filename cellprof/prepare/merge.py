"""``cellprof merge``: join crop stores cut in shards (e.g. one cluster job per plate).

Cropping parallelises across machines by plate (``cellprof crop --plates P``); training
wants one store. Merging copies the shards' crops a thousand at a time (read and written by
whole chunks on every core) and concatenates their cell, field and issue tables and
illumination functions, in the order given, all through the crop store's writer (memory:
about :data:`cellprof.formats.store.BATCH_BYTES` of crops). Shards must agree on channels,
crop size and pixel type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from cellprof.errors import InputError
from cellprof.formats import chunks, store
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
        for p in inputs:
            with store.open_store(p) as src:
                writer.add_rows(fields=ColumnTable(src[FIELDS]).read(),
                                issues=ColumnTable(src[ISSUES]).read())
                for lo, hi in store.blocks(0, src[CROPS].shape[0], store.CHUNK_CELLS * 16):
                    writer.add_rows(chunks.read_rows(src[CROPS], slice(lo, hi)),
                                    ColumnTable(src[CELLS]).read(slice(lo, hi)))
                    done += hi - lo
                    if progress:
                        progress("merge", done, total)
                for ds in src[store.ILLUMINATION].values():
                    writer.set_illumination(str(ds.attrs["plate"]), ds[()])
        summaries = [i.summary for i in infos]
        return writer.finish({"merged": len(inputs), "n_cells": total,
                              "shards": json.loads(json.dumps(summaries, default=str))})
    finally:
        writer.close()

