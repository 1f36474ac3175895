"""Profiles: one feature vector per cell, in HDF5, and as pycytominer-style tables.

Layout of a profiles file (``cellprof embed --out profiles.h5``)::

    /features         (N, D) float32   posterior mean of each cell (its profile)
    /logvar           (N, D) float32   posterior log-variance (only with --logvar)
    /cells/<column>   N rows           the crop store's per-cell metadata, same order
    attributes        format, schema_version, profile_kind, feature_names (JSON), store,
                      channels, checkpoint, crop_scaling, model_config (JSON), ...;
                      config and inputs (what a resume must match), n_done, complete,
                      created; a combined profile (``cellprof combine``) also has
                      feature_blocks (JSON: each feature's block name, in feature order)

As tables, profiles follow pycytominer: ``Metadata_*`` columns first, then one column per
feature; everything that is not ``Metadata_`` is a feature unless named otherwise. Exported
tables (:func:`cellprof.profile.aggregate.export`) prefix CellProfiler's identifiers too
(``Metadata_ImageNumber``, ``Metadata_ObjectNumber`` …), as CytoTable does, so pycytominer's
``aggregate(compute_object_count=True)`` and ``normalize`` keep them as metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cellprof.errors import InputError, StoreError
from cellprof.formats.partial import PartialFile
from cellprof.formats.safeio import atomic_path
from cellprof.formats.store import ColumnTable, column_kind

FORMAT = "cellprof-profiles"
SCHEMA_VERSION = 1
FEATURES, LOGVAR, CELLS = "features", "logvar", "cells"
RESERVED = frozenset({"format", "schema_version", "feature_names", "feature_blocks", "config",
                      "inputs", "n_done", "complete", "created", "cellprof_version"})
"""Attributes the writer sets itself; a caller's ``attrs`` may not name them."""
META_KEYS = ("ImageNumber", "ObjectNumber", "TableNumber", "Location_Center_X",
             "Location_Center_Y", "Crop_Padded")


def is_hdf5(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file (a profiles file rather than a CSV or Parquet table),
    told by its first bytes: every reader of profiles asks before choosing how to open it."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x89HDF"


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Feature columns: everything but ``Metadata_*`` and CellProfiler's object keys."""
    return [c for c in table.columns if not str(c).startswith("Metadata_")
            and c not in META_KEYS and pd.api.types.is_numeric_dtype(table[c])]


def metadata_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if str(c).startswith("Metadata_")]


