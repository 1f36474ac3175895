"""The crop store's two tables, declared once: which columns ``/cells`` and ``/fields`` have.

Every way of making a crop store (cropping a screen, importing pre-cut cells, merging
shards) builds its rows here, so a new input format cannot drift into a third layout.
The metadata names follow CellProfiler and pycytominer (``Metadata_Plate`` …); the rest of
cellprof imports them from here instead of spelling them out.

``/cells``, one row per crop::

    Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Compound,
    Metadata_Concentration, Metadata_MOA, <other Metadata_* of the input>,
    ImageNumber, ObjectNumber, Location_Center_X, Location_Center_Y, Crop_Padded

``/fields``, one row per field (image) processed::

    Field_Key, ImageNumber, <the same Metadata_*>, Status, Height, Width,
    Count_Objects, Count_Cropped, Count_EdgeSkipped, Count_Rejected,
    PathName_<ch>, FileName_<ch>, Intensity_<stat>_<ch>, Threshold_Nuclei_<ch>

``Threshold_Nuclei_<ch>`` is the level ``crop --segment`` cut the smoothed channel at to find
the field's nuclei (empty for the other channels, and without ``--segment``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from cellprof.formats.store import column_kind

#: Canonical per-cell metadata names (CellProfiler / pycytominer conventions).
PLATE, WELL, SITE = "Metadata_Plate", "Metadata_Well", "Metadata_Site"
COMPOUND, CONCENTRATION, MOA = "Metadata_Compound", "Metadata_Concentration", "Metadata_MOA"
#: Metadata every store has, in this order, whatever the input holds.
KEY_METADATA = (PLATE, WELL, SITE, COMPOUND, CONCENTRATION, MOA)
_KEY_KINDS = {PLATE: "str", WELL: "str", SITE: "int", COMPOUND: "str",
              CONCENTRATION: "float", MOA: "str"}

#: CellProfiler's object keys and the crop's centre in its field (pixels, 0-based).
IMAGE_NUMBER, OBJECT_NUMBER, TABLE_NUMBER = "ImageNumber", "ObjectNumber", "TableNumber"
CENTER_X, CENTER_Y = "Location_Center_X", "Location_Center_Y"
PADDED = "Crop_Padded"
CELL_KEYS = {IMAGE_NUMBER: "int", OBJECT_NUMBER: "int", CENTER_X: "float", CENTER_Y: "float",
             PADDED: "bool"}

FIELD_KEY, STATUS = "Field_Key", "Status"
COUNTS = ("Count_Objects", "Count_Cropped", "Count_EdgeSkipped", "Count_Rejected")
INTENSITY_STATS = ("MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity",
                   "Percentile01", "MedianIntensity", "Percentile99")


def threshold_column(channel: str) -> str:
    """The ``/fields`` column of the threshold nuclei were found at in ``channel``: with it
    ``measure`` cuts each crop's nucleus at the edge ``crop --segment`` found, where a
    threshold of the crop alone drifts with the brightness of the nuclei in view."""
    return f"Threshold_Nuclei_{channel}"


def store_columns(meta: pd.DataFrame, channels: Iterable[str]
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """Column kinds of ``/cells`` and ``/fields``, fixed before the first field is written.

    ``meta`` holds every cell's (or field's) metadata columns, so a kind is read from all
    values of a column, not from one field's.
    """
    channels = list(channels)
    kinds = {c: column_kind(meta[c]) for c in meta.columns}
    ordered = dict(_KEY_KINDS)
    if SITE in kinds:  # a site that is not a number (``s1``) is kept as the input has it
        ordered[SITE] = kinds[SITE]
    ordered.update({c: k for c, k in kinds.items() if c not in ordered})
    cells = {**ordered, **CELL_KEYS}
    fields = {FIELD_KEY: "str", IMAGE_NUMBER: "int", **ordered, STATUS: "str",
              "Height": "int", "Width": "int", **{c: "int" for c in COUNTS}}
    for ch in channels:
        fields[f"PathName_{ch}"] = "str"
        fields[f"FileName_{ch}"] = "str"
    for ch in channels:
        for stat in INTENSITY_STATS:
            fields[f"Intensity_{stat}_{ch}"] = "float"
    for ch in channels:
        fields[threshold_column(ch)] = "float"
    return cells, fields


def field_row(key: str, image_number: int, meta: Mapping[str, Any], *, status: str = "ok",
              n_objects: int = 0) -> dict[str, Any]:
    """A field's ``/fields`` row before its counts and statistics are known."""
    return {FIELD_KEY: key, IMAGE_NUMBER: image_number, **meta, STATUS: status,
            "Count_Objects": n_objects, "Count_Cropped": 0, "Count_EdgeSkipped": 0,
            "Count_Rejected": 0}


Columns = dict[str, np.ndarray]
"""A table as equal-length columns: what a worker hands the writer (a DataFrame per field
cost more to build, send and take apart than cutting the field's crops)."""


def cell_rows(meta: Mapping[str, Any] | pd.DataFrame, image_number: int,
              object_numbers: np.ndarray, centres: np.ndarray | None = None,
              padded: np.ndarray | None = None) -> Columns:
    """The ``/cells`` rows of one field's crops, as columns.

    ``meta`` is either the field's metadata (shared by every crop) or one row per crop;
    ``centres`` is ``(n, 2)`` x, y in field pixels, or None when the crops came pre-cut.
    """
    n = len(object_numbers)
    if isinstance(meta, pd.DataFrame):
        if len(meta) != n:
            raise ValueError(f"{len(meta)} metadata rows for {n} cells")
        columns = {k: meta[k].to_numpy() for k in meta.columns}
    else:
        columns = {k: np.full(n, v, dtype=object if isinstance(v, str) or v is None else None)
                   for k, v in meta.items()}
    xy = np.full((n, 2), np.nan) if centres is None else np.asarray(centres, np.float64)
    columns.update({
        IMAGE_NUMBER: np.full(n, image_number, dtype=np.int64),
        OBJECT_NUMBER: np.asarray(object_numbers, dtype=np.int64),
        CENTER_X: xy[:, 0] if n else np.zeros(0), CENTER_Y: xy[:, 1] if n else np.zeros(0),
        PADDED: np.zeros(n, bool) if padded is None else np.asarray(padded, dtype=bool),
    })
    return columns


def merged_columns(tables: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """One column layout for stores being merged: every column of any of them, in first-seen
    order; a column stored as different kinds (a site that is a number in one shard and text
    in another) becomes text, so no value is lost."""
    out: dict[str, str] = {}
    for kinds in tables:
        for col, kind in kinds.items():
            if col in out and out[col] != kind:
                out[col] = "float" if {out[col], kind} == {"int", "float"} else "str"
            else:
                out.setdefault(col, kind)
    return out
