"""The crop store: one HDF5 file of single-cell crops and their metadata.

This is the only module that names HDF5 datasets, so the layout lives in one place
(documented for users in ``docs/formats.md``)::

    /crops                  (N, C, H, W) raw intensities (source dtype; float32 when
                            illumination-corrected), chunked 64 cells a chunk, gzip level
                            1 + shuffle (or, with ``crop --compression none``, uncompressed)
    /cells/<column>         N-long 1-D datasets, one per metadata column (Metadata_Plate,
                            Metadata_Well, ..., ImageNumber, ObjectNumber, Location_Center_X/Y)
    /fields/<column>        one row per field (image) that was processed: its metadata,
                            file names, per-channel intensity statistics and counts
    /issues/<column>        one row per reported problem: kind, file, row, reason
    /illumination/<plate>   (C, H, W) float32 illumination function, when estimated
    attributes of /         format, schema_version, channels, crop_size, config (JSON),
                            cellprof_version, created, complete, summary (JSON)

Tables are stored column-wise (not as a pickled pandas object) so any HDF5 tool reads
them; :func:`read_cells` turns them into a :class:`pandas.DataFrame`.

Writing is crash-safe in the sense that matters for long jobs: the writer appends fields
in batches to ``<out>.partial`` and records the committed row counts (``n_cells``,
``n_fields``, ``n_issues``) only after a batch's rows are all flushed. A resumed run copies
what those counts cover into a fresh file in a child process (a hard kill mid-flush can
tear the old file's heap so that it crashes its reader, or fails only at the next write),
so a field interrupted mid-write is redone, never duplicated, and a torn file is either
rebuilt from its last committed field or started over. The file gets its final name only
when :meth:`CropStoreWriter.finish` renames it. That machinery is
:class:`cellprof.formats.partial.PartialFile`, shared with the profiles writer.

Every read of ``/crops`` rows goes through :func:`cellprof.formats.chunks.read_rows`
(here :func:`read_crops`): whole chunks, decompressed on every core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cellprof.errors import InputError, StoreError
from cellprof.formats import chunks
from cellprof.formats.partial import PartialFile
from cellprof.formats.safeio import partial_path

FORMAT = "cellprof-crops"
SCHEMA_VERSION = 1
CROPS = "crops"
CELLS = "cells"
FIELDS = "fields"
ISSUES = "issues"
ILLUMINATION = "illumination"
CHUNK_CELLS = 64
BATCH_BYTES = 48 << 20
"""Crops queued before a commit writes them (~1,800 crops of 3 x 68 x 68 16-bit pixels).
Fewer, larger commits cost the parent less (a flush, a write per table column, the last
chunk read back and written again, each per commit): committing every 512 crops instead
of every 2,048 took ``crop --workers 2`` 6% more time on the crop benchmark's fields. A
kill loses at most one batch, which a resume redoes."""
BATCH_FIELDS = 64
ISSUE_COLUMNS = {"kind": "str", "file": "str", "row": "int", "reason": "str"}
COMPRESSIONS: dict[str, dict[str, Any]] = {
    "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
    "none": {},
}
"""How ``/crops`` may be stored. gzip (deflate level 1 after byte-shuffle; real BBBC021
crops shrink to ~0.6 of their size) is the default: every HDF5 tool reads it. ``none`` is
for a fast disk with room to spare: compressing costs ``crop`` about a fifth of the time it
spends reading the images, and a streamed training pass then decompresses nothing."""


def check_compression(compression: str) -> str:
    """``compression`` if it is a key of :data:`COMPRESSIONS`, else :class:`InputError` naming
    the option and its choices (raised by ``CropConfig`` before any work, and by the writer
    for every other caller)."""
    if compression not in COMPRESSIONS:
        raise InputError(f"--compression must be one of {', '.join(COMPRESSIONS)}, "
                         f"got {compression!r}")
    return compression


_STR = h5py.string_dtype("utf-8")


def column_kind(series: pd.Series) -> str:
    """Classify a column as ``"int"``, ``"float"``, ``"bool"`` or ``"str"`` for storage."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "str"


