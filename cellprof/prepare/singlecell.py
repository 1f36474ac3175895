"""``cellprof crop --singlecell``: import a folder of pre-cut single-cell crops.

Single-cell sets often circulate already cut: one ``.npy`` per cell with a metadata table
(BBBC021's ``<plate>/<field>/<field>_<i>.npy``, shape ``(H, W, C)``), or one ``.tif`` /
``.png`` per cell (RGB planes or a ``(C, H, W)`` stack as channels) labelled by a table or
by class sub-folders (``apo/``, ``meta/`` …). Importing them into a crop store lets them go
through the same train / embed / match steps as cropped screens, each crop keeping its
own labels as ``Metadata_`` columns.

What the table crop guarantees holds here too: one pixel scale per store (the first crop's
bit depth; a crop of another one stops the import, naming both files, since an 8-bit crop
among 16-bit ones, or the reverse, would be stored on a 256 times different scale or
wrapped modulo 256), crops with NaN or infinite pixels rejected and reported, a crop listed
twice or with an empty plate, well or site refused, and a resume that starts over when the
metadata or MOA table, or any crop file's size or modification time, changed since the
interrupted run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import ImageError, InputError
from cellprof.formats.images import intensity_stats, read_planes
from cellprof.formats.safeio import files_fingerprint, fingerprint
from cellprof.formats.schema import FIELD_KEY, cell_rows, field_row, store_columns
from cellprof.formats.store import CropStoreWriter
from cellprof.prepare.crop import CropSummary, finish_store
from cellprof.prepare.fieldwork import FieldResult, issue
from cellprof.prepare.runner import Progress, commit_results, ordered_map
from cellprof.prepare.tables import (
    PLATE,
    SITE,
    WELL,
    canonical_columns,
    channels_of,
    complete_metadata,
    join_moa,
    read_moa_table,
    read_table,
    refuse_empty_field_keys,
    site_from_filename,
)

_PATH_COLUMNS = ("crop_path", "path", "file", "filename", "image_path")
#: Crop files a folder is searched for when no table lists them.
CROP_SUFFIXES = (".npy", ".tif", ".tiff", ".png")
#: The column a crop's class sub-folder becomes when no table labels it.
CLASS = "Metadata_Class"


def read_crop(path: Path) -> np.ndarray:
    """One crop as ``(H, W, C)``: ``.npy`` arrays as stored (channels last, BBBC021's
    layout), images through :func:`cellprof.formats.images.read_planes` (RGB planes or a stack's
    planes become the channels).

    Raises
    ------
    ImageError
        When the file is missing or cannot be read, naming it.
    """
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise ImageError(f"{path}: crop not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: a zero-byte file
            raise ImageError(f"{path}: cannot read crop ({exc or 'empty file'})") from None
        return arr[..., None] if arr.ndim == 2 else arr
    return np.moveaxis(read_planes(path), 0, -1)


@dataclass
class CellFieldTask:
    """The cells of one field: their files, table rows and each cell's own metadata."""

    key: str
    image_number: int
    meta: dict[str, Any]          # metadata every cell of the field shares
    cell_meta: pd.DataFrame       # one row per file: each cell's own Metadata_* values
    paths: list[Path]
    rows: list[int]
    object_numbers: list[int]
    table_file: str


def bit_depth(dtype: np.dtype) -> str:
    """A pixel type's scale: ``8-bit``, ``16-bit``, ``signed 16-bit`` …, or ``float`` for
    every float width (float32 and float64 crops hold values on one scale)."""
    if dtype.kind == "f":
        return "float"
    if dtype.kind == "b":
        return "boolean"
    return f"{'signed ' if dtype.kind == 'i' else ''}{dtype.itemsize * 8}-bit"


def store_dtype(dtype: np.dtype) -> str:
    """The store's crop type for crops of ``dtype``: integers as they are (native byte
    order), floats (any width) and anything else as float32, as the table crop stores them."""
    return dtype.newbyteorder("=").name if dtype.kind in "ui" else "float32"


