"""``cellprof merge``: join crop stores cut in shards (e.g. one cluster job per plate).

Cropping parallelises across machines by plate (``cellprof crop --plates P``); training
wants one store. Merging copies the shards' crops a thousand at a time (read and written by
whole chunks on every core) and concatenates their cell, field and issue tables and
illumination functions, in the order given, all through the crop store's writer (memory:
about :data:`cellprof.formats.store.BATCH_BYTES` of crops). Shards must agree on channels,
crop size and pixel type, and hold no cell twice (:func:`refuse_repeated_cells`): stores cut
from the same plates are refused before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats import chunks, store
from cellprof.formats.safeio import refuse_inputs, refuse_repeats
from cellprof.formats.schema import (
    IMAGE_NUMBER,
    OBJECT_NUMBER,
    PLATE,
    SITE,
    TABLE_NUMBER,
    WELL,
    merged_columns,
)
from cellprof.formats.store import CELLS, CROPS, FIELDS, ISSUES, ColumnTable, CropStoreWriter

CELL_IDENTITY = (PLATE, TABLE_NUMBER, IMAGE_NUMBER, OBJECT_NUMBER, WELL, SITE)
"""What makes a cell one cell: its plate, image (``TableNumber`` where the tables number
images per table) and object; well and site keep apart stores imported with
``--singlecell``, which number their fields from 1 each."""
KEY_BLOCK = 1 << 20
"""Cells whose identity is read at once (as text): bounds the memory of the check."""


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
    refuse_repeated_cells(inputs)
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



def refuse_repeated_cells(inputs: Sequence[str | Path]) -> None:
    """Raise :class:`InputError` when one cell (:data:`CELL_IDENTITY`) is in the stores more
    than once, with how many and an example.

    Two stores cut from the same plates (a shard beside the whole screen, a store copied
    under another name) would put their cells in twice: counted twice in their wells'
    profiles, and in training and held-out data at once. Each cell's identity is hashed to
    64 bits, 8 bytes a cell however many columns (a false alarm needs billions of cells).
    """
    columns = [c for c in CELL_IDENTITY if any(c in _cell_columns(p) for p in inputs)]
    hashes = [_identity_hashes(p, columns) for p in inputs]
    every = pd.Series(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
    repeated = every.duplicated().to_numpy()
    if not repeated.any():
        return
    owner = np.repeat(np.arange(len(inputs)), [len(h) for h in hashes])
    start = np.concatenate([[0], np.cumsum([len(h) for h in hashes])])
    again = int(np.flatnonzero(repeated)[0])
    first = int(np.flatnonzero((every == every[again]).to_numpy())[0])
    path = Path(inputs[owner[again]])
    key = _identity_text(path, columns, again - int(start[owner[again]]), again + 1
                         - int(start[owner[again]]))
    named = {PLATE: "plate", TABLE_NUMBER: "table", IMAGE_NUMBER: "image",
             OBJECT_NUMBER: "object"}
    example = ", ".join(f"{named[c]} {key[c].iloc[0]}" for c in named
                        if c in key and key[c].iloc[0] != "")
    earlier = Path(inputs[owner[first]])
    where = f"twice in {path}" if earlier == path else f"in {earlier} and in {path}"
    raise InputError(
        f"merge: {int(repeated.sum())} of {len(every)} cells are already in an earlier store "
        f"(e.g. {example}, {where}): these stores were cut from the same images; give each "
        "plate's cells once (leave out the store that repeats them)")


def _cell_columns(path: str | Path) -> list[str]:
    with store.open_store(path) as f:
        return ColumnTable(f[CELLS]).columns


def _identity_hashes(path: str | Path, columns: list[str]) -> np.ndarray:
    """One 64-bit hash per cell of its identity columns, read :data:`KEY_BLOCK` at a time."""
    n = store.read_info(path).n_cells
    out = np.empty(n, np.uint64)
    for lo in range(0, n, KEY_BLOCK):
        hi = min(n, lo + KEY_BLOCK)
        out[lo:hi] = pd.util.hash_pandas_object(_identity_text(path, columns, lo, hi),
                                                index=False).to_numpy()
    return out


def _identity_text(path: str | Path, columns: list[str], lo: int, hi: int) -> pd.DataFrame:
    """Cells ``lo:hi``'s identity columns as text ("" for a column the store lacks), a whole
    number written alike whether stored as int or float (a site ``1`` in one store and
    ``1.0`` in a store whose sites are floats)."""
    out = {}
    with store.open_store(path) as f:
        group = f[CELLS]
        for col in columns:
            if col not in group:
                out[col] = np.full(hi - lo, "", dtype=object)
                continue
            ds = group[col]
            values = pd.Series(ds.asstr()[lo:hi] if ds.attrs["kind"] == "str" else ds[lo:hi])
            if values.dtype.kind == "f":
                values = values.map(lambda v: str(int(v)) if np.isfinite(v) and v == int(v)
                                    else str(v))
            out[col] = values.astype(str).str.strip().to_numpy()
    return pd.DataFrame(out)