def _h5_dtype(kind: str) -> Any:
    return {"int": np.int64, "float": np.float64, "bool": np.bool_, "str": _STR}[kind]


def _as_column(values: pd.Series | Sequence[Any] | np.ndarray, kind: str) -> np.ndarray:
    """``values`` as the HDF5 column of ``kind``: text with missing values as "", floats
    with NaN, integers with -1 for "not measured" (e.g. the size of an unreadable field),
    booleans with False. Plain numpy arrays skip pandas (a Series of text costs a
    conversion to Arrow and back)."""
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.dtype.kind == "O" or kind == "str":
        arr = arr.astype(object)
        missing = pd.isna(arr)
        if missing.any():
            arr = arr.copy()
            arr[missing] = None
    if kind == "str":
        out = np.empty(len(arr), dtype=object)
        for i, v in enumerate(arr):
            out[i] = "" if v is None else v if type(v) is str else str(v)
        return out
    if kind == "bool":
        return arr.astype(np.bool_) if arr.dtype.kind == "b" else \
            np.array([bool(v) if v is not None else False for v in arr], dtype=np.bool_)
    if arr.dtype.kind in "iub" and kind == "int":
        return arr.astype(np.int64)
    try:  # numbers, numeric text and missing values convert without pandas
        out = (np.where(pd.isna(arr), np.nan, arr) if arr.dtype.kind == "O" else arr
               ).astype(np.float64)
    except (TypeError, ValueError):
        out = pd.to_numeric(pd.Series(arr, dtype=object),
                            errors="coerce" if kind == "float" else "raise").to_numpy(
            dtype=np.float64, na_value=np.nan)
    if kind == "float":
        return out
    return np.where(np.isnan(out), -1, out).astype(np.int64)


def n_rows(part: pd.DataFrame | Mapping[str, Any]) -> int:
    """Rows of a frame or of a mapping of equal-length columns."""
    if isinstance(part, pd.DataFrame):
        return len(part)
    return len(next(iter(part.values()))) if part else 0


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of ``values``, element by element (``np.array`` would turn
    equal-length sequences into a second axis)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _concat_values(pieces: list[np.ndarray]) -> np.ndarray:
    """One array of a column's pieces; mixed types (a number beside text or a missing
    value) become an object array, which :func:`_as_column` converts."""
    if len(pieces) == 1:
        return pieces[0]
    if not pieces:
        return np.zeros(0, dtype=object)
    kinds = {p.dtype.kind for p in pieces}
    if len(kinds) == 1 and "O" not in kinds and "U" not in kinds:
        return np.concatenate(pieces)
    return np.concatenate([p.astype(object) for p in pieces])