@dataclass(frozen=True)
class _LoadJob:
    shape: tuple[int, int, int]     # (H, W, C) every array must have
    dtype: str
    channels: list[str]
    first: str                      # the first crop, whose pixel type every crop must share
    source: str                     # its dtype

    def __call__(self, task: CellFieldTask) -> FieldResult:
        crops, kept, issues = [], [], []
        for i, (path, row, _obj) in enumerate(zip(task.paths, task.rows, task.object_numbers,
                                                 strict=True)):
            try:
                arr = read_crop(path)
            except ImageError as exc:
                kind = "missing_image" if not path.exists() else exc.kind
                issues.append(issue(kind, task.table_file, row, str(exc)))
                continue
            problem = self._check(arr, path)
            if problem:
                issues.append(issue(problem[0], task.table_file, row, problem[1]))
                continue
            crops.append(np.moveaxis(arr, -1, 0))
            kept.append(i)
        h, w, c = self.shape
        array = np.stack(crops).astype(self.dtype, copy=False) if crops else \
            np.zeros((0, c, h, w), dtype=self.dtype)
        record = field_row(task.key, task.image_number, task.meta,
                           status="ok" if crops else "no_cells", n_objects=len(task.paths))
        record.update(Height=h, Width=w, Count_Cropped=len(crops),
                      Count_Rejected=len(task.paths) - len(crops))
        for ch, plane in zip(self.channels, np.moveaxis(array, 1, 0), strict=True):
            if plane.size:  # statistics over the field's crops: the whole field is not here
                record.update({f"Intensity_{k}_{ch}": v for k, v in intensity_stats(
                    plane.reshape(-1, w)).items()})
        cells = cell_rows(task.cell_meta.iloc[kept], task.image_number,
                          np.asarray(task.object_numbers, dtype=np.int64)[kept])
        return FieldResult(task.key, record, array, cells, issues)

    def _check(self, arr: np.ndarray, path: Path) -> tuple[str, str] | None:
        """(issue kind, reason) of a crop that cannot be stored, None for a good one.

        Raises
        ------
        InputError
            For a crop of another bit depth than the first: skipping it would quietly drop
            part of the set (often a whole class), storing it would put it on another scale.
        """
        source = np.dtype(self.source)
        if bit_depth(arr.dtype) != bit_depth(source):
            raise InputError(
                f"{path}: {bit_depth(arr.dtype)} crop ({arr.dtype}), but the first crop "
                f"{self.first} is {bit_depth(source)} ({source}): their values are on "
                "different scales; convert every crop to one bit depth and rerun")
        if arr.shape != self.shape:
            return "wrong_size", f"{path}: shape {arr.shape}, expected {self.shape} (H, W, C)"
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            return "nonfinite_pixels", (f"{path}: {int((~np.isfinite(arr)).sum())} NaN or "
                                        "infinite pixels; the crop is rejected")
        return None


