"""``cellprof crop --singlecell``: import a folder of pre-cut single-cell arrays.

Single-cell sets often circulate already cut, one ``.npy`` per cell with a metadata table
(BBBC021's ``<plate>/<field>/<field>_<i>.npy``, shape ``(H, W, C)``). Importing them into a
crop store lets them go through the same train / embed / match steps as cropped screens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.fieldwork import FieldResult, issue
from cellprof.images import intensity_stats
from cellprof.runner import Progress, commit_results, ordered_map, store_columns
from cellprof.store import CropStoreWriter
from cellprof.tables import (
    PLATE, SITE, canonical_columns, channels_of, complete_metadata, join_moa, read_moa_table,
    read_table, require_columns, site_from_filename,
)
from cellprof.crop import CropSummary, finish_store

_PATH_COLUMNS = ("crop_path", "path", "file", "filename")


@dataclass
class CellFieldTask:
    """The cells of one field: their files and table rows."""

    key: str
    image_number: int
    meta: dict[str, Any]
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
        for path, row, obj in zip(task.paths, task.rows, task.object_numbers, strict=True):
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:  # EOFError: a zero-byte file
                kind = "missing_image" if not path.exists() else "unreadable_image"
                issues.append(issue(kind, task.table_file, row, f"{path}: {exc}"))
                continue
            if arr.ndim == 2 and self.shape[2] == 1:
                arr = arr[..., None]
            if arr.shape != self.shape:
                issues.append(issue("wrong_size", task.table_file, row,
                                    f"{path}: shape {arr.shape}, expected {self.shape} (H, W, C)"))
                continue
            crops.append(np.moveaxis(arr, -1, 0))
            kept.append(obj)
        h, w, c = self.shape
        array = np.stack(crops).astype(self.dtype, copy=False) if crops else \
            np.zeros((0, c, h, w), dtype=self.dtype)
        record: dict[str, Any] = {
            "Field_Key": task.key, "ImageNumber": task.image_number, **task.meta,
            "Status": "ok" if crops else "no_cells", "Height": h, "Width": w,
            "Count_Objects": len(task.paths), "Count_Cropped": len(crops),
            "Count_EdgeSkipped": 0, "Count_Rejected": len(task.paths) - len(crops),
        }
        for ch, plane in zip(self.channels, np.moveaxis(array, 1, 0), strict=True):
            if plane.size:  # statistics over the field's crops: the whole field is not here
                record.update({f"Intensity_{k}_{ch}": v for k, v in intensity_stats(
                    plane.reshape(-1, w)).items()})
        cells = pd.DataFrame({
            **{k: [v] * len(kept) for k, v in task.meta.items()},
            "ImageNumber": np.full(len(kept), task.image_number, dtype=np.int64),
            "ObjectNumber": np.asarray(kept, dtype=np.int64),
            "Location_Center_X": np.full(len(kept), np.nan),
            "Location_Center_Y": np.full(len(kept), np.nan),
            "Crop_Padded": np.zeros(len(kept), dtype=bool),
        })
        return FieldResult(task.key, record, array, cells, issues)


def import_singlecell(
    folder: str | Path, metadata: str | Path, out: str | Path, *,
    moa: str | Path | None = None, channels: tuple[str, ...] | None = None,
    workers: int = 1, strict: bool = False, overwrite: bool = False,
    progress: Progress | None = None,
) -> CropSummary:
    """Import pre-cut single-cell arrays and their metadata table into a crop store.

    Parameters
    ----------
    folder
        Root the table's crop paths are relative to.
    metadata
        One row per crop: a path column (``crop_path``), plate/well/compound/concentration
        (and optionally moa) in any naming style :func:`cellprof.tables.canonical_columns`
        knows; ``cell_index`` (0-based) becomes ``ObjectNumber``.
    channels
        Names for the arrays' channels; default: the table's ``FileName_<name>`` columns
        when they match the channel count, else ``ch0, ch1, ...``.
    """
    folder, metadata, out = Path(folder), Path(metadata), Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    table = canonical_columns(read_table(metadata))
    path_col = next((c for c in _PATH_COLUMNS if c in table.columns), None)
    if path_col is None:
        raise InputError(f"{metadata}: missing column crop_path (the crop file, relative "
                         f"to {folder})")
    require_columns(table, [PLATE], metadata)
    table["_dir"] = table[path_col].map(lambda p: str(Path(str(p)).parent))
    names = channels_of(table)
    if SITE not in table.columns:
        src = table[f"FileName_{names[0]}"] if names else table["_dir"]
        table[SITE] = src.map(lambda s: site_from_filename(Path(str(s)).name) or 1)
    table = complete_metadata(table, names[0] if names else "")
    if moa is not None:
        table = join_moa(table, read_moa_table(moa), moa)
    first = folder / str(table[path_col].iloc[0])
    try:
        sample = np.load(first, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{first}: cannot read the first crop ({exc})") from None
    shape = sample.shape if sample.ndim == 3 else sample.shape + (1,)
    if shape[0] != shape[1]:
        raise InputError(f"{first}: crops must be square (H, W, C) arrays, got {sample.shape}")
    n_ch = shape[2]
    chans = list(channels) if channels else (names if len(names) == n_ch
                                              else [f"ch{i}" for i in range(n_ch)])
    if len(chans) != n_ch:
        raise InputError(f"--channels names {len(chans)} channels, the crops have {n_ch}")
    meta_cols = [c for c in table.columns if c.startswith("Metadata_")]
    tasks = _tasks(table, folder, path_col, meta_cols, metadata)
    dtype = str(sample.dtype) if sample.dtype.kind in "uif" else "float32"
    cell_cols, field_cols = store_columns(tasks, chans)
    settings = {"mode": "singlecell", "folder": str(folder.resolve()),
                "metadata": str(metadata.resolve()), "moa": str(moa) if moa else None,
                "channels": chans}
    writer = CropStoreWriter(out, channels=chans, crop_size=shape[0], dtype=dtype,
                             cell_columns=cell_cols, field_columns=field_cols,
                             config=settings, resume=True)
    try:
        done = set(writer.done_fields("Field_Key")["Field_Key"])
        todo = [t for t in tasks if t.key not in done]
        commit_results(ordered_map(_LoadJob(shape, dtype, chans), todo, workers), writer,
                       strict=strict, total=len(tasks), done=len(done), progress=progress)
        return finish_store(writer, out)
    finally:
        writer.close()


def _tasks(table: pd.DataFrame, folder: Path, path_col: str, meta_cols: list[str],
           source: Path) -> list[CellFieldTask]:
    table = table.assign(_row=np.arange(len(table)) + 2)
    if "cell_index" in table.columns:
        table["_obj"] = pd.to_numeric(table["cell_index"], errors="coerce").fillna(-1).astype(int) + 1
    else:
        table["_obj"] = table.groupby([PLATE, "_dir"], sort=False).cumcount() + 1
    tasks = []
    for i, ((plate, d), g) in enumerate(table.groupby([PLATE, "_dir"], sort=False)):
        first = g.iloc[0]
        tasks.append(CellFieldTask(
            key=f"{plate}/{d}", image_number=i + 1,
            meta={c: first[c].item() if isinstance(first[c], np.generic) else first[c]
                  for c in meta_cols},
            paths=[folder / str(p) for p in g[path_col]], rows=g["_row"].tolist(),
            object_numbers=g["_obj"].tolist(), table_file=str(source),
        ))
    return tasks