class ColumnTable:
    """A column-wise appendable table inside one HDF5 group."""

    def __init__(self, group: h5py.Group) -> None:
        self.group = group
        self._datasets: list[tuple[str, h5py.Dataset, str]] | None = None

    def _columns(self) -> list[tuple[str, h5py.Dataset, str]]:
        """(name, dataset, kind) of every column, looked up once: a writer appends to the
        same table every commit, and the lookups cost more than writing a field's rows."""
        if self._datasets is None:
            self._datasets = [(c, self.group[c], self.group[c].attrs["kind"])
                              for c in self.columns]
        return self._datasets

    @classmethod
    def create(cls, parent: h5py.Group, name: str, kinds: Mapping[str, str]) -> ColumnTable:
        group = parent.create_group(name)
        group.attrs["columns"] = json.dumps(list(kinds))
        for col, kind in kinds.items():
            # No compression: variable-length strings would only compress their pointers.
            group.create_dataset(col, shape=(0,), maxshape=(None,), dtype=_h5_dtype(kind),
                                 chunks=(4096,))
            group[col].attrs["kind"] = kind
        return cls(group)

    @property
    def columns(self) -> list[str]:
        return json.loads(self.group.attrs["columns"])

    def __len__(self) -> int:
        cols = self.columns
        return int(self.group[cols[0]].shape[0]) if cols else 0

    def append(self, frame: pd.DataFrame, start: int) -> int:
        """Write ``frame``'s rows at ``start`` (missing columns filled empty); return the end."""
        return self.append_parts([frame], start)

    def append_parts(self, parts: Sequence[pd.DataFrame | Mapping[str, np.ndarray]],
                     start: int) -> int:
        """Write the rows of ``parts`` (frames, or mappings of equal-length columns) in
        order at ``start``, missing columns filled empty; return the end. Column by column,
        without building one frame first: a writer's commit spent more on ``pd.concat``
        and on taking the result apart than on writing it."""
        lengths = [n_rows(p) for p in parts]
        n = sum(lengths)
        end = start + n
        for col, ds, kind in self._columns():
            pieces = [np.asarray(part[col]) if col in part else np.full(length, None, object)
                      for part, length in zip(parts, lengths, strict=True)]
            values = _as_column(_concat_values(pieces), kind)
            ds.resize((end,))
            if n:
                ds[start:end] = values
        return end

    def read(self, rows: slice | np.ndarray | None = None) -> pd.DataFrame:
        out: dict[str, Any] = {}
        for col in self.columns:
            ds = self.group[col]
            data = ds.asstr() if ds.attrs["kind"] == "str" else ds
            out[col] = data[()] if rows is None else data[rows]
        return pd.DataFrame(out)


@dataclass(frozen=True)
class StoreInfo:
    """What a crop store holds, read from its attributes."""

    path: Path
    n_cells: int
    channels: tuple[str, ...]
    crop_size: int
    dtype: np.dtype
    config: dict[str, Any]
    summary: dict[str, Any]


Part = pd.DataFrame | Mapping[str, np.ndarray]
"""Rows of a table: a frame, or a mapping of equal-length columns."""
COUNTS = {CROPS: "n_cells", CELLS: "n_cells", FIELDS: "n_fields", ISSUES: "n_issues"}
"""The committed count of each growing part of a partial store (root attributes)."""


