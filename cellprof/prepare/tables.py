"""Reading the tables a user has: CellProfiler image/object tables, moa tables.

CellProfiler writes the same measurements under two naming styles. The spreadsheet
export (ExportToSpreadsheet) has ``FileName_DNA``, ``PathName_DNA``, ``Metadata_Plate`` in
``Image.csv`` and ``Location_Center_X`` in ``Nuclei.csv``; the database export
(ExportToDatabase, and BBBC021's official ``BBBC021_v1_image.csv``) prefixes every column
with its table (``Image_FileName_DAPI``, ``Nuclei_Location_Center_X``) and sometimes
suffixes metadata with the channel it was extracted from (``Image_Metadata_Plate_DAPI``).
Everything here maps both onto the spreadsheet names, which are also pycytominer's, so
the rest of cellprof sees one convention.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.schema import (  # noqa: F401 - the canonical names, re-exported for users
    CENTER_X,
    CENTER_Y,
    COMPOUND,
    CONCENTRATION,
    IMAGE_NUMBER,
    MOA,
    OBJECT_NUMBER,
    PLATE,
    SITE,
    TABLE_NUMBER,
    WELL,
)

# Bare or oddly cased names users' tables carry for the canonical metadata columns.
_ALIASES = {
    "plate": PLATE, "well": WELL, "site": SITE, "field": SITE, "compound": COMPOUND,
    "concentration": CONCENTRATION, "moa": MOA, "replicate": "Metadata_Replicate",
}


def is_metadata_alias(name: str) -> bool:
    """Whether a bare column name (``plate``, ``Compound`` …) stands for canonical metadata;
    so does one whose ``Metadata_`` prefix lost its case (``metadata_compound``)."""
    return _metadata_bare(name).lower() in _ALIASES


def _metadata_bare(name: str) -> str:
    """A column's name without its ``Metadata_`` prefix, whatever its case."""
    name = str(name)
    return name[len("Metadata_"):] if name.lower().startswith("metadata_") else name


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (plain or gzipped) or Parquet table; the format is told by its content.

    Raises
    ------
    InputError
        When the file is missing, empty or not a table, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: table not found")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    compression = "gzip" if magic[:2] == b"\x1f\x8b" else None
    try:
        if magic == b"PAR1":
            return pd.read_parquet(path)
        table = pd.read_csv(path, compression=compression, low_memory=False)
        header = pd.read_csv(path, compression=compression, header=None, nrows=1, dtype=str)
    except (EOFError, zlib.error) as exc:  # a .csv.gz cut short (a copy or download stopped)
        raise InputError(f"{path}: cannot be read: the compressed file is truncated or damaged "
                         f"({exc}); copy it again") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot be read as a CSV or Parquet table ({exc})") from None
    return _one_column_per_name(table, header.iloc[0].tolist(), path)


def _one_column_per_name(table: pd.DataFrame, header: list[object], path: Path) -> pd.DataFrame:
    """A CSV whose header names a column twice: pandas reads the copies as ``X`` and
    ``X.1``, and only ``X`` would be used. Copies that agree are one column; copies that
    differ are refused, since which one holds the truth cannot be told."""
    if len(header) != table.shape[1]:
        return table
    names = pd.Series([str(h) for h in header])
    drop = []
    for name, where in names[names.duplicated(keep=False)].groupby(names, sort=False):
        first = table.iloc[:, where.index[0]]
        for i in where.index[1:]:
            other = table.iloc[:, i]
            same = (first == other) | (first.isna() & other.isna()) | (
                first.astype(str) == other.astype(str))
            if not same.all():
                row = int(np.flatnonzero(~same.to_numpy())[0])
                raise InputError(
                    f"{path}: column {name} appears {len(where)} times and the copies differ "
                    f"(row {row + 2}: {_plain(first.iloc[row])!r} and "
                    f"{_plain(other.iloc[row])!r}); keep one")
            drop.append(table.columns[i])
    return table.drop(columns=drop)


