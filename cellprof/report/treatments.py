"""Which cells ``cellprof show`` draws together: treatments, or plates when there are none.

A treatment is ``Metadata_Compound @ Metadata_Concentration`` ("taxol@0.3"), or the compound
alone when its concentration is missing (never "taxol@nan"); the control's cells form one
population whatever their concentration, and come first. A screen whose cells name no compound
(cropped from an image table without one) is grouped by plate instead, with one line saying
what its missing labels cost: the figures that compare treatments, and ``cellprof match``.
No torch here: this is bookkeeping on the crop store's cell table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.schema import COMPOUND, CONCENTRATION, MOA, PLATE
from cellprof.profile.controls import control_rows
from cellprof.report.config import ShowConfig


@dataclass(frozen=True)
class Groups:
    """The cells grouped for the figures: by treatment (control first) or by plate."""

    rows: dict[str, np.ndarray]
    """Group -> its store rows, in drawing order."""
    moa: dict[str, str]
    """Group -> its MOA ("" when unknown, and for plates)."""
    control: str | None = None
    """The control's group; None when the cells name no compound (the groups are plates)."""
    unlabelled: str = ""
    """Without compounds: what the treatment figures need (one line)."""


def group_cells(cells: pd.DataFrame, crops: str | Path, config: ShowConfig) -> Groups:
    """``cells`` (a crop store's cell table, ``config.compound_column`` already copied to
    ``Metadata_Compound``) by treatment, or by plate when no cell names a compound.

    Raises :class:`InputError` when there are compounds but no control among them.
    """
    named = cells[COMPOUND].astype("string").str.strip().fillna("").to_numpy(object) \
        if COMPOUND in cells.columns else np.full(len(cells), "", object)
    if (named != "").any():
        return _treatments(cells, named, crops, config)
    return _plates(cells, _unlabelled(crops, COMPOUND in cells.columns, config))


def _unlabelled(crops: str | Path, has_column: bool, config: ShowConfig) -> str:
    """The one line saying what a screen without compounds does not get, and the fix."""
    column = config.compound_column
    return (f"typical cells, interpolation and matching need treatment labels, and {crops} has "
            f"none ({column} {'is empty' if has_column else 'missing'}): a compound per well "
            f"in {column} (or another column, named with --compound-column), a control among "
            f"them ({config.control or config.control_query}; --control or --control-query "
            f"name another) and optionally {CONCENTRATION}; crop from an image table that "
            "has them")


def _plates(cells: pd.DataFrame, why: str) -> Groups:
    """A screen without compounds: its cells by plate."""
    plates = cells[PLATE].astype(str) if PLATE in cells.columns else \
        pd.Series("", index=cells.index)
    rows = {f"plate {p}" if p else "all cells": np.asarray(idx)
            for p, idx in sorted(plates.groupby(plates).indices.items())}
    return Groups(rows, dict.fromkeys(rows, ""), None, why)


def _treatments(cells: pd.DataFrame, compound: np.ndarray, crops: str | Path,
                config: ShowConfig) -> Groups:
    """The cells by treatment, the controls pooled and first; cells that name no compound
    and are not controls are left out."""
    controls = control_rows(cells, config.control, config.control_query,
                            f"{crops}: the crop store's cells")
    if not controls.any():
        names = sorted(set(compound) - {""})
        raise InputError(f"{crops}: no cells of the control {config.control!r} in {COMPOUND}; "
                         f"name the control compound with --control or choose the controls "
                         f"with --control-query (compounds here: "
                         f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
    # the controls are pooled under their compound's name, or "control" when a query
    # chose cells of several compounds
    named = set(compound[controls])
    control = named.pop() if len(named) == 1 else "control"
    conc = pd.to_numeric(cells[CONCENTRATION], errors="coerce").to_numpy(np.float64) \
        if CONCENTRATION in cells.columns else np.full(len(cells), np.nan)
    kinds = pd.DataFrame({
        "label": [control if k else f"{c}@{x:g}" if np.isfinite(x) else c
                  for c, x, k in zip(compound, conc, controls)],
        "rest": ~controls, "compound": compound, "conc": conc,
        "moa": cells[MOA].astype(str).to_numpy() if MOA in cells.columns else ""})
    kinds = kinds[controls | (compound != "")]
    order = kinds.sort_values(["rest", "compound", "conc"], kind="stable")["label"].unique()
    rows = kinds.groupby("label").groups  # label -> store rows (kinds keeps their index)
    known = kinds[kinds["moa"] != ""].groupby("label")["moa"].first()
    return Groups({t: np.asarray(rows[t]) for t in order},
                  {t: str(known.get(t, "")) for t in order}, control)


def split_treatment(label: str) -> tuple[str, float]:
    """"taxol@0.3" -> ("taxol", 0.3); a label without a number -> (label, nan).

    >>> split_treatment("taxol@0.3"), split_treatment("taxol")
    (('taxol', 0.3), ('taxol', nan))
    """
    compound, at, conc = label.rpartition("@")
    try:
        return (compound, float(conc)) if at else (label, np.nan)
    except ValueError:
        return label, np.nan


def concentrations(treatments: list[str]) -> str:
    """" @ 0.3, 1" for a compound's treatments; "" when none has a concentration.

    >>> concentrations(["taxol@0.3", "taxol@1"]), concentrations(["taxol"])
    (' @ 0.3, 1', '')
    """
    concs = [split_treatment(t)[1] for t in treatments]
    if not np.isfinite(concs).any():
        return ""
    return " @ " + ", ".join(f"{c:g}" if np.isfinite(c) else "–" for c in concs)


def choose_treatment(means: Mapping[str, np.ndarray], control: str, wanted: str | None) -> str:
    """The interpolation target among the keys of ``means`` (treatment -> mean latent).

    ``wanted`` is "compound@conc" (concentration compared as a number), a compound name (its
    highest concentration), or None for the treatment farthest from ``control`` (Euclidean).
    """
    others = [t for t in means if t != control]
    if not others:
        raise InputError(f"only control ({control}) cells: no treatment to compare with")
    if wanted is None:
        return max(others, key=lambda t: float(np.linalg.norm(means[t] - means[control])))
    if wanted == control:
        raise InputError(f"--treatment {wanted!r} is the control; name a treatment")
    compound, conc = split_treatment(wanted)
    hits = [t for t in others if split_treatment(t)[0] == compound and
            ("@" not in wanted or np.isclose(split_treatment(t)[1], conc, rtol=1e-6, atol=0.0))]
    if not hits:
        raise InputError(f"--treatment {wanted!r}: no such treatment (compound@concentration or "
                         f"compound); available: {', '.join(others[:8])}"
                         f"{f', ... ({len(others)} in all)' if len(others) > 8 else ''}")
    return max(hits, key=lambda t: np.nan_to_num(split_treatment(t)[1], nan=-np.inf))
