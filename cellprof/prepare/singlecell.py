"""``cellprof crop --singlecell``: import a folder of pre-cut single-cell crops.

Single-cell sets often circulate already cut: one ``.npy`` per cell with a metadata table
(BBBC021's ``<plate>/<field>/<field>_<i>.npy``, shape ``(H, W, C)``), or one ``.tif`` /
``.png`` per cell (RGB planes or a ``(C, H, W)`` stack as channels) labelled by a table or
by class sub-folders (``apo/``, ``meta/`` …). Importing them into a crop store lets them go
through the same train / embed / match steps as cropped screens, each crop keeping its
own labels as ``Metadata_`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import ImageError, InputError
from cellprof.formats.images import intensity_stats, read_planes
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


@dataclass(frozen=True)
class _LoadJob:
    shape: tuple[int, int, int]     # (H, W, C) every array must have
    dtype: str
    channels: list[str]

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
            if arr.shape != self.shape:
                issues.append(issue("wrong_size", task.table_file, row,
                                    f"{path}: shape {arr.shape}, expected {self.shape} (H, W, C)"))
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
    if metadata is None:
        table, path_col, source = _folder_table(folder), "crop_path", folder
    else:
        source = metadata = Path(metadata)
        table = canonical_columns(read_table(metadata))
        path_col = next((c for c in _PATH_COLUMNS if c in table.columns), None)
        if path_col is None:
            raise InputError(f"{metadata}: missing column crop_path (the crop file, relative "
                             f"to {folder})")
    if not len(table):
        raise InputError(f"{source}: lists no crops")
    table, names = _cell_metadata(table, path_col)
    if moa is not None:
        table = join_moa(table, read_moa_table(moa), moa)
    first = folder / str(table[path_col].iloc[0])
    try:
        sample = read_crop(first)
    except ImageError as exc:
        raise InputError(f"cannot read the first crop: {exc}") from None
    shape = sample.shape
    if shape[0] != shape[1]:
        raise InputError(f"{first}: crops must be square, got {shape[0]}x{shape[1]} px "
                         f"(read as (H, W, C) = {shape})")
    n_ch = shape[2]
    chans = list(channels) if channels else (names if len(names) == n_ch
                                              else [f"ch{i}" for i in range(n_ch)])
    if len(chans) != n_ch:
        raise InputError(f"--channels names {len(chans)} channels, the crops have {n_ch}")
    meta_cols = [c for c in table.columns if c.startswith("Metadata_")]
    tasks = _tasks(table, folder, path_col, meta_cols, source)
    dtype = str(sample.dtype) if sample.dtype.kind in "uif" else "float32"
    cell_cols, field_cols = store_columns(table[meta_cols], chans)
    settings = {"mode": "singlecell", "folder": str(folder.resolve()),
                "metadata": str(metadata.resolve()) if metadata else None,
                "moa": str(moa) if moa else None,
                "channels": chans, "compression": compression}
    writer = CropStoreWriter(out, channels=chans, crop_size=shape[0], dtype=dtype,
                             cell_columns=cell_cols, field_columns=field_cols,
                             config=settings, resume=not overwrite, compression=compression)
    try:
        done = set(writer.done_fields(FIELD_KEY)[FIELD_KEY])
        todo = [t for t in tasks if t.key not in done]
        commit_results(ordered_map(_LoadJob(shape, dtype, chans), todo, workers), writer,
                       strict=strict, total=len(tasks), done=len(done), progress=progress)
        return finish_store(writer, out)
    finally:
        writer.close()


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