def import_singlecell(
    folder: str | Path, metadata: str | Path | None, out: str | Path, *,
    moa: str | Path | None = None, channels: tuple[str, ...] | None = None,
    workers: int = 1, strict: bool = False, overwrite: bool = False,
    progress: Progress | None = None, compression: str = "gzip",
) -> CropSummary:
    """Import pre-cut single-cell crops and their labels into a crop store.

    Parameters
    ----------
    folder
        Root the table's crop paths are relative to.
    metadata
        None: every ``.npy``/``.tif``/``.tiff``/``.png`` under ``folder``, labelled by the
        name of the sub-folder it sits in (``apo/x.png`` -> ``Metadata_Class = apo``).
        Otherwise a table with one row per crop: a path column (``crop_path``),
        plate/well/compound/concentration (and optionally moa) in any naming style
        :func:`cellprof.prepare.tables.canonical_columns` knows; ``cell_index`` (0-based)
        becomes ``ObjectNumber``. Each crop keeps its own
        row's metadata; other columns (a phenotype label …) become ``Metadata_<name>``.
        Fields are the table's plate/well/site where it has them, else the crop folders.
    channels
        Names for the arrays' channels; default: the table's ``FileName_<name>`` columns
        when they match the channel count, else ``ch0, ch1, ...``.
    compression
        How the store keeps its crops (:data:`cellprof.formats.store.COMPRESSIONS`).
    """
    folder, out = Path(folder), Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    metadata = Path(metadata) if metadata is not None else None
    table, path_col, source = _crop_table(folder, metadata)
    table, names = _cell_metadata(table, path_col)
    if moa is not None:
        table = join_moa(table, read_moa_table(moa), moa)
    first = folder / str(table[path_col].iloc[0])
    sample = _first_crop(first)
    shape, n_ch = sample.shape, sample.shape[2]
    chans = list(channels) if channels else (names if len(names) == n_ch
                                              else [f"ch{i}" for i in range(n_ch)])
    if len(chans) != n_ch:
        raise InputError(f"--channels names {len(chans)} channels, the crops have {n_ch}")
    meta_cols = [c for c in table.columns if c.startswith("Metadata_")]
    tasks = _tasks(table, folder, path_col, meta_cols, source)
    dtype = store_dtype(sample.dtype)
    cell_cols, field_cols = store_columns(table[meta_cols], chans)
    settings = {"mode": "singlecell", "folder": str(folder.resolve()),
                "metadata": str(metadata.resolve()) if metadata else None,
                "moa": str(moa) if moa else None,
                "channels": chans, "compression": compression}
    # What a resume must match besides the settings: an edited table or a replaced crop
    # would otherwise leave the cells committed before the kill with their old values.
    inputs = {**fingerprint({"metadata table": metadata, "moa table": moa}),
              "crop files": files_fingerprint(folder, [p for t in tasks for p in t.paths])}
    writer = CropStoreWriter(out, channels=chans, crop_size=shape[0], dtype=dtype,
                             cell_columns=cell_cols, field_columns=field_cols,
                             config=settings, resume=not overwrite, compression=compression,
                             inputs=inputs)
    try:
        done = set(writer.done_fields(FIELD_KEY)[FIELD_KEY])
        todo = [t for t in tasks if t.key not in done]
        job = _LoadJob(shape, dtype, chans, str(first), sample.dtype.str)
        commit_results(ordered_map(job, todo, workers), writer,
                       strict=strict, total=len(tasks), done=len(done), progress=progress)
        return finish_store(writer, out)
    finally:
        writer.close()


def _crop_table(folder: Path, metadata: Path | None) -> tuple[pd.DataFrame, str, Path]:
    """The crops to import (one row each), the table's path column, and where the rows
    came from (the table, or ``folder`` when it is searched)."""
    if metadata is None:
        return _folder_table(folder), "crop_path", folder
    table = canonical_columns(read_table(metadata), source=metadata)
    path_col = next((c for c in _PATH_COLUMNS if c in table.columns), None)
    if path_col is None:
        raise InputError(f"{metadata}: missing column crop_path (the crop file, relative "
                         f"to {folder})")
    if not len(table):
        raise InputError(f"{metadata}: lists no crops")
    empty = np.flatnonzero((table[path_col].isna()  # else read as the file ".../nan"
                            | (table[path_col].astype(str).str.strip() == "")).to_numpy())
    if len(empty):
        rows = ", ".join(str(i + 2) for i in empty[:5]) + (" …" if len(empty) > 5 else "")
        raise InputError(f"{metadata}: {path_col} is empty in row{'s' if len(empty) > 1 else ''} "
                         f"{rows}: give each crop's file, or remove the row")
    # An empty site used to drop its crop from every field without a word (pandas groups
    # leave NaN keys out); an empty well made a well "nan".
    refuse_empty_field_keys(table, metadata)
    _refuse_repeated_crops(table[path_col], metadata)
    return table, path_col, metadata


def _refuse_repeated_crops(paths: pd.Series, table_file: Path) -> None:
    """Raise :class:`InputError` for a crop listed more than once (``a.npy``, ``./a.npy``):
    each listing would become a cell of its own, counted again in its well's profile."""
    listed = paths[paths.notna()].astype(str).str.strip()
    listed = listed[listed != ""].map(os.path.normpath)
    repeated = listed[listed.duplicated(keep=False)]
    if repeated.empty:
        return
    crop = repeated.iloc[0]
    rows = [str(i + 2) for i, p in zip(repeated.index, repeated, strict=True) if p == crop]
    others = repeated.nunique() - 1
    more = f"; {others} other crop(s) too" if others else ""
    raise InputError(f"{table_file}: crop {crop} is listed {len(rows)} times, rows "
                     f"{', '.join(rows)}{more}: each would become a cell of its own; list "
                     "every crop once")