class CropStoreWriter:
    """Append crops field by field to ``<path>.partial``; rename to ``path`` when done.

    Parameters
    ----------
    path
        Final output path.
    channels
        Channel names, in the order of axis 1 of ``/crops``.
    crop_size
        Crop side in pixels.
    dtype
        Crop dtype (the source images' dtype, or float32 after illumination correction).
    cell_columns, field_columns
        Column name -> kind (``"str"``, ``"float"``, ``"int"``, ``"bool"``) of the two tables.
    config
        JSON-serialisable settings; a resumed run must pass the same ones.
    resume
        Continue an existing ``.partial`` file written with the same config and inputs,
        rather than starting over. A partial file that is damaged (a hard kill during an
        HDF5 flush can tear its heap), written with other settings, or from inputs whose
        fingerprint changed is discarded, and the reason logged.
    inputs
        Fingerprint of the inputs (:func:`cellprof.formats.safeio.fingerprint`), kept in the file
        so a resume notices an edited table or a replaced store.
    compression
        How ``/crops`` is stored: a key of :data:`COMPRESSIONS`. Part of what a resumed
        run must match, through ``config``.

    The partial file, its lock, resume and final rename are
    :class:`~cellprof.formats.partial.PartialFile`'s, as for a profiles file; a second
    writer of the same output is refused.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channels: Sequence[str],
        crop_size: int,
        dtype: np.dtype | type,
        cell_columns: Mapping[str, str],
        field_columns: Mapping[str, str],
        config: Mapping[str, Any],
        resume: bool = True,
        inputs: Mapping[str, Any] | None = None,
        compression: str = "gzip",
    ) -> None:
        self.compression = check_compression(compression)
        shape = (len(channels), crop_size, crop_size)

        def create(f: h5py.File) -> None:
            f.attrs.update(schema_version=SCHEMA_VERSION, channels=json.dumps(list(channels)),
                           crop_size=int(crop_size), summary="{}")
            f.create_dataset(CROPS, shape=(0,) + shape, maxshape=(None,) + shape,
                             dtype=np.dtype(dtype), chunks=(CHUNK_CELLS,) + shape,
                             **COMPRESSIONS[self.compression])
            ColumnTable.create(f, CELLS, cell_columns)
            ColumnTable.create(f, FIELDS, field_columns)
            ColumnTable.create(f, ISSUES, ISSUE_COLUMNS)
            f.create_group(ILLUMINATION)

        self.part = PartialFile(path, format=FORMAT, config=config, inputs=inputs,
                                counts=COUNTS, create=create, resume=resume)
        self.path, self.tmp, self.file = self.part.path, self.part.tmp, self.part.file
        self.restart_reason = self.part.restart_reason
        self.resumed_fields = self.part.count("n_fields") if self.part.resumed else 0
        self._queue: dict[str, list[Any]] = {CROPS: [], CELLS: [], FIELDS: [], ISSUES: []}
        self._queued_bytes = 0
        self._tables: dict[str, ColumnTable] = {}

    def _table(self, name: str) -> ColumnTable:
        """The file's table ``name``, kept between commits (the writer opens one file)."""
        if name not in self._tables:
            self._tables[name] = ColumnTable(self.file[name])
        return self._tables[name]

    def done_fields(self, key: str) -> pd.DataFrame:
        """Fields committed so far (all columns); ``key`` must be one of them."""
        self.commit()
        table = self._table(FIELDS)
        if key not in table.columns:
            raise StoreError(f"{self.tmp}: field table has no column {key!r}")
        return table.read()

    def issues(self) -> pd.DataFrame:
        self.commit()
        return self._table(ISSUES).read()

    def add_field(self, field: Mapping[str, Any], crops: np.ndarray, cells: Part,
                  issues: pd.DataFrame | None = None) -> None:
        """Queue one field (its crops, their metadata rows, its own row and its issues).

        Fields are written in batches of about ``BATCH_BYTES`` of crops: an HDF5 flush costs
        tens of milliseconds, more than cropping a field. A queued field is complete, so
        :meth:`close` writes the queue too; only a hard kill loses it (and the fields are
        then redone on resume).
        """
        self.add_rows(crops, cells, fields=dict(field), issues=issues)

    def add_rows(self, crops: np.ndarray | None = None, cells: Part | None = None, *,
                 fields: Mapping[str, Any] | pd.DataFrame | None = None,
                 issues: pd.DataFrame | None = None) -> None:
        """Queue crops with their metadata rows, and field and issue rows: one field's
        (``fields`` a record, as :meth:`add_field`) or any (``fields`` a table, as ``merge``
        copies a shard). Committed in order by :meth:`commit`, like every row."""
        if (0 if crops is None else len(crops)) != (0 if cells is None else n_rows(cells)):
            raise ValueError(f"{len(crops) if crops is not None else 0} crops but "
                             f"{n_rows(cells) if cells is not None else 0} metadata rows")
        q = self._queue
        if crops is not None and len(crops):
            q[CROPS].append(crops)
            q[CELLS].append(cells)
            self._queued_bytes += crops.nbytes
        if fields is not None:
            q[FIELDS].append(fields)
        if issues is not None and len(issues):
            q[ISSUES].append(issues)
        if self._queued_bytes >= BATCH_BYTES or len(q[FIELDS]) >= BATCH_FIELDS:
            self.commit()

    def commit(self) -> None:
        """Write every queued row, then record the new committed counts."""
        q = self._queue
        if not any(q.values()):
            return
        n0 = self.part.count("n_cells")
        n1 = n0 + sum(len(c) for c in q[CROPS])
        ds = self.file[CROPS]
        ds.resize((n1,) + ds.shape[1:])
        if q[CROPS]:
            write_crops(ds, n0, np.concatenate(q[CROPS]) if len(q[CROPS]) > 1
                        else q[CROPS][0])
            self._table(CELLS).append_parts(q[CELLS], n0)
        nf = self._table(FIELDS).append_parts(_field_parts(q[FIELDS]),
                                              self.part.count("n_fields"))
        ni = self.part.count("n_issues")
        if q[ISSUES]:
            ni = self._table(ISSUES).append_parts(q[ISSUES], ni)
        # Counts last: a crash before they are written leaves these rows uncommitted.
        self.part.commit(n_cells=n1, n_fields=nf, n_issues=ni)
        for rows in q.values():
            rows.clear()
        self._queued_bytes = 0

    def add_issues(self, issues: pd.DataFrame) -> None:
        """Commit problems found before any field (e.g. in the tables)."""
        self.add_rows(issues=issues)
        self.commit()

    def set_illumination(self, plate: str, illum: np.ndarray) -> None:
        group = self.file[ILLUMINATION]
        name = plate or "_"
        if name in group:
            del group[name]
        group.create_dataset(name, data=np.asarray(illum, dtype=np.float32), compression="gzip")
        group[name].attrs["plate"] = plate
        self.file.flush()

    def illumination(self) -> dict[str, np.ndarray]:
        group = self.file[ILLUMINATION]
        return {str(ds.attrs["plate"]): ds[()] for ds in group.values()}

    def finish(self, summary: Mapping[str, Any]) -> Path:
        """Mark complete, close and rename durably to the final path."""
        self.commit()
        return self.part.finish(summary=json.dumps(dict(summary), default=str))

    def close(self) -> None:
        """Close without finishing (the ``.partial`` file stays for a resume)."""
        try:
            if self.file.id.valid:
                self.commit()
        finally:
            self.part.close()


