"""``cellprof match``: profiles -> treatment profiles -> mechanism-of-action matching.

A run reads profiles (a cellprof ``.h5`` or any cell-, site- or well-level feature table),
averages cells to wells (or sites), normalises them against control wells (of their plate,
batch or the whole screen),
averages wells to treatments (compound x concentration), and asks of every treatment:
is its nearest other-compound treatment of the same mechanism (NSC)? and, excluding
treatments from its own batches too (NSCB)? and how well does similarity rank all
same-mechanism treatments first (mAP)? Conventions are those of BBBC021 (Ljosa et al.
2013); see ``nsc``, ``nscb`` and ``mean_average_precision`` for the exact definitions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from math import nan
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.profiles import (
    feature_columns,
    is_hdf5,
    profile_blocks,
    profile_table,
    write_table,
)
from cellprof.formats.safeio import OutputLock, refuse_repeats, write_json
from cellprof.prepare.tables import (
    COMPOUND,
    CONCENTRATION,
    MOA,
    PLATE,
    SITE,
    WELL,
    batch_of,
    canonical_columns,
    concentration_key,
    join_moa,
    read_moa_table,
    read_table,
    require_columns,
)
from cellprof.profile.aggregate import aggregate
from cellprof.profile.blocks import Blocks, check_blocks, weigh_blocks
from cellprof.profile.controls import (
    check_control_options,
    control_rows,
    describe_control,
    missing_compound_message,
    use_compound_column,
    use_concentration_column,
)
from cellprof.profile.normalize import SCOPES, SPHERE_EPS, method_name, normalize
from cellprof.profile.retrieval import (
    BATCHES,
    TREATMENT,
    accuracy,
    map_per_moa,
    mean_average_precision,
    nsc,
    nscb,
    retrieve,
    single_batch_moas,
)

__all__ = ["MatchConfig", "MatchResult", "load_profiles", "prepare", "nsc", "nscb",
           "mean_average_precision", "map_per_moa", "single_batch_moas", "accuracy",
           "run_match", "summary_rows", "moa_rows"]

METRICS = ("cosine", "correlation", "euclidean")
AGGREGATES = ("mean", "median")
# CellProfiler identifiers are numeric but not measurements (per-well means of them, as in
# BBBC021's per-well table, only echo how objects were numbered).
_ID_COLUMN = re.compile(r"(^|_)(ImageNumber|TableNumber)$|ObjectNumber(_\d+)?$"
                        r"|Number_Object_Number$|(^|_)Parent_[^_]+$")
NONFINITE = ("error", "drop-features", "drop-rows")
NORMALIZE_AT = ("well", "site", "cell")
_CONTROL = "Metadata__control"  # prepare()'s own mark of control rows, never an output
log = logging.getLogger("cellprof")


@dataclass(frozen=True)
class MatchConfig:
    """Settings of a match run; defaults are the BBBC021 convention (Ljosa et al. 2013)."""

    normalize: str = "zscore"
    """none | zscore | robust | sphere against control wells (normalize.py); pycytominer's
    standardize, mad_robustize and spherize are accepted and stored as these names."""
    scope: str = "plate"
    """Whose control wells give the statistics: each plate's, each batch's (plate-name
    prefix) or the whole screen's (for screens with too few controls per plate)."""
    aggregate: str = "mean"
    """How cells -> wells -> treatments are summarised: mean or median."""
    metric: str = "cosine"
    """Similarity of treatment profiles: cosine | correlation (Pearson) | euclidean."""
    control: str | None = None
    """Compound name of the negative control: normalisation baseline, never a query.
    None means DMSO, unless ``control_query`` chooses the controls (give one, not both)."""
    control_query: str | None = None
    """The controls as a pandas query on the profiles' metadata rows (cells or wells), for
    screens that mark them by role rather than name: ``"Metadata_pert_type == 'negcon'"``
    (JUMP, LINCS). Chosen rows serve exactly as ``control`` ones do."""
    compound_column: str = "Metadata_Compound"
    """The column naming each row's compound (``Metadata_pert_iname``,
    ``Metadata_JCP2022`` … in JUMP and LINCS); it is copied to ``Metadata_Compound``."""
    concentration_column: str = "Metadata_Concentration"
    """The column giving each row's dose (LINCS: ``Metadata_mmoles_per_liter``); it is
    copied to ``Metadata_Concentration``. A table without one has one dose per compound."""
    normalize_at: str = "well"
    """The rows normalised against the control rows of the same kind: "well", "site", or
    "cell" (each cell against the control cells, then cells -> wells; the spread is then
    between cells, not wells). Named apart from the output ``--level`` of embed/export,
    which says what a table's rows are; this says where the control statistics come from."""
    nonfinite: str = "error"
    """NaN/inf in features: error | drop-features | drop-rows (what is dropped is reported)."""
    allow_single_compound_moa: bool = False
    """Keep MOAs with one compound as candidates but never as queries (NSC undefined)."""
    sphere_eps: float = SPHERE_EPS
    """Ridge of the sphering (ZCA) whitening, in units of control correlation."""
    permutations: int = 1000
    """MOA-label shuffles behind each MOA's mAP p-value (0: no p-values)."""
    seed: int = 0
    """Seed of those shuffles: the same seed gives the same p-values."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalize", method_name(self.normalize))
        object.__setattr__(self, "control",
                           check_control_options(self.control, self.control_query))
        for name, allowed in (("scope", SCOPES), ("aggregate", AGGREGATES),
                              ("metric", METRICS),
                              ("normalize_at", NORMALIZE_AT),
                              ("nonfinite", NONFINITE)):
            if getattr(self, name) not in allowed:
                raise InputError(f"--{name.replace('_', '-')} must be one of "
                                 f"{', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if not self.sphere_eps > 0:
            raise InputError(f"sphere_eps must be positive, got {self.sphere_eps}")
        if self.permutations < 0:
            raise InputError(f"--permutations must be 0 or more, got {self.permutations}")


@dataclass(frozen=True)
class MatchResult:
    """The numbers of a match run and where they were written."""

    out_dir: Path
    nsc: float
    nscb: float
    nsc_per_compound: float
    nscb_per_compound: float
    map: float
    n_treatments: int
    n_compounds: int
    n_moas: int
    nscb_excluded_moas: list[str]
    metrics: dict[str, Any] = field(repr=False)
    paths: dict[str, Path] = field(repr=False)
    confusion: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    """NSC queries counted by true MOA (rows) and the MOA of their neighbour (columns);
    :func:`cellprof.report.plots.save_match_figures` draws it."""


def feature_names(table: pd.DataFrame) -> list[str]:
    """Features: numeric, not ``Metadata_*``, not a CellProfiler identifier
    (``ImageNumber``, ``TableNumber``, ``*ObjectNumber``, ``*_Number_Object_Number``,
    ``*_Parent_<object>``)."""
    return [c for c in feature_columns(table) if not _ID_COLUMN.search(str(c))]


def _use_columns(table: pd.DataFrame, columns: tuple[str | None, str | None], source: str
                 ) -> pd.DataFrame:
    """The user's (compound, concentration) columns copied to cellprof's names."""
    table = use_compound_column(table, columns[0], source)
    return use_concentration_column(table, columns[1], source)


def _join_image_table(table: pd.DataFrame, image_table: str | Path, source: str | Path,
                      columns: tuple[str | None, str | None] = (None, None)) -> pd.DataFrame:
    """Compound and concentration of each plate+well, from an image table (one row per
    site: the sites of a well must agree). ``columns`` are the image table's compound and
    concentration columns when not cellprof's names (they are kept beside them); a table
    without a concentration gives one dose per compound."""
    images = _use_columns(canonical_columns(read_table(image_table)), columns,
                          f"{image_table}: the image table")
    if COMPOUND not in images.columns:
        raise InputError(f"{image_table}: " + missing_compound_message(images, "the image table"))
    require_columns(images, [PLATE, WELL], image_table)
    require_columns(table, [PLATE, WELL], source)
    carried = [c for c in (COMPOUND, CONCENTRATION, *columns)
               if c is not None and c in images.columns]
    carried = list(dict.fromkeys(carried))
    images = images[[PLATE, WELL, *carried]].astype({PLATE: str, WELL: str})
    if CONCENTRATION in images.columns:
        images["_conc"] = concentration_key(images[CONCENTRATION])
    per_well = [COMPOUND, "_conc"] if "_conc" in images.columns else [COMPOUND]
    kinds = images.groupby([PLATE, WELL])[per_well].nunique(dropna=False).max(axis=1)
    if (kinds > 1).any():
        plate, well = kinds.index[kinds > 1][0]
        raise InputError(f"{image_table}: plate {plate} well {well} lists different "
                         "compounds/concentrations on different rows (sites)")
    wells = images.drop_duplicates([PLATE, WELL]).drop(columns="_conc", errors="ignore")
    table = table.drop(columns=carried + [CONCENTRATION], errors="ignore")
    table = table.astype({PLATE: str, WELL: str}).merge(wells, on=[PLATE, WELL], how="left",
                                                        validate="many_to_one")
    if table[COMPOUND].isna().all():
        raise InputError(f"{image_table}: no plate+well of {source} found (profiles have e.g. "
                         f"{table[PLATE].iloc[0]} {table[WELL].iloc[0]}, the image table "
                         f"{wells[PLATE].iloc[0]} {wells[WELL].iloc[0]})")
    return table


def blocks_of(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """The feature blocks of combined profiles files (``cellprof combine``); empty when
    they are not combined. Shards (one file per plate) must all be combined alike."""
    found = [(p, profile_blocks(p) if is_hdf5(p) else {}) for p in paths]
    first, blocks = found[0]
    for path, other in found[1:]:
        if other != blocks:
            def what(b: dict[str, list[str]]) -> str:
                return "blocks " + ", ".join(f"{k} ({len(v)})" for k, v in b.items()) \
                    if b else "no blocks"
            raise InputError(f"{path}: {what(other)}, but {first}: {what(blocks)}: shards of a "
                             "combined profile must be combined alike (the same files' kinds, "
                             "the same --names)")
    return blocks


def load_profiles(path: str | Path, image_table: str | Path | None = None,
                  moa: str | Path | None = None, compound_column: str | None = None,
                  concentration_column: str | None = None) -> pd.DataFrame:
    """Profiles as one pycytominer-style table, with compound, concentration and MOA.

    ``path`` is a cellprof profiles ``.h5`` or a CSV / CSV.gz / Parquet table at cell, site
    or well level, in pycytominer (``Metadata_Plate``) or CellProfiler database naming
    (``Image_Metadata_Plate``). ``image_table`` adds compound and concentration by plate
    and well (replacing any the profiles carry); ``moa`` adds ``Metadata_MOA`` by compound
    and concentration (6 significant digits, so 0.3 and 0.300 agree). Without them the
    profiles' own columns are used (``Metadata_moa`` is accepted too). ``compound_column``
    names the compound column when it is not ``Metadata_Compound`` (JUMP's and LINCS'
    ``Metadata_pert_iname`` …), in the image table when one is given, else in the profiles;
    ``concentration_column`` likewise the dose (``Metadata_mmoles_per_liter``).
    """
    path = Path(path)
    table = canonical_columns(profile_table(path) if is_hdf5(path) else read_table(path))
    if image_table is not None:
        table = _join_image_table(table, image_table, path,
                                  (compound_column, concentration_column))
    else:
        table = _use_columns(table, (compound_column, concentration_column),
                             f"{path}: the profiles")
    if moa is not None:
        missing = [c for c in (COMPOUND, CONCENTRATION) if c not in table.columns]
        if missing:
            raise InputError(
                f"{path}: has no {'/'.join(missing)} to join --moa on (a moa table pairs "
                "compound and concentration with a MOA): "
                + ("name the compound column with --compound-column or pass --image-table"
                   if COMPOUND in missing else "pass --image-table with a concentration "
                   "column, or give the profiles a Metadata_MOA column instead of --moa"))
        _require_compounds(table, compound_column or COMPOUND, str(path))
        table = join_moa(table, read_moa_table(moa), moa)
    return table


def _nonfinite(table: pd.DataFrame, features: list[str], how: str
               ) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Apply the ``nonfinite`` policy; return table, features and what was dropped."""
    bad = ~np.isfinite(table[features].to_numpy(np.float64))
    info: dict[str, Any] = {"dropped_features": [], "dropped_rows": 0, "dropped": []}
    if not bad.any():
        return table, features, info
    cols = [f for f, b in zip(features, bad.any(axis=0)) if b]
    rows = np.flatnonzero(bad.any(axis=1))
    if how == "error":
        first = table.iloc[rows[0]]
        where = ", ".join(f"{c[9:].lower()} {first[c]}" for c in (PLATE, WELL) if c in table)
        raise InputError(
            f"{int(bad.sum())} NaN/inf value(s) in {len(cols)} feature column(s) "
            f"({', '.join(cols[:5])}{' …' if len(cols) > 5 else ''}) and {len(rows)} row(s) "
            f"(first: row {rows[0] + 1}{', ' + where if where else ''}): use "
            "--nonfinite drop-features (nonfinite='drop-features') to drop those columns or "
            "drop-rows to drop those rows")
    if how == "drop-features":
        info["dropped_features"] = cols
        return table.drop(columns=cols), [f for f in features if f not in cols], info
    mask = bad.any(axis=1)
    info["dropped_rows"] = len(rows)
    info["dropped"] = [_dropped(table, mask, "NaN/inf features")]
    return table[~mask], features, info