def canonical_columns(table: pd.DataFrame, prefix: str = "Image_",
                      source: str | Path | None = None) -> pd.DataFrame:
    """Rename database-style and bare metadata columns to spreadsheet-style names.

    ``Image_FileName_DAPI`` becomes ``FileName_DAPI``; ``Image_Metadata_Plate_DAPI``
    becomes ``Metadata_Plate`` (a trailing channel name is dropped when the bare name is
    free); ``moa``/``compound``/``Metadata_moa``/``metadata_compound`` become
    ``Metadata_MOA``/``Metadata_Compound``. A column held in both styles
    (``Image_Metadata_Well`` beside ``Metadata_Well``) is kept once when the two agree.

    Raises
    ------
    InputError
        When the two styles of one column disagree, naming ``source``, both columns and a
        row's values: which one holds the truth cannot be told.
    """
    renamed = {c: c[len(prefix):] if prefix and c.startswith(prefix) else c for c in table.columns}
    table, renamed = _without_twins(table, renamed, source)
    channels = {m.group(1) for c in renamed.values() if (m := re.match(r"FileName_(.+)$", c))}
    taken = set(renamed.values())
    for old, new in list(renamed.items()):
        m = re.match(r"(Metadata_[A-Za-z0-9]+)_(.+)$", new)
        if m and m.group(2) in channels and m.group(1) not in taken:
            renamed[old] = m.group(1)
            taken.add(m.group(1))
    for old, new in list(renamed.items()):
        canon = _ALIASES.get(_metadata_bare(new).lower())
        if canon and canon not in taken:
            renamed[old] = canon
            taken.add(canon)
    return table.rename(columns=renamed)


def _without_twins(table: pd.DataFrame, renamed: dict[str, str], source: str | Path | None
                   ) -> tuple[pd.DataFrame, dict[str, str]]:
    """``table`` without the prefixed copy of a column it also holds bare (``renamed`` maps
    both to one name: pandas would keep two columns of that name, and each later step
    would read one or the other), or :class:`InputError` when the copies differ."""
    twins = [(old, new) for old, new in renamed.items() if old != new and new in table.columns]
    for old, new in twins:
        bare, prefixed = table[new], table[old]
        same = (bare == prefixed) | (bare.isna() & prefixed.isna()) | (
            bare.astype(str) == prefixed.astype(str))
        if not same.all():
            i = int(np.flatnonzero(~same.to_numpy())[0])
            where = f"{source}: " if source is not None else ""
            raise InputError(
                f"{where}columns {old} and {new} are one column in two naming styles and "
                f"differ in {int((~same).sum())} row(s) (e.g. {_plain(prefixed.iloc[i])!r} "
                f"and {_plain(bare.iloc[i])!r}); keep one of them")
        del renamed[old]
    return table.drop(columns=[old for old, _ in twins]), renamed


def channels_of(table: pd.DataFrame) -> list[str]:
    """Channel names found as ``FileName_<name>`` columns, in table order."""
    return [c[len("FileName_"):] for c in table.columns if c.startswith("FileName_")]