def _field_parts(queued: list[Mapping[str, Any] | pd.DataFrame]) -> list[Part]:
    """Queued field rows as table parts, in order. Each run of one-field records (dicts,
    from :meth:`CropStoreWriter.add_field`) becomes one part of object columns, built in
    one pass, rather than a part per field whose columns are then concatenated."""
    parts: list[Part] = []
    run: list[Mapping[str, Any]] = []
    for item in [*queued, None]:
        if isinstance(item, dict):
            run.append(item)
            continue
        if run:
            names = dict.fromkeys(k for r in run for k in r)
            parts.append({k: _objects([r.get(k) for r in run]) for k in names})
            run = []
        if item is not None:
            parts.append(item)
    return parts


def write_crops(ds: h5py.Dataset, start: int, crops: np.ndarray) -> None:
    """``ds[start:start + len(crops)] = crops`` (``ds`` already resized to end there), every
    chunk compressed on every core by :mod:`cellprof.formats.chunks`: the single writer compressing
    chunks through HDF5 was what kept ``crop`` from scaling with ``--workers``. The chunk
    that ``start`` falls inside is read back and rewritten whole, and the last one is
    written padded, as HDF5 stores an edge chunk; readers see exactly the crops."""
    end = start + len(crops)
    if end != ds.shape[0]:
        raise ValueError(f"write_crops appends at the end: {len(crops)} cells at {start} "
                         f"of {ds.shape[0]}")
    if not chunks.direct_ok(ds):
        ds[start:end] = crops
        return
    first = start // ds.chunks[0] * ds.chunks[0]
    if first < start:  # the committed head of a chunk that this write completes
        crops = np.concatenate([chunks.read_rows(ds, slice(first, start)), crops])
    chunks.write_chunks(ds, first, crops)


