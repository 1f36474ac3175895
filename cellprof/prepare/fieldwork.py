"""Work on one field (one image set): read its channels, find or take its nuclei, cut crops.

These functions run inside worker processes, so they take and return plain picklable
values and never touch the output file; the parent commits their results in order.
Memory per worker is bounded by one field's channels plus its crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellprof.errors import ChannelOrder, ImageError, MixedBitDepth, WrongSize
from cellprof.formats.images import (
    channel_names,
    intensity_stats,
    ome_plane,
    read_planes,
    single_plane_tiff,
)
from cellprof.formats.schema import (
    CENTER_X,
    CENTER_Y,
    PLATE,
    Columns,
    cell_rows,
    field_row,
    threshold_column,
)
from cellprof.prepare.illumination import correct
from cellprof.prepare.segment import THRESHOLD, SegmentConfig, find_nuclei


@dataclass
class FieldTask:
    """Everything a worker needs to crop one field."""

    key: str
    image_number: int
    row: int                                   # 1-based line of the image table
    meta: dict[str, Any]                       # Metadata_* values of this field
    files: list[tuple[str, Path, int | str | None]]  # (channel, resolved path, plane: its
    # index, the OME channel name to look it up by in this file, or None for a single plane)
    table_file: str                            # image table path, for issue reports
    object_file: str = ""
    centres: np.ndarray | None = None          # (n, 2) x, y; None = segment the nuclei
    object_numbers: np.ndarray | None = None
    object_rows: np.ndarray | None = None      # 1-based lines of the object table
    object_meta: dict[str, np.ndarray] | None = None  # each object's own Metadata_* values
    nucleus_areas: np.ndarray | None = None    # the objects' AreaShape_Area, when nuclei
    expected_shape: tuple[int, int] | None = None
    illum: np.ndarray | None = None            # (C, H, W) illumination function, or None


@dataclass
class FieldResult:
    """A worker's answer: crops and rows to commit, plus what went wrong."""

    task_key: str
    field: dict[str, Any]
    crops: np.ndarray
    cells: Columns
    issues: list[dict[str, Any]] = field(default_factory=list)


def issue(kind: str, file: str | Path, row: int, reason: str) -> dict[str, Any]:
    """One problem report: what kind, which file and row (-1 = whole file), and why."""
    return {"kind": kind, "file": str(file), "row": int(row), "reason": reason}


class FieldBuffer:
    """One field's ``(C, H, W)`` array, kept from one field to the next within a process.

    Decoding each channel's TIFF straight into it, rather than into a new array per file
    that ``np.stack`` then copies, saves a fresh allocation of the whole field every field
    (6 MB for three 1024 x 1024 channels: the kernel faults in and zeroes every page) and
    the copy. Measured on the crop benchmark's fields, reading a field took 23.5 ms that
    way and 17.6 ms into a kept array (docs/benchmarks.md). What it holds is valid until the
    next field is read into it, so callers copy what they keep (crops are copies).
    """

    def __init__(self) -> None:
        self._array: np.ndarray | None = None

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype``: the kept one when it fits."""
        if self._array is None or self._array.shape != shape or self._array.dtype != dtype:
            self._array = None  # free the old field before allocating the new one
            self._array = np.empty(shape, dtype)
        return self._array

    def release(self) -> None:
        """Give the memory back (a run that read its fields in the parent process does so
        at its end)."""
        self._array = None


WORKER_BUFFER = FieldBuffer()
"""The buffer :func:`process_field` reads into in this process (one field in flight per
worker process; a run in the parent releases it when done)."""


def _decode_into(task: FieldTask, buffer: FieldBuffer) -> np.ndarray | None:
    """The field read straight into ``buffer`` when every channel is its own single-plane
    TIFF of one size and type (nearly every screen); None otherwise, or on any problem,
    for :func:`load_field`'s general reader to read or to report."""
    paths = [path for _, path, _ in task.files]
    if len(set(paths)) != len(paths) or any(plane not in (None, 0) for _, _, plane in task.files):
        return None
    stack = None
    for i, path in enumerate(paths):
        with single_plane_tiff(path) as series:
            if series is None:
                return None
            shape = tuple(series.shape)
            if stack is None:
                if task.expected_shape and shape != tuple(task.expected_shape):
                    return None
                stack = buffer.get((len(paths), *shape), series.dtype)
            elif shape != stack.shape[1:] or series.dtype != stack.dtype:
                return None
            try:
                series.asarray(out=stack[i])
            except Exception:  # the general reader names the file and the reason
                return None
    return stack