def _dropped(table: pd.DataFrame, mask: np.ndarray | pd.Series, reason: str
             ) -> dict[str, Any]:
    """What dropping ``table[mask]`` loses, for the report: the reason, the rows and the
    wells (``plate well``) holding them; logged, so a notebook sees it too."""
    rows = table.loc[np.asarray(mask, bool)]
    keys = [c for c in (PLATE, WELL) if c in rows.columns]
    wells = [" ".join(map(str, k)) for k in
             rows[keys].drop_duplicates().itertuples(index=False)] if keys else []
    log.warning("match: %d row(s) dropped (%s) in %d well(s): %s", len(rows), reason,
                len(wells), ", ".join(wells[:4]) + (" …" if len(wells) > 4 else ""))
    return {"reason": reason, "rows": len(rows), "wells": wells}


def _require_compounds(table: pd.DataFrame, column: str, source: str) -> None:
    """Matching compares treatments, so a compound column naming none (a screen cropped
    without compounds) is refused first: --moa, which pairs compounds with MOAs, cannot help."""
    if not table[COMPOUND].astype("string").str.strip().fillna("").ne("").any():
        raise InputError(f"{source}: no compound in any of {len(table)} rows ({column} is "
                         "empty): matching needs a compound column; name the one that has "
                         "them with --compound-column, or join them by plate and well with "
                         "--image-table")