class ProfileWriter:
    """Fill ``<out>.partial`` in order, resumably; rename to ``out`` when complete.

    ``inputs`` is the fingerprint of the checkpoint and crop store
    (:func:`cellprof.formats.safeio.fingerprint`): a partial file made from other inputs or
    with other settings (``attrs``, feature names, ``logvar``) is started over, with the
    reason logged, never continued. The partial file, its lock, resume (a torn file's
    committed rows copied into a fresh one) and final rename are
    :class:`~cellprof.formats.partial.PartialFile`'s, as for a crop store.
    ``feature_blocks`` names each feature's block (one name per feature) in a combined
    profile; ``match`` weighs the blocks equally (:mod:`cellprof.profile.blocks`).
    """

    def __init__(self, path: str | Path, cells: pd.DataFrame, feature_names: Sequence[str],
                 attrs: dict[str, Any], logvar: bool,
                 inputs: dict[str, Any] | None = None, resume: bool = True,
                 feature_blocks: Sequence[str] | None = None) -> None:
        reserved = sorted(set(attrs) & RESERVED)
        if reserved:
            raise ValueError(f"profile attributes {reserved} are the writer's own")
        names = list(feature_names)
        datasets = (FEATURES, LOGVAR) if logvar else (FEATURES,)
        blocks = None if feature_blocks is None else [str(b) for b in feature_blocks]
        if blocks is not None and len(blocks) != len(names):
            raise ValueError(f"{len(blocks)} feature blocks for {len(names)} features")

        def create(f: h5py.File) -> None:
            n, d = len(cells), len(names)
            chunks = (min(max(n, 1), 1024), d)
            for name in datasets:
                f.create_dataset(name, shape=(n, d), dtype=np.float32, chunks=chunks,
                                 compression="gzip", compression_opts=1, shuffle=True)
            ColumnTable.create(f, CELLS, {c: column_kind(cells[c]) for c in cells.columns}
                               ).append(cells, 0)
            f.attrs.update(schema_version=SCHEMA_VERSION, feature_names=json.dumps(names),
                           **{k: json.dumps(v) if not isinstance(v, str) else v
                              for k, v in attrs.items()})
            if blocks is not None:
                f.attrs["feature_blocks"] = json.dumps(blocks)

        config = {"attrs": attrs, "feature_names": names, "logvar": logvar,
                  "n_cells": len(cells)}
        if blocks is not None:  # only then, so earlier files' resume key is unchanged
            config["feature_blocks"] = blocks
        self.part = PartialFile(path, format=FORMAT, config=config, inputs=inputs,
                                counts=dict.fromkeys(datasets, "n_done"), create=create,
                                resume=resume)
        self.path, self.tmp, self.file = self.part.path, self.part.tmp, self.part.file

    @property
    def n_done(self) -> int:
        """Rows written and committed, from the first: a resume continues here."""
        return self.part.count("n_done")

    def write(self, start: int, features: np.ndarray, logvar: np.ndarray | None = None) -> None:
        """Write rows ``[start, start + len(features))`` and commit them (``start`` is
        :attr:`n_done`: rows are written in order)."""
        if start != self.n_done:
            raise ValueError(f"rows are written in order: {start} given, {self.n_done} done")
        end = start + len(features)
        self.file[FEATURES][start:end] = features
        if logvar is not None and LOGVAR in self.file:
            self.file[LOGVAR][start:end] = logvar
        self.part.commit(n_done=end)  # after the rows, so a kill mid-write redoes them

    def finish(self) -> Path:
        """Mark complete, close and rename durably to the final path."""
        return self.part.finish()

    def close(self) -> None:
        """Close without finishing (the ``.partial`` file stays for a resume)."""
        self.part.close()


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such profiles file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: not an HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT or not bool(f.attrs.get("complete", False)):
        f.close()
        raise StoreError(f"{path}: not a complete cellprof profiles file")
    return f


def read_profiles(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Per-cell metadata, features ``(N, D)`` float32 and feature names."""
    with _open(path) as f:
        return (ColumnTable(f[CELLS]).read(), f[FEATURES][()],
                json.loads(f.attrs["feature_names"]))


def profile_attrs(path: str | Path) -> dict[str, Any]:
    with _open(path) as f:
        return dict(f.attrs)


def profile_blocks(path: str | Path) -> dict[str, list[str]]:
    """Block name -> its feature names, in file order, of a combined profiles file; empty
    for a file of one kind (``embed``, ``measure``)."""
    with _open(path) as f:
        if "feature_blocks" not in f.attrs:
            return {}
        names = json.loads(f.attrs["feature_names"])
        blocks: dict[str, list[str]] = {}
        for name, block in zip(names, json.loads(f.attrs["feature_blocks"])):
            blocks.setdefault(block, []).append(name)
        return blocks


def profile_table(path: str | Path) -> pd.DataFrame:
    """A profiles file as one table: metadata columns, then features."""
    meta, feats, names = read_profiles(path)
    return pd.concat([meta, pd.DataFrame(feats, columns=names)], axis=1)


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``) atomically."""
    path = Path(path)
    if not path.name.endswith((".csv", ".csv.gz", ".parquet")):
        raise InputError(f"{path}: table format by suffix: .parquet, .csv or .csv.gz")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False,
                         compression="gzip" if path.name.endswith(".gz") else None)
    return path