def require_columns(table: pd.DataFrame, columns: list[str], source: str | Path) -> None:
    """Raise :class:`InputError` naming the missing columns and what the table has."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        have = ", ".join(map(str, table.columns[:12])) + (" …" if len(table.columns) > 12 else "")
        raise InputError(f"{source}: missing column(s) {', '.join(missing)} (has: {have})")


def whole_numbers(values: pd.Series, column: str, source: str | Path) -> pd.Series:
    """``values`` as int64, or :class:`InputError` naming the first row (1-based line of
    the file, after its header) that is empty or not a whole number."""
    nums = pd.to_numeric(values, errors="coerce")
    bad = nums.isna() | ~np.isfinite(nums) | (nums != nums.round())  # inf rounds to inf
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[i]
        value = value.item() if isinstance(value, np.generic) else value
        what = "is empty" if pd.isna(value) or str(value).strip() == "" else \
            f"is {value!r}, not a whole number"
        raise InputError(f"{source}, row {i + 2}: {column} {what}")
    return nums.astype(np.int64)


def refuse_empty_field_keys(table: pd.DataFrame, source: str | Path,
                            numbers: pd.Series | None = None, unit: str = "row") -> None:
    """Raise :class:`InputError` for a row whose plate or well is empty, or whose site is
    empty or a number that is not whole (``inf``, ``1.5``), where ``table`` (canonical
    names) has the column: its cells would be profiled in a well named "nan", or none.
    The message names the rows by ``unit`` and ``numbers`` (default: each row's line in
    the file, after its header: ``row 5``)."""
    if numbers is None:
        numbers = pd.Series(np.arange(len(table)) + 2, index=table.index)
    for col in (PLATE, WELL, SITE):
        if col not in table.columns:
            continue
        values = table[col]
        bad = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
        if col == SITE:
            nums = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
            bad = bad | ~np.isnan(nums) & ~(np.isfinite(nums) & (nums == np.round(nums)))
        if bad.any():
            named = numbers.to_numpy()[bad]
            listed = ", ".join(map(str, named[:5])) + (" …" if len(named) > 5 else "")
            plural = "s" if len(named) > 1 and unit == "row" else ""
            first = values.to_numpy()[bad][0]
            what = "empty" if pd.isna(first) or str(first).strip() == "" else \
                f"{_plain(first)!r}, not a whole number,"
            noun = col[len("Metadata_"):].lower()
            raise InputError(f"{source}: {col} is {what} in {unit}{plural} {listed}: its cells "
                             f"would belong to no {noun}; fill it in, or remove those rows")


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


DEFAULT_OBJECT = "Nuclei"
"""The object whose centres a crop is centred on when the user names none."""


def centre_object(columns: list[str], source: str | Path, object_name: str | None,
                  notes: list[str] | None = None) -> str:
    """The prefix of the centre columns to crop at: ``""`` for a table of one object's own
    (``Location_Center_X``), else the object's name (``Nuclei_Location_Center_X``).

    ``object_name`` None means Nuclei, or else the only object the table has centres of,
    said in ``notes``: cropping at cell centres instead of nucleus centres changes every
    crop, so it is never done silently. An object named by the user must be there.

    Raises
    ------
    InputError
        When the named (or default) object has no centres in the table, listing the objects
        that have, and how to choose one.
    """
    wanted = object_name or DEFAULT_OBJECT
    if f"{wanted}_{CENTER_X}" in columns:
        return wanted
    if CENTER_X in columns:
        return ""
    have = sorted({str(c)[:-len(CENTER_X) - 1] for c in columns
                   if str(c).endswith("_" + CENTER_X) and f"{str(c)[:-1]}Y" in columns})
    if not have:
        raise InputError(f"{source}: missing column {CENTER_X} (or {wanted}_{CENTER_X}): "
                         "is this a CellProfiler object table?")
    if object_name is None and len(have) == 1:
        if notes is not None:
            notes.append(f"{source} has no {wanted} centres: cropped at the centres of "
                         f"{have[0]} ({have[0]}_{CENTER_X}/Y), the only objects it has; "
                         f"pass --object-name {have[0]} to say so, or give an object table "
                         f"with {wanted} centres")
        return have[0]
    asked = (f"--object-name {object_name}" if object_name is not None
             else f"the default object, {wanted}")
    raise InputError(f"{source}: no {wanted} centres ({wanted}_{CENTER_X}/Y) for {asked}; "
                     f"the table has centres of {', '.join(have)}: choose one with "
                     "--object-name")


AREA = "AreaShape_Area"
"""CellProfiler's object area in px (MeasureObjectSizeShape), kept beside the centres of
nuclei: crop sizes itself by them."""
NUCLEAR_STAINS = ("DNA", "DAPI", "Hoechst", "H2B", "Histone", "Nuclei", "Nucleus", "Nuclear",
                  "Nuc", "NucBlue", "DRAQ5", "DRAQ7")
"""Words that name a nuclear stain in a channel name (any case; ``OrigDNA``, ``Hoechst33342``,
``H2B-GFP`` and ``dapi_405`` match, ``DNAdamage`` and ``RNA`` do not)."""


def stain_words(channel: str) -> list[str]:
    """A channel name's words: split at anything but letters and digits, and where a
    lower-case letter meets a capital (``OrigDNA`` -> ``Orig``, ``DNA``)."""
    return [w for part in re.split(r"[^A-Za-z0-9]+", channel)
            for w in re.split(r"(?<=[a-z])(?=[A-Z])", part) if w]


def is_nuclear(channel: str) -> bool:
    """Whether a channel (or an object) is named like a DNA stain or nuclei: one of its words
    is one of :data:`NUCLEAR_STAINS`, followed by digits at most (``Hoechst33342``)."""
    words = "|".join(NUCLEAR_STAINS)
    return any(re.fullmatch(rf"({words})\d*", w, re.IGNORECASE) for w in stain_words(channel))


def object_centres(table: pd.DataFrame, source: str | Path, object_name: str | None = None,
                   notes: list[str] | None = None) -> pd.DataFrame:
    """``ObjectNumber, Location_Center_X/Y`` (and ``AreaShape_Area`` when the table has it
    and the objects are nuclei by name) and the image keys of an object table.

    The keys are whichever of ``TableNumber``, ``ImageNumber`` and ``Metadata_*`` the table
    has (:func:`cellprof.prepare.sources.pair_objects` decides which pair objects with images);
    ``ObjectNumber`` is NaN when the table has none. Database-style tables hold several
    objects' columns side by side (``Nuclei_Location_Center_X``,
    ``Cells_Location_Center_X``); ``object_name`` picks one (see :func:`centre_object`).
    """
    prefix = centre_object(list(table.columns), source, object_name, notes)
    cols = {t: f"{prefix}_{t}" if prefix else t for t in (CENTER_X, CENTER_Y)}
    for col in cols.values():
        if col not in table.columns:
            raise InputError(f"{source}: missing column {col}: is this a CellProfiler object "
                             "table?")
    named = prefix or object_name or DEFAULT_OBJECT
    obj = next((c for c in ("ObjectNumber", f"{named}_Number_Object_Number",
                            "Number_Object_Number") if c in table.columns), None)
    # Numbers that are empty or not whole would pair or number cells wrongly: named, refused.
    numbers = {c: whole_numbers(table[c], c, source)
               for c in (TABLE_NUMBER, IMAGE_NUMBER) if c in table.columns}
    out = pd.DataFrame({
        OBJECT_NUMBER: whole_numbers(table[obj], obj, source) if obj
        else np.nan,  # numbered per image once paired
        CENTER_X: pd.to_numeric(table[cols[CENTER_X]], errors="coerce"),
        CENTER_Y: pd.to_numeric(table[cols[CENTER_Y]], errors="coerce"),
    }, index=table.index)
    # Nuclei's areas size the crop; a cell's would make --size auto twice too large. The
    # object is named by its columns' prefix, else by its table's file (Nuclei.csv).
    area = f"{prefix}_{AREA}" if prefix else AREA
    if area in table.columns and is_nuclear(prefix or Path(str(source)).stem):
        out[AREA] = pd.to_numeric(table[area], errors="coerce")
    # Keys that can pair an object with its image: CellProfiler's numbers, field metadata.
    keys = [c for c in table.columns if c in (TABLE_NUMBER, IMAGE_NUMBER)
            or (str(c).startswith("Metadata_") and c not in out.columns)]
    out = pd.concat([table[keys].assign(**numbers), out], axis=1).reset_index(drop=True)
    out["_row"] = np.arange(len(table)) + 2  # 1-based line in the file, after the header
    return out


def concentration_key(values: pd.Series) -> pd.Series:
    """Concentrations rounded to 6 significant digits, so 0.3 and 0.300000 join."""
    nums = pd.to_numeric(values, errors="coerce")
    return nums.map(lambda v: float(f"{v:.6g}") if pd.notna(v) else np.nan)


def read_moa_table(path: str | Path) -> pd.DataFrame:
    """A moa table (``compound, concentration, moa``; BBBC021's layout) in canonical names."""
    table = canonical_columns(read_table(path), prefix="")
    require_columns(table, [COMPOUND, CONCENTRATION, MOA], path)
    table = table[[COMPOUND, CONCENTRATION, MOA]].copy()
    table["_conc_key"] = concentration_key(table[CONCENTRATION])
    dup = table.duplicated([COMPOUND, "_conc_key"], keep=False)
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0]) + 2
        raise InputError(f"{path}: row {row}: compound/concentration listed twice")
    return table


