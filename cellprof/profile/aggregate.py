"""Cells to wells to treatments: pycytominer's ``aggregate``, and profiles as tables.

``cellprof match`` aggregates cells into treatment profiles with :func:`aggregate`, and
``cellprof export`` writes a profiles file (:mod:`cellprof.formats.profiles`) as a
pycytominer-ready table at the cell, well or treatment level with :func:`export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.profiles import (
    META_KEYS,
    feature_columns,
    metadata_columns,
    profile_table,
    write_table,
)
from cellprof.formats.safeio import OutputLock, private_atomic_path
from cellprof.formats.schema import COMPOUND, CONCENTRATION, PLATE, WELL
from cellprof.profile.controls import use_compound_column


def aggregate(table: pd.DataFrame, by: Sequence[str], method: str = "mean",
              features: Sequence[str] | None = None) -> pd.DataFrame:
    """Collapse rows to one per group of ``by`` (pycytominer's ``aggregate``).

    Metadata columns constant within every group are kept; features are averaged
    (``mean``) or take the median (``median``, robust to a few odd cells). A column
    ``Metadata_Count`` says how many rows each profile summarises.
    """
    if method not in ("mean", "median"):
        raise InputError(f"--aggregate must be mean or median, got {method!r}")
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise InputError(f"cannot aggregate: no column {', '.join(missing)}")
    feats = list(features) if features is not None else feature_columns(table)
    groups = table.groupby(list(by), sort=True, dropna=False)
    agg = groups[feats].agg(method)
    meta = [c for c in metadata_columns(table) if c not in by]
    constant = [c for c in meta if (groups[c].nunique(dropna=False) <= 1).all()]
    out = pd.concat([groups[constant].first(), groups.size().rename("Metadata_Count"), agg],
                    axis=1).reset_index()
    return out


LEVELS = ("cell", "well", "treatment")
FORMATS = ("parquet", "csv")


def export_table(profiles: str | Path, level: str = "cell", method: str = "mean",
                 compound_column: str | None = None) -> pd.DataFrame:
    """A profiles file as a pycytominer-ready table: ``Metadata_*`` columns, then features.

    ``cell``: one row per cell, identifiers prefixed ``Metadata_``; ``well``: cells averaged
    per plate and well (``Metadata_Count`` cells); ``treatment``: wells averaged per compound
    and concentration, each well counting once as in ``cellprof match``
    (``Metadata_Count`` wells, ``Metadata_Cell_Count`` cells). Not normalised.
    ``compound_column`` names the compound when it is not ``Metadata_Compound``
    (``Metadata_pert_iname`` …); it is copied to ``Metadata_Compound``.
    """
    if level not in LEVELS:
        raise InputError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    table = profile_table(profiles)
    table = table.rename(columns={c: f"Metadata_{c}" for c in META_KEYS if c in table.columns})
    table = use_compound_column(table, compound_column, f"{profiles}: the profiles")
    if level in ("well", "treatment"):
        table = aggregate(table, [PLATE, WELL], method)
    if level == "treatment":
        missing = [c for c in (COMPOUND, CONCENTRATION) if c not in table.columns]
        if missing:
            raise InputError(f"{profiles}: --level treatment needs {', '.join(missing)} in the "
                             "profiles' metadata")
        cells = table.groupby([COMPOUND, CONCENTRATION], dropna=False)["Metadata_Count"].sum()
        table = aggregate(table.drop(columns="Metadata_Count"), [COMPOUND, CONCENTRATION],
                          method).merge(cells.rename("Metadata_Cell_Count").reset_index(),
                                        on=[COMPOUND, CONCENTRATION], how="left")
    meta = metadata_columns(table)
    return table[meta + [c for c in table.columns if c not in meta]]


def export(profiles: str | Path, path: str | Path, level: str = "cell",
           method: str = "mean", compound_column: str | None = None, *,
           overwrite: bool = True) -> Path:
    """Write :func:`export_table` as CSV or Parquet (by suffix), atomically.

    One writer per table: ``cellprof export`` and ``embed``/``measure --format`` hold an
    :class:`~cellprof.formats.safeio.OutputLock` on ``path`` while they write it, so a second
    run into it is refused, naming it; and each writes a temporary file of its own
    (:func:`~cellprof.formats.safeio.private_atomic_path`), so ``path`` is always the whole
    table of the last run that finished. ``overwrite=False`` refuses an existing ``path``
    (checked under the lock: two runs cannot both find it absent).
    """
    path = Path(path)
    with OutputLock(path):
        if path.exists() and not overwrite:
            raise InputError(f"{path}: exists; pass --overwrite to replace it")
        table = export_table(profiles, level, method, compound_column)
        with private_atomic_path(path) as tmp:
            write_table(table, tmp)
    return path