def open_store(path: str | Path) -> h5py.File:
    """Open a complete crop store read-only, or raise :class:`StoreError` saying why not."""
    path = Path(path)
    if not path.exists():
        hint = " (an interrupted run left a .partial file: rerun the same command to resume)" \
            if partial_path(path).exists() else ""
        raise StoreError(f"{path}: no such crop store{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: not an HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise StoreError(f"{path}: not a cellprof crop store (no format={FORMAT!r} attribute)")
    if int(f.attrs.get("schema_version", -1)) > SCHEMA_VERSION:
        f.close()
        raise StoreError(f"{path}: written by a newer cellprof (schema "
                         f"{f.attrs['schema_version']}); upgrade cellprof")
    if not bool(f.attrs.get("complete", False)):
        f.close()
        raise StoreError(f"{path}: incomplete crop store")
    try:
        problem = _inconsistency(f)
    except (KeyError, ValueError, TypeError, OSError) as exc:
        problem = f"unreadable layout ({type(exc).__name__}: {exc})"
    if problem:
        f.close()
        raise StoreError(f"{path}: damaged or edited crop store: {problem}")
    return f


def _inconsistency(f: h5py.File) -> str | None:
    """What in a store's layout contradicts itself (cheap: shapes and attributes only)."""
    crops = f[CROPS]
    channels = json.loads(f.attrs["channels"])
    size = int(f.attrs["crop_size"])
    if crops.ndim != 4 or crops.shape[1:] != (len(channels), size, size):
        return (f"/crops is {crops.shape}, but its attributes say {len(channels)} channels "
                f"at {size} px")
    n = crops.shape[0]
    if int(f.attrs.get("n_cells", n)) != n:
        return f"/crops holds {n} cells, its attributes say {int(f.attrs['n_cells'])}"
    for col in ColumnTable(f[CELLS]).columns:
        if f[CELLS][col].shape[0] != n:
            return (f"the cell table's column {col} has {f[CELLS][col].shape[0]} rows "
                    f"for {n} crops")
    return None


def read_info(path: str | Path) -> StoreInfo:
    with open_store(path) as f:
        return StoreInfo(
            path=Path(path), n_cells=int(f[CROPS].shape[0]),
            channels=tuple(json.loads(f.attrs["channels"])), crop_size=int(f.attrs["crop_size"]),
            dtype=f[CROPS].dtype, config=json.loads(f.attrs["config"]),
            summary=json.loads(f.attrs["summary"]),
        )


def read_cells(path: str | Path, rows: slice | np.ndarray | None = None) -> pd.DataFrame:
    """The per-cell metadata table, one row per crop in ``/crops`` order."""
    with open_store(path) as f:
        return ColumnTable(f[CELLS]).read(rows)


def read_fields(path: str | Path) -> pd.DataFrame:
    """One row per processed field: metadata, files, intensity statistics, counts."""
    with open_store(path) as f:
        return ColumnTable(f[FIELDS]).read()


def read_issues(path: str | Path) -> pd.DataFrame:
    """Every problem reported while the store was written (kind, file, row, reason)."""
    with open_store(path) as f:
        return ColumnTable(f[ISSUES]).read()


def read_crops(path: str | Path, rows: slice | np.ndarray | None = None) -> np.ndarray:
    """Crops ``(n, C, H, W)``; ``rows`` a slice or increasing index array (all when None),
    read by whole chunks on every core (:func:`cellprof.formats.chunks.read_rows`)."""
    with open_store(path) as f:
        return chunks.read_rows(f[CROPS], rows)


def read_illumination(path: str | Path) -> dict[str, np.ndarray]:
    with open_store(path) as f:
        return {str(ds.attrs["plate"]): ds[()] for ds in f[ILLUMINATION].values()}


def blocks(start: int, n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` cell ranges from ``start`` to ``n`` of about ``batch_size`` cells, whole
    chunks each (at least one), so a streamed pass decompresses every chunk once.

    >>> blocks(0, 150, 100)
    [(0, 64), (64, 128), (128, 150)]
    """
    step = max(CHUNK_CELLS, batch_size // CHUNK_CELLS * CHUNK_CELLS)
    return [(lo, min(lo + step, n)) for lo in range(start, n, step)]