def load_field(task: FieldTask, buffer: FieldBuffer | None = None) -> np.ndarray:
    """The field's selected channels as ``(C, H, W)``, in the store's channel order.

    With ``buffer``, single-plane TIFFs are decoded into it (see :class:`FieldBuffer`) and
    the array returned is the buffer's, valid until the next field is read into it.

    Raises
    ------
    ImageError
        Missing or unreadable file, a plane index the file does not have, a channel its
        own OME names lack (``MissingChannel``), or channels of different sizes / a size
        other than the image table's Height/Width.
    """
    if buffer is not None:
        stack = _decode_into(task, buffer)
        if stack is not None:
            return stack
    cache: dict[Path, np.ndarray] = {}
    names: dict[Path, list[str] | None] = {}
    planes = []
    for channel, path, plane in task.files:
        if path not in cache:
            cache[path] = read_planes(path)
        stack = cache[path]
        if isinstance(plane, str):  # named in this file's own OME metadata (header only)
            if path not in names:
                names[path] = channel_names(path)
            plane = ome_plane(path, plane, stack.shape[0], names[path])
        elif plane is not None and stack.shape[0] > 1:  # Frame_: does the file agree?
            if path not in names:
                names[path] = channel_names(path)
            _check_frame(path, channel, plane, names[path])
        if plane is None:
            if stack.shape[0] != 1:
                raise ImageError(f"{path}: holds {stack.shape[0]} planes but the image table "
                                 f"gives no Frame_{channel}/Channel_{channel} to pick one")
            plane = 0
        if not 0 <= plane < stack.shape[0]:
            raise ImageError(f"{path}: channel {channel} wants plane {plane}, the file "
                             f"has {stack.shape[0]}")
        planes.append(stack[plane])
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        sizes = ", ".join(f"{c} {p.shape[1]}x{p.shape[0]}" for (c, _, _), p in
                          zip(task.files, planes, strict=True))
        raise WrongSize(f"{task.files[0][1]}: channels differ in size ({sizes})")
    if task.expected_shape and planes[0].shape != task.expected_shape:
        h, w = task.expected_shape
        raise WrongSize(f"{task.files[0][1]}: image is {planes[0].shape[1]}x"
                         f"{planes[0].shape[0]} px, the image table says {w}x{h}")
    if len({p.dtype for p in planes}) > 1:  # np.stack would widen the narrower silently
        kinds = ", ".join(f"{c} {p.dtype} ({path.name})" for (c, path, _), p in
                          zip(task.files, planes, strict=True))
        raise MixedBitDepth(f"{task.files[0][1].parent}: the field's channels have different "
                            f"pixel types ({kinds}); convert them to one bit depth")
    return np.stack(planes)


def _check_frame(path: Path, channel: str, plane: int, names: list[str] | None) -> None:
    """Refuse a ``Frame_`` plane that the file's own OME channel names give to another
    channel: the table and the file disagree, and taking either silently could swap two
    channels of this field."""
    if not names or channel not in names or names.index(channel) == plane:
        return
    said = names[plane] if 0 <= plane < len(names) else "no channel"
    raise ChannelOrder(f"{path}: the image table's Frame_{channel} is plane {plane}, but the "
                       f"file's own OME names call that plane {said} and put {channel} on "
                       f"plane {names.index(channel)} (names: {', '.join(names)}); fix the "
                       f"Frame_ column, or drop the Frame_ columns to read planes by name")


def cut(stack: np.ndarray, x: float, y: float, size: int, pad: bool
        ) -> tuple[np.ndarray | None, bool]:
    """A ``(C, size, size)`` crop centred on ``(x, y)`` and whether it was padded.

    The centre pixel is ``(round(y), round(x))`` and lands at index ``size // 2`` of the
    crop (index 34 of a 68-pixel crop), CellProfiler's 0-based pixel coordinates. A crop
    that leaves the image is None, or with ``pad`` filled with zeros where it leaves.
    """
    _, h, w = stack.shape
    x0 = int(np.floor(x + 0.5)) - size // 2
    y0 = int(np.floor(y + 0.5)) - size // 2
    if x0 >= 0 and y0 >= 0 and x0 + size <= w and y0 + size <= h:
        return stack[:, y0:y0 + size, x0:x0 + size], False
    if not pad:
        return None, False
    out = np.zeros((stack.shape[0], size, size), dtype=stack.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + size, w), min(y0 + size, h)
    out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = stack[:, sy0:sy1, sx0:sx1]
    return out, True