def _first_crop(path: Path) -> np.ndarray:
    """The first crop, which sets the store's size, channels and pixel type."""
    try:
        sample = read_crop(path)
    except ImageError as exc:
        raise InputError(f"cannot read the first crop: {exc}") from None
    if sample.shape[0] != sample.shape[1]:
        raise InputError(f"{path}: crops must be square, got {sample.shape[0]}x"
                         f"{sample.shape[1]} px (read as (H, W, C) = {sample.shape})")
    return sample


def _folder_table(folder: Path) -> pd.DataFrame:
    """Every crop file under ``folder`` (sorted) and the sub-folder it sits in as its class."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in CROP_SUFFIXES
                   and p.is_file())
    if not files:
        raise InputError(f"{folder}: no crops ({', '.join(CROP_SUFFIXES)}) in it or its "
                         "sub-folders; give --metadata TABLE to list them")
    rel = [p.relative_to(folder) for p in files]
    return pd.DataFrame({"crop_path": [r.as_posix() for r in rel],
                         CLASS: [r.parent.name for r in rel]})


def _cell_metadata(table: pd.DataFrame, path_col: str) -> tuple[pd.DataFrame, list[str]]:
    """Every row's own metadata in canonical names, and the channel names the table has.

    Columns that are neither files nor keys are per-cell labels (a phenotype class, a
    replicate …): they become ``Metadata_<name>`` so they reach the store, the profiles
    and pycytominer. Plate, well and site are the table's where it has them; a site is
    otherwise read from the image or folder name (``B02_s3_w1…``), else 1.
    """
    table = table.copy()
    table["_dir"] = table[path_col].map(lambda p: str(Path(str(p)).parent))
    table["_has_well"] = WELL in table.columns
    keys = {path_col, "cell_index", "ImageNumber", "ObjectNumber", "TableNumber"}
    table = table.rename(columns={
        c: f"Metadata_{c}" for c in table.columns
        if c not in keys and not str(c).startswith(("Metadata_", "FileName_", "PathName_", "_",
                                                     "Unnamed:"))})
    names = channels_of(table)
    if PLATE not in table.columns:
        table[PLATE] = ""
    table["_site_known"] = SITE in table.columns
    if SITE not in table.columns:
        src = table[f"FileName_{names[0]}"] if names else table["_dir"]
        sites = src.map(lambda s: site_from_filename(Path(str(s)).name))
        table["_site_known"] = bool(sites.notna().all())
        table[SITE] = sites.fillna(1).astype(np.int64)
    return complete_metadata(table, names[0] if names else ""), names


def _tasks(table: pd.DataFrame, folder: Path, path_col: str, meta_cols: list[str],
           source: Path) -> list[CellFieldTask]:
    """One task per field. A field is the table's plate, well and site when it has them
    (a flat folder of crops from many wells is many fields); otherwise the crop's folder
    within its plate (BBBC021's one folder per field)."""
    table = table.assign(_row=np.arange(len(table)) + 2)
    has_well, site_known = bool(table["_has_well"].all()), bool(table["_site_known"].all())
    by = [PLATE, WELL, SITE] if has_well and site_known else \
        [PLATE, WELL, "_dir"] if has_well else [PLATE, "_dir"]
    numbered = table.groupby(by, sort=False).cumcount() + 1
    if "cell_index" in table.columns:
        index = pd.to_numeric(table["cell_index"], errors="coerce")
        own = index.fillna(-1).astype(int) + 1
        clash = pd.DataFrame({"g": table.groupby(by, sort=False).ngroup(), "o": own})
        # a cell_index repeated within a field (e.g. numbered per folder) cannot number it
        table["_obj"] = own if index.notna().all() and not clash.duplicated().any() else numbered
    else:
        table["_obj"] = numbered
    tasks = []
    for i, (values, g) in enumerate(table.groupby(by, sort=False)):
        shared = {c: _plain(g[c].iloc[0]) for c in meta_cols if g[c].nunique(dropna=False) <= 1}
        tasks.append(CellFieldTask(
            key="/".join(map(str, values)), image_number=i + 1, meta=shared,
            cell_meta=g[meta_cols].reset_index(drop=True),
            paths=[folder / str(p) for p in g[path_col]], rows=g["_row"].tolist(),
            object_numbers=g["_obj"].tolist(), table_file=str(source),
        ))
    return tasks


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