def _require_moa(table: pd.DataFrame) -> None:
    labels = table[MOA].astype("string").str.strip() if MOA in table.columns else None
    if labels is None or not (labels.fillna("") != "").any():
        why = "has no" if labels is None else "has an empty"
        raise InputError(
            f"profiles {why} MOA column (looked for {MOA}, Metadata_moa or moa): pass a moa "
            "table with --moa (columns compound, concentration, moa, as BBBC021_v1_moa.csv)")


def prepare(table: pd.DataFrame, config: MatchConfig = MatchConfig(),
            blocks: Blocks | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Cells -> normalised wells (or sites) -> treatment profiles ready for matching.

    Returns the treatment table — ``Metadata_Treatment`` (``compound@concentration``),
    compound, concentration, MOA, ``Metadata_Batches`` (``;``-joined batches of its wells),
    ``Metadata_Count`` (wells), ``Metadata_Query``, then features — without the control
    and without unlabelled treatments, and a report of every count and exclusion.

    ``blocks`` (block name -> its features, as a combined profiles file has them) weighs
    the blocks of a combined profile equally: after normalisation, each block's features
    are multiplied by one weight so that its total variance across the treatment profiles
    is 1 (:mod:`cellprof.profile.blocks`); the report's ``blocks`` says each one's width,
    total variance and weight.
    """
    table, features = _checked_table(table, config)
    if blocks:
        check_blocks(blocks, features)
    report: dict[str, Any] = {
        "n_input_rows": len(table), "n_input_features": len(features),
        "identifier_columns": [c for c in table.columns if c not in features
                               and not str(c).startswith("Metadata_")
                               and pd.api.types.is_numeric_dtype(table[c])]}
    table, features = _treated_rows(table, features, config, report)
    wells, features = _normalised_wells(table, features, config, report)
    treat = _treatments(wells, features, config, report)
    if blocks:
        # after normalisation (per feature) and aggregation (which commutes with a scale)
        kept = {name: [f for f in feats if f in features] for name, feats in blocks.items()}
        if empty := [name for name, feats in kept.items() if not feats]:
            raise InputError(f"feature block {empty[0]!r} has no feature left (all dropped: "
                             "no spread in the controls, or NaN/inf)")
        treat, report["blocks"] = weigh_blocks(treat, kept)
        for entry in report["blocks"]:
            entry["input_width"] = len(blocks[entry["name"]])
    return treat, report


def _checked_table(table: pd.DataFrame, config: MatchConfig) -> tuple[pd.DataFrame, list[str]]:
    """The table in cellprof's naming with every column matching needs, and its features."""
    # a table given as a DataFrame gets the naming a file gets (Metadata_moa -> Metadata_MOA)
    table = _use_columns(canonical_columns(table),
                         (config.compound_column, config.concentration_column), "profiles")
    if COMPOUND not in table.columns:
        raise InputError(missing_compound_message(table, "profiles"))
    _require_compounds(table, config.compound_column, "profiles")
    for col in (PLATE, WELL):
        if col not in table.columns:
            raise InputError(f"profiles have no {col} column: name it {col} (or Image_{col}, "
                             f"or {col[9:].lower()}), or join one with --image-table")
    if CONCENTRATION not in table.columns:  # one dose per compound (JUMP: all at 10 µM)
        table = table.assign(**{CONCENTRATION: np.nan})
    _require_moa(table)
    if config.normalize_at == "site" and SITE not in table.columns:
        raise InputError(f"--normalize-at site needs a {SITE} column in the profiles (use "
                         "--normalize-at well for well-level tables)")
    features = feature_names(table)
    if not features:
        raise InputError("profiles have no numeric feature columns (everything numeric "
                         "that is not Metadata_* or a CellProfiler key)")
    return table, features


def _treated_rows(table: pd.DataFrame, features: list[str], config: MatchConfig,
                  report: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Rows marked control or not, non-finite values handled, rows with a compound only,
    concentrations as keys and one MOA per treatment."""
    # controls are chosen on the rows as given (cells or wells), before anything is dropped
    table = table.assign(**{_CONTROL: control_rows(table, config.control,
                                                   config.control_query)})
    table, features, dropped = _nonfinite(table, features, config.nonfinite)
    report.update(dropped)
    meta = [c for c in table.columns if c.startswith("Metadata_") and c != "Metadata_Count"]
    table = _rows_with_treatment(table[meta + features], report)  # Count is recomputed
    table[MOA] = table[MOA].astype("string").str.strip().fillna("").astype(object)
    kinds = table.groupby([COMPOUND, CONCENTRATION], dropna=False)[MOA].nunique()
    if (kinds > 1).any():
        raise InputError(f"{MOA} differs between rows of treatment(s) "
                         f"{', '.join(f'{c}@{v:g}' for c, v in kinds.index[kinds > 1][:5])}")
    return table, features


def _rows_with_treatment(table: pd.DataFrame, report: dict[str, Any]) -> pd.DataFrame:
    """The rows that name a treatment, concentrations as keys. Rows without a compound, or
    without a concentration when other rows of their compound have one (which dose would
    they be?), are dropped and reported as rows with NaN/inf are: each reason with its rows
    and wells in ``report["dropped"]``, all of them counted in ``dropped_rows``. A compound
    no row gives a dose is one treatment, as in a table without concentrations."""
    missing = table[COMPOUND].astype("string").str.strip().fillna("").eq("").to_numpy(bool)
    report["rows_without_compound"] = int(missing.sum())
    if missing.any():
        report["dropped"].append(_dropped(table, missing, f"no {COMPOUND}"))
        table = table[~missing]
    table = table.copy()
    conc = pd.to_numeric(table[CONCENTRATION], errors="coerce")
    if (bad := conc.isna() & table[CONCENTRATION].notna()).any():
        raise InputError(f"{CONCENTRATION}: not a number: "
                         f"{table.loc[bad, CONCENTRATION].iloc[0]!r}")
    table[CONCENTRATION] = concentration_key(conc)
    dosed = table.loc[table[CONCENTRATION].notna(), COMPOUND].unique()
    missing = (table[CONCENTRATION].isna() & table[COMPOUND].isin(dosed)).to_numpy(bool)
    if missing.any():
        report["dropped"].append(_dropped(
            table, missing, f"no {CONCENTRATION}; their compound has one elsewhere"))
        table = table[~missing]
    report["dropped_rows"] = sum(entry["rows"] for entry in report["dropped"])
    return table


def _normalised_wells(table: pd.DataFrame, features: list[str], config: MatchConfig,
                      report: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """Rows -> wells (or sites), normalised against the controls, the controls dropped;
    and the features left (those with spread in the controls)."""
    keys = [PLATE, WELL] + ([SITE] if config.normalize_at == "site" else [])
    grouped = "site" if config.normalize_at == "site" else "well"  # what a row of wells is
    if config.control_query is not None and (
            mixed := table.groupby(keys)[_CONTROL].nunique() > 1).any():
        raise InputError(f"--control-query {config.control_query!r} selects some rows of "
                         f"{' '.join(map(str, mixed.index[mixed][0]))} but not others: a "
                         f"{grouped} is a control or not")
    wells = aggregate(table, keys + [COMPOUND, CONCENTRATION, _CONTROL], config.aggregate,
                      features)
    if (dup := wells.duplicated(keys, keep=False)).any():
        where = wells.loc[dup, keys].iloc[0].tolist()
        raise InputError(f"{' '.join(map(str, where))}: one {grouped} holds several "
                         "treatments (compound/concentration differ between its rows)")
    wells = wells.drop(columns="Metadata_Count")
    controls = wells.pop(_CONTROL).to_numpy(bool)
    report["n_wells"], report["n_control_wells"] = len(wells), int(controls.sum())
    if config.normalize != "none" and not controls.any():
        if config.control_query is not None:
            raise InputError(f"--control-query {config.control_query!r}: no control well is "
                             f"left with a {COMPOUND} (rows without one are skipped): fix the "
                             "query or --normalize none")
        raise InputError(f"no wells of control {config.control!r} in {COMPOUND}: set "
                         "--control to the negative-control compound, choose the controls "
                         "with --control-query, or --normalize none")
    if config.normalize_at == "cell":
        # control statistics from the spread between control cells, then cells -> wells
        cell_controls = table[_CONTROL].to_numpy(bool)
        report["n_cells"], report["n_control_cells"] = len(table), int(cell_controls.sum())
        cells, zero = normalize(table, features, method=config.normalize,
                                controls=cell_controls, strata=PLATE, scope=config.scope,
                                eps=config.sphere_eps, unit="cell")
        wells = aggregate(cells.drop(columns=_CONTROL), keys + [COMPOUND, CONCENTRATION],
                          config.aggregate, [f for f in features if f not in zero]
                          ).drop(columns="Metadata_Count")
    else:
        wells, zero = normalize(wells, features, method=config.normalize, controls=controls,
                                strata=PLATE, scope=config.scope, eps=config.sphere_eps,
                                unit=config.normalize_at)
    report["zero_spread_features"] = zero
    features = [f for f in features if f not in zero]
    if not features:
        raise InputError("every feature has zero spread in the control wells")
    return wells[~controls], features


def _treatments(wells: pd.DataFrame, features: list[str], config: MatchConfig,
                report: dict[str, Any]) -> pd.DataFrame:
    """Normalised wells -> one labelled profile per treatment, queries marked."""
    batches = wells[PLATE].map(batch_of).groupby(
        [wells[COMPOUND], wells[CONCENTRATION]], dropna=False).agg(
        lambda s: ";".join(sorted(set(s)))).rename(BATCHES)
    treat = aggregate(wells, [COMPOUND, CONCENTRATION], config.aggregate, features)
    # plate, well and site describe wells, not treatments (batches stand in for plates)
    treat = treat.drop(columns=[PLATE, WELL, SITE], errors="ignore")
    treat = treat.join(batches, on=[COMPOUND, CONCENTRATION])
    treat[TREATMENT] = (treat[COMPOUND].astype(str)
                        + treat[CONCENTRATION].map(lambda v: "" if pd.isna(v) else f"@{v:g}"))
    unlabelled = treat[MOA] == ""
    report["unlabelled_treatments"] = treat.loc[unlabelled, TREATMENT].tolist()
    treat = treat[~unlabelled].reset_index(drop=True)
    if treat.empty:
        raise InputError(f"no treatment besides the controls "
                         f"({describe_control(config.control, config.control_query)}) has an MOA "
                         f"label in {MOA}")
    per_moa = treat.groupby(MOA)[COMPOUND].nunique()
    single = sorted(per_moa.index[per_moa == 1])
    if len(single) == len(per_moa):
        raise InputError(f"every MOA has a single compound ({', '.join(single)}): NSC "
                         "(nearest treatment of another compound) is undefined")
    if single and not config.allow_single_compound_moa:
        raise InputError(f"MOA(s) with a single compound, which can never be matched by "
                         f"another compound: {', '.join(single)}; fix the moa table or "
                         "pass --allow-single-compound-moa to keep them only as candidates")
    treat["Metadata_Query"] = ~treat[MOA].isin(single)
    first = [TREATMENT, COMPOUND, CONCENTRATION, MOA, "Metadata_Count", "Metadata_Query",
             BATCHES]
    treat = treat[first + [c for c in treat.columns if c.startswith("Metadata_")
                           and c not in first] + features]
    report.update(single_compound_moas=single, n_features=len(features),
                  n_treatments=len(treat), n_compounds=int(treat[COMPOUND].nunique()),
                  n_moas=int(treat[MOA].nunique()))
    return treat


def _write_json(data: dict[str, Any], path: Path) -> Path:
    return write_json(path, data)


def _num(x: float) -> float | None:
    """A JSON-safe number: NaN (nothing to average) becomes null."""
    return None if not np.isfinite(x) else float(x)


def run_match(profiles: str | Path | pd.DataFrame | Sequence[str | Path], out_dir: str | Path,
              config: MatchConfig = MatchConfig(), image_table: str | Path | None = None,
              moa: str | Path | None = None, blocks: Blocks | None = None) -> MatchResult:
    """Load, prepare, match; write metrics.json, treatments.csv, map_per_moa.csv,
    confusion_nsc.csv and treatment_profiles.parquet into ``out_dir`` (each atomically;
    metrics.json last).

    Several files are shards (rows of more plates, concatenated). A combined profiles file
    (``cellprof combine``) brings its feature blocks, weighed equally (see :func:`prepare`);
    ``blocks`` gives them for a table or DataFrame (and replaces a file's own).
    """
    columns = {"compound_column": config.compound_column,
               "concentration_column": config.concentration_column}
    if isinstance(profiles, pd.DataFrame):
        table = profiles
    else:
        paths = list(profiles) if isinstance(profiles, (list, tuple)) else [profiles]
        refuse_repeats(paths, "match")  # shards, e.g. one profiles file per plate
        tables = [load_profiles(p, image_table=image_table, moa=moa, **columns)
                  for p in paths]
        table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
        if blocks is None:
            blocks = blocks_of(paths)
    treat, report = prepare(table, config, blocks)
    res = retrieve(treat, config.metric)
    excluded = single_batch_moas(treat)
    per_moa, permutations = map_per_moa(treat, config.metric, config.permutations, config.seed)
    acc = {k: accuracy(res, f"{k}_correct") for k in ("nsc", "nscb")}
    queries = res["query"]
    metrics: dict[str, Any] = {
        "nsc": _num(acc["nsc"][0]), "nscb": _num(acc["nscb"][0]),
        "nsc_per_compound": _num(acc["nsc"][1]), "nscb_per_compound": _num(acc["nscb"][1]),
        "map": _num(res.loc[queries, "ap"].mean()),
        "n_treatments": report["n_treatments"], "n_compounds": report["n_compounds"],
        "n_moas": report["n_moas"], "nscb_excluded_moas": excluded,
        "n_nsc_queries": int(res["nsc_correct"].notna().sum()),
        "n_nscb_queries": int(res["nscb_correct"].notna().sum()),
        "n_map_queries": int(res["ap"].notna().sum()),
        "nsc_no_candidate": res.loc[queries & res["nsc_neighbour"].isna(), "treatment"].tolist(),
        "nscb_no_candidate": res.loc[queries & ~res["nscb_excluded"]
                                     & res["nscb_neighbour"].isna(), "treatment"].tolist(),
        "map_no_positive": res.loc[queries & res["ap"].isna(), "treatment"].tolist(),
        "map_per_moa": [{k: _num(v) if isinstance(v, float) else v for k, v in row.items()}
                        for row in per_moa.to_dict("records")],
        "map_permutations": permutations,
        **{k: v for k, v in report.items() if k not in ("n_treatments", "n_compounds", "n_moas")},
        "config": asdict(config),
        "inputs": {"profiles": None if isinstance(profiles, pd.DataFrame) else (
            [str(p) for p in profiles] if isinstance(profiles, (list, tuple)) else str(profiles)),
                   "image_table": image_table and str(image_table), "moa": moa and str(moa)},
    }
    out = Path(out_dir)
    with OutputLock(out, folder=True):
        paths = {"treatments": write_table(res, out / "treatments.csv"),
                 "per_moa": write_table(per_moa, out / "map_per_moa.csv"),
                 "profiles": write_table(treat, out / "treatment_profiles.parquet")}
        confusion = nsc_confusion(res)
        paths["confusion_table"] = write_table(confusion.rename_axis(MOA).reset_index(),
                                               out / "confusion_nsc.csv")
        paths["metrics"] = _write_json(metrics, out / "metrics.json")
    return MatchResult(
        out_dir=out, **{k: nan if metrics[k] is None else metrics[k] for k in
                        ("nsc", "nscb", "nsc_per_compound", "nscb_per_compound", "map")},
        n_treatments=report["n_treatments"], n_compounds=report["n_compounds"],
        n_moas=report["n_moas"], nscb_excluded_moas=excluded, metrics=metrics, paths=paths,
        confusion=confusion)


def nsc_confusion(res: pd.DataFrame) -> pd.DataFrame:
    """Counts of NSC queries by true MOA (rows) and their neighbour's MOA (columns), over
    every MOA that is either; the diagonal is the NSC hits."""
    asked = res[res["nsc_correct"].notna()]
    labels = sorted(set(asked[MOA]) | set(asked["nsc_neighbour_moa"]))
    counts = pd.crosstab(asked[MOA], asked["nsc_neighbour_moa"])
    return counts.reindex(index=labels, columns=labels, fill_value=0).astype(int) \
        .rename_axis(index=None, columns=None)


def summary_rows(result: MatchResult) -> list[tuple[str, str]]:
    """(label, value) rows for the command line's table."""
    m = result.metrics

    def pct(x: float) -> str:
        return "–" if not np.isfinite(x) else f"{x:.1%}"
    excluded = ", ".join(result.nscb_excluded_moas) or "none"
    cfg = m.get("config", {})
    norm = cfg.get("normalize", "zscore")
    rows = [("normalisation", "none" if norm == "none" else
             f"{norm} against the control wells of "
             + {"plate": "each plate", "batch": "each batch",
                "screen": "the whole screen"}[cfg.get("scope", "plate")]),
            ("controls", f"{m.get('n_control_wells', 0)} wells: "
             + (f"{COMPOUND} == {cfg.get('control')!r}" if cfg.get("control_query") is None
                else cfg["control_query"])),
            ("treatments / compounds / MOAs",
             f"{result.n_treatments} / {result.n_compounds} / {result.n_moas}"),
            ("NSC (per treatment / per compound)",
             f"{pct(result.nsc)} / {pct(result.nsc_per_compound)}"),
            ("NSCB (per treatment / per compound)",
             f"{pct(result.nscb)} / {pct(result.nscb_per_compound)}"),
            ("NSCB excludes single-batch MOAs", excluded),
            ("mAP (mean AP over query treatments)", "–" if not np.isfinite(result.map)
             else f"{result.map:.3f}")]
    for key, label in (("nsc_no_candidate", "NSC queries without a candidate"),
                       ("nscb_no_candidate", "NSCB queries without a candidate"),
                       ("single_compound_moas", "single-compound MOAs (not queried)"),
                       ("unlabelled_treatments", "treatments without MOA (skipped)"),
                       ("dropped_features", "features dropped (NaN/inf)"),
                       ("zero_spread_features", "features dropped (no control spread)")):
        if m.get(key):
            rows.append((label, f"{len(m[key])}: {', '.join(map(str, m[key][:4]))}"
                         + (" …" if len(m[key]) > 4 else "")))
    if m.get("blocks"):  # after the controls: how the profile was made
        rows.insert(2, ("feature blocks (width × weight)", ", ".join(
            f"{b['name']} {b['width']} × {b['weight']:.3g}" for b in m["blocks"])))
    for entry in m.get("dropped", []):
        wells = entry["wells"]
        rows.append((f"rows dropped ({entry['reason']})",
                     f"{entry['rows']} in {len(wells)} well(s): {', '.join(wells[:4])}"
                     + (" …" if len(wells) > 4 else "")))
    if m.get("map_permutations", 0) < cfg.get("permutations", 0):
        rows.append(("mAP p-values from", f"{m['map_permutations']} permutations (the "
                     f"{cfg['permutations']} asked exceed the work limit)"))
    rows.append(("written to", str(result.out_dir)))
    return rows


def moa_rows(result: MatchResult) -> list[tuple[str, str, str, str, str]]:
    """(MOA, queries, mAP, p, q) rows of the per-MOA mAP table, best first."""
    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)
    return [(r[MOA], str(r["n_queries"]), num(r["map"], ".3f"), num(r["p_value"], ".3g"),
             num(r["q_value"], ".3g")) for r in result.metrics["map_per_moa"]]