def process_field(task: FieldTask, size: int, pad: bool, dtype: str,
                  channels: list[str], segment: SegmentConfig | None,
                  nucleus_channel: int, source_dtype: str | None = None,
                  buffer: FieldBuffer | None = None) -> FieldResult:
    """Read one field, correct it, find its nuclei if asked, and cut every crop.

    ``source_dtype`` is the screen's pixel type (its first field's): a field of another
    type fails with a ``mixed_bit_depth`` issue rather than mixing scales. Crops holding
    NaN or infinite pixels are rejected (one ``nonfinite_pixels`` issue per field), since
    one such pixel makes every loss of a training step NaN. ``buffer`` is where to read the
    field (see :class:`FieldBuffer`); the result never refers to it.
    """
    out_dtype = np.dtype(dtype)
    empty = np.zeros((0, len(channels), size, size), dtype=out_dtype)
    record = field_row(task.key, task.image_number, task.meta,
                       n_objects=0 if task.centres is None else len(task.centres))
    for ch, path, _ in task.files:
        record[f"PathName_{ch}"] = str(path.parent)
        record[f"FileName_{ch}"] = path.name
    try:
        stack = load_field(task, buffer)
    except ImageError as exc:
        record["Status"] = exc.kind
        return FieldResult(task.key, record, empty, {},
                           [issue(exc.kind, task.table_file, task.row, str(exc))])
    issues: list[dict[str, Any]] = []
    if source_dtype is not None and stack.dtype.str != source_dtype:
        reason = (f"{task.files[0][1]}: pixel type {stack.dtype}, but the screen's first "
                  f"image is {np.dtype(source_dtype)}; their cells would be on different "
                  "scales")
        record["Status"] = "mixed_bit_depth"
        return FieldResult(task.key, record, empty, {},
                           [issue("mixed_bit_depth", task.table_file, task.row, reason)])
    if not np.can_cast(stack.dtype, out_dtype, "safe"):
        reason = (f"{task.files[0][1]}: pixel type {stack.dtype} does not fit the store's "
                  f"{out_dtype}")
        record["Status"] = "unexpected_dtype"
        return FieldResult(task.key, record, empty, {},
                           [issue("unreadable_image", task.table_file, task.row, reason)])
    if task.illum is not None:
        stack = correct(stack, task.illum)
    _, h, w = stack.shape
    record.update(Height=h, Width=w)
    finite = np.isfinite(stack).all(axis=0) if stack.dtype.kind == "f" else None
    for ch, plane in zip(channels, stack, strict=True):
        if finite is not None and not finite.all():  # statistics of the finite pixels
            plane = np.where(finite, plane, np.median(plane[finite]) if finite.any() else 0)
        record.update({f"Intensity_{k}_{ch}": v for k, v in intensity_stats(plane).items()})

    if task.centres is None:
        found = find_nuclei(stack[nucleus_channel], segment or SegmentConfig())
        record[threshold_column(channels[nucleus_channel])] = found.attrs.get(THRESHOLD)
        centres = found[[CENTER_X, CENTER_Y]].to_numpy(dtype=np.float64)
        numbers = found["ObjectNumber"].to_numpy()
        rows = np.full(len(found), -1)
    else:
        centres, numbers, rows = task.centres, task.object_numbers, task.object_rows
    if finite is not None and not finite.all():
        issues.append(issue("nonfinite_pixels", task.table_file, task.row,
                            f"{task.files[0][1]}: {int((~finite).sum())} NaN or infinite "
                            "pixels; cells whose crop holds one are rejected"))
    # Crops are cut straight into the field's output array (no list of views to stack).
    array = np.empty((len(centres), len(channels), size, size), dtype=out_dtype)
    kept, padded = [], []
    n_edge = n_bad = 0
    for i, (x, y) in enumerate(centres):
        if not (np.isfinite(x) and np.isfinite(y)):
            n_bad += 1
            issues.append(issue("missing_centre", task.object_file, rows[i],
                                f"object {numbers[i]} of image {task.image_number} has no centre"))
            continue
        if not (-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
            n_bad += 1
            issues.append(issue("centre_outside", task.object_file, rows[i],
                                f"object {numbers[i]}: centre ({x:.1f}, {y:.1f}) lies outside "
                                f"image {task.image_number} ({w}x{h} px)"))
            continue
        crop, was_padded = cut(stack, x, y, size, pad)
        if crop is None:
            n_edge += 1
            continue
        if finite is not None and not np.isfinite(crop).all():
            n_bad += 1
            continue
        array[len(kept)] = crop
        kept.append(i)
        padded.append(was_padded)
    record.update(Count_Objects=len(centres), Count_Cropped=len(kept),
                  Count_EdgeSkipped=n_edge, Count_Rejected=n_bad)
    kept_idx = np.asarray(kept, dtype=np.int64)
    cells = cell_rows(task.meta, task.image_number, np.asarray(numbers)[kept_idx],
                      centres[kept_idx], np.asarray(padded, dtype=bool))
    if task.centres is not None and task.object_meta:
        cells.update({c: np.asarray(v)[kept_idx] for c, v in task.object_meta.items()})
    return FieldResult(task.key, record, array[:len(kept)], cells, issues)


def field_mean(task: FieldTask) -> tuple[str, np.ndarray | None]:
    """A field's channels as float64 for the illumination estimate (None if unreadable)."""
    try:
        return str(task.meta.get(PLATE, "")), load_field(task, WORKER_BUFFER).astype(np.float64)
    except ImageError:
        return str(task.meta.get(PLATE, "")), None