def join_moa(fields: pd.DataFrame, moa: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Add ``Metadata_MOA`` to a table with compound and concentration columns.

    Treatments absent from the moa table get an empty MOA (unlabelled). A moa table that
    matches no treatment at all is an error: it is almost always the wrong table or a
    naming mismatch, and silently unlabelled data would only surface much later.
    """
    require_columns(fields, [COMPOUND, CONCENTRATION], "image table (needed to join --moa)")
    left = fields.drop(columns=[MOA], errors="ignore").copy()
    left["_conc_key"] = concentration_key(left[CONCENTRATION])
    joined = left.merge(moa[[COMPOUND, "_conc_key", MOA]], on=[COMPOUND, "_conc_key"],
                        how="left", validate="many_to_one")
    if joined[MOA].notna().sum() == 0:
        first = fields[[COMPOUND, CONCENTRATION]].iloc[0].tolist() if len(fields) else []
        example = " at ".join("n/a" if pd.isna(v) or str(v).strip() == "" else str(v)
                              for v in first) or "no rows"
        raise InputError(f"{source}: matches no treatment of the image table (compound and "
                         f"concentration must agree; e.g. the image table has {example})")
    joined[MOA] = joined[MOA].fillna("").astype(str)
    joined.index = fields.index
    return joined.drop(columns=["_conc_key"])


def complete_metadata(table: pd.DataFrame, first_channel: str) -> pd.DataFrame:
    """Make plate, well and site present, with sites from file names when the table has none."""
    table = table.copy()
    for col in (PLATE, WELL):
        table[col] = table[col].astype(str) if col in table.columns else ""
    if SITE not in table.columns:
        sites = table[f"FileName_{first_channel}"].map(site_from_filename)
        if sites.isna().any():
            sites = table.groupby([PLATE, WELL]).cumcount() + 1
        table[SITE] = sites.astype(np.int64)
    sites = pd.to_numeric(table[SITE], errors="coerce")
    if not pd.api.types.is_integer_dtype(table[SITE]) and np.isfinite(sites).all() and \
            (sites == sites.round()).all():  # 1, "1" and 1.0 are site 1, as an integer
        table[SITE] = sites.astype(np.int64)
    if CONCENTRATION in table.columns:
        table[CONCENTRATION] = pd.to_numeric(table[CONCENTRATION], errors="coerce")
    for col in table.columns:
        if col.startswith("Metadata_") and col not in (SITE, CONCENTRATION) and \
                not pd.api.types.is_numeric_dtype(table[col]):
            table[col] = table[col].fillna("").astype(str)
    return table


def site_from_filename(name: str) -> int | None:
    """The site number in ImageXpress-style names (``B02_s3_w1….tif`` -> 3), else None."""
    m = re.search(r"_s(\d+)(?:_|\.|$)", str(name))
    return int(m.group(1)) if m else None


def batch_of(plate: str) -> str:
    """BBBC021's batch convention: the plate-name prefix before the first ``_``."""
    return str(plate).split("_", 1)[0]
