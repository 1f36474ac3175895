"""Profiles: one feature vector per cell, in HDF5, and as pycytominer-style tables.

Layout of a profiles file (``cellprof embed --out profiles.h5``)::

    /features         (N, D) float32   posterior mean of each cell (its profile)
    /logvar           (N, D) float32   posterior log-variance (only with --logvar)
    /cells/<column>   N rows           the crop store's per-cell metadata, same order
    attributes        format, schema_version, feature_names (JSON), checkpoint, store,
                      crop_scaling, model_config (JSON), n_done, complete, created

As tables, profiles follow pycytominer: ``Metadata_*`` columns first, then one column per
feature; everything that is not ``Metadata_`` is a feature unless named otherwise. Exported
tables (:func:`cellprof.profile.aggregate.export`) prefix CellProfiler's identifiers too (``Metadata_ImageNumber``,
``Metadata_ObjectNumber`` …), as CytoTable does, so pycytominer's
``aggregate(compute_object_count=True)`` and ``normalize`` keep them as metadata.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cellprof import __version__
from cellprof.errors import InputError, StoreError
from cellprof.formats.safeio import OutputLock, atomic_path, fingerprint_change, partial_path
from cellprof.formats.store import ColumnTable, column_kind

log = logging.getLogger("cellprof")

FORMAT = "cellprof-profiles"
SCHEMA_VERSION = 1
FEATURES, LOGVAR, CELLS = "features", "logvar", "cells"
META_KEYS = ("ImageNumber", "ObjectNumber", "TableNumber", "Location_Center_X",
             "Location_Center_Y", "Crop_Padded")


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Feature columns: everything but ``Metadata_*`` and CellProfiler's object keys."""
    return [c for c in table.columns if not str(c).startswith("Metadata_")
            and c not in META_KEYS and pd.api.types.is_numeric_dtype(table[c])]


def metadata_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if str(c).startswith("Metadata_")]


class ProfileWriter:
    """Fill ``<out>.partial`` in order, resumably; rename to ``out`` when complete.

    ``inputs`` is the fingerprint of the checkpoint and crop store
    (:func:`cellprof.formats.safeio.fingerprint`): a partial file made from other inputs is
    started over, with the reason logged, never continued. The writer holds the
    output's lock until :meth:`finish` or :meth:`close`.
    """

    def __init__(self, path: str | Path, cells: pd.DataFrame, feature_names: Sequence[str],
                 attrs: dict[str, Any], logvar: bool,
                 inputs: dict[str, Any] | None = None, resume: bool = True) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self._lock = OutputLock(self.path).acquire()
        try:
            self._open(cells, feature_names, attrs, logvar, inputs or {}, resume)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, cells: pd.DataFrame, feature_names: Sequence[str], attrs: dict[str, Any],
              logvar: bool, inputs: dict[str, Any], resume: bool) -> None:
        key = json.dumps(attrs, sort_keys=True, default=str)
        inputs_json = json.dumps(inputs, sort_keys=True, default=str)
        if resume and self.tmp.exists():
            why = self._resume(key, inputs_json)
            if why is None:
                return
            log.warning("%s: starting over: %s", self.tmp, why)
        self.tmp.unlink(missing_ok=True)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        f = self.file = h5py.File(self.tmp, "w")
        n, d = len(cells), len(feature_names)
        chunks = (min(max(n, 1), 1024), d)
        for name in (FEATURES, LOGVAR) if logvar else (FEATURES,):
            f.create_dataset(name, shape=(n, d), dtype=np.float32, chunks=chunks,
                             compression="gzip", compression_opts=1, shuffle=True)
        ColumnTable.create(f, CELLS, {c: column_kind(cells[c]) for c in cells.columns}
                           ).append(cells, 0)
        f.attrs.update(format=FORMAT, schema_version=SCHEMA_VERSION, run_key=key,
                       inputs=inputs_json,
                       feature_names=json.dumps(list(feature_names)), n_done=0,
                       complete=False, cellprof_version=__version__,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       **{k: json.dumps(v) if not isinstance(v, str) else v
                          for k, v in attrs.items()})
        f.flush()

    def _resume(self, key: str, inputs_json: str) -> str | None:
        """Reopen the partial file; None, or why it cannot be continued."""
        try:
            f = h5py.File(self.tmp, "a")
        except Exception as exc:  # noqa: BLE001 - torn files raise many types
            return f"the partial file cannot be opened ({type(exc).__name__})"
        saved = f.attrs.get("inputs")
        if f.attrs.get("format") != FORMAT:
            why: str | None = "it is not a partial profiles file"
        elif saved != inputs_json:
            why = (fingerprint_change(json.loads(saved), json.loads(inputs_json))
                   if saved else None) or "its inputs changed"
        elif f.attrs.get("run_key") != key:
            why = "it was written with other settings"
        else:
            self.file = f
            return None
        f.close()
        return why

    @property
    def n_done(self) -> int:
        return int(self.file.attrs["n_done"])

    def write(self, start: int, features: np.ndarray, logvar: np.ndarray | None = None) -> None:
        end = start + len(features)
        self.file[FEATURES][start:end] = features
        if logvar is not None and LOGVAR in self.file:
            self.file[LOGVAR][start:end] = logvar
        self.file.flush()
        self.file.attrs["n_done"] = end  # last, so a kill mid-write redoes this block
        self.file.flush()

    def finish(self) -> Path:
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.tmp, self.path)
        self._lock.release()
        return self.path

    def close(self) -> None:
        try:
            if self.file.id.valid:
                self.file.close()
        finally:
            self._lock.release()


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
