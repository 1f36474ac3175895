"""Where a screen's image and object tables come from, and how objects find their image.

Labs hold CellProfiler's measurements in several shapes; all of them become one image
table (one row per field) and one object table (one row per nucleus) here:

* spreadsheet exports (``Image.csv`` + ``Nuclei.csv``) and JUMP's ``load_data.csv`` (image
  files and ``Metadata_Source/Plate/Well/Site``, no ``ImageNumber``) with an object table
  keyed by the same metadata;
* ExportToDatabase SQLite files (``Per_Image`` + ``Per_Nuclei`` or ``Per_Object``, keyed by
  ``TableNumber`` + ``ImageNumber``), read with the standard library's ``sqlite3``;
* CytoTable's single-cell Parquet: one table of ``Image_*`` and ``Nuclei_*`` columns keyed by
  ``Metadata_ImageNumber`` (+ ``Metadata_TableNumber``), used as both tables.

Objects are paired with images on ``ImageNumber`` (+ ``TableNumber``) only when both tables
carry it; otherwise on the field metadata both tables share. Nothing is ever paired by row
order, and the keys used are reported; so are keys that did not meet, with examples from
both tables. Metadata a single-cell table holds per object stays per object.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.schema import IMAGE_NUMBER, OBJECT_NUMBER, PLATE, SITE, TABLE_NUMBER, WELL
from cellprof.prepare.tables import (
    canonical_columns,
    is_metadata_alias,
    read_table,
    refuse_empty_field_keys,
    whole_numbers,
)

#: Metadata that identifies a field, in the order a join names them.
FIELD_KEYS = ("Metadata_Source", "Metadata_Batch", PLATE, WELL, SITE)
_IDS = (IMAGE_NUMBER, OBJECT_NUMBER, TABLE_NUMBER)
# Columns a crop needs (everything else, e.g. thousands of features, is never read).
_IMAGE_PREFIXES = ("FileName_", "PathName_", "URL_", "Frame_", "Channel_", "Height_",
                   "Width_", "Metadata_")
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Prefix of the column naming the plane of a channel by the file's own OME channel name.
OME_NAME = "OmeName_"


@dataclass
class Sources:
    """The image and object tables of a screen, in canonical column names."""

    images: pd.DataFrame
    objects: pd.DataFrame | None
    image_name: str               # how messages name the image table (file, or file:table)
    object_name: str
    notes: list[str] = field(default_factory=list)


def is_sqlite(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(16) == _SQLITE_MAGIC


def _wanted(column: str, object_name: str) -> bool:
    bare = re.sub(r"^(Image_|Metadata_(?=(Image|Object|Table)Number$))", "", column)
    return (bare.startswith(_IMAGE_PREFIXES) or bare in _IDS or is_metadata_alias(bare)
            or column.endswith(("Location_Center_X", "Location_Center_Y", "Number_Object_Number",
                                "AreaShape_Area"))
            or column.startswith(f"{object_name}_Metadata_"))


def _read(path: Path, object_name: str, sql_table: str | None = None) -> pd.DataFrame:
    """A table's crop-relevant columns: CSV, Parquet, or one table of a SQLite file."""
    if sql_table is not None:
        with _connect(path) as con:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{sql_table}")')]
            keep = [c for c in cols if _wanted(c, object_name)]
            if not keep:  # what is missing is said by the step that needs it
                return pd.DataFrame()
            query = "SELECT " + ", ".join(f'"{c}"' for c in keep) + f' FROM "{sql_table}"'
            try:
                return pd.read_sql_query(query, con)
            except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
                raise InputError(f"{path}: cannot read table {sql_table} ({exc})") from None
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        try:
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
            return pd.read_parquet(path, columns=[c for c in names if _wanted(c, object_name)])
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot be read as a CSV or Parquet table ({exc})") from None
    table = read_table(path)
    return table[[c for c in table.columns if _wanted(c, object_name)]]


def _connect(path: Path) -> closing[sqlite3.Connection]:
    """A read-only connection (a crop must never create or change the user's database)."""
    return closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True))


def sqlite_tables(path: Path) -> list[str]:
    try:
        with _connect(path) as con:
            return [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")]
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path}: cannot be read as a SQLite database ({exc})") from None


def _find_table(path: Path, names: list[str], suffixes: list[str], what: str) -> str:
    """The table whose name ends with the first of ``suffixes`` that any table has
    (CellProfiler prefixes them with the experiment name: ``MyExpt_Per_Image``)."""
    for suffix in suffixes:
        hits = [n for n in names if n.lower().endswith(suffix.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputError(f"{path}: several {what} tables ({', '.join(hits)}); "
                             "choose with --tables IMAGE,OBJECTS")
    raise InputError(f"{path}: no {what} table ({' or '.join(suffixes)}; tables: "
                     f"{', '.join(names) or 'none'}); choose with --tables IMAGE,OBJECTS")


def _ids_canonical(table: pd.DataFrame) -> pd.DataFrame:
    """CytoTable prefixes CellProfiler's keys with ``Metadata_``; take them back bare."""
    renames = {}
    for col in table.columns:
        m = re.match(r"Metadata_((Image|Object|Table)Number|.+_Number_Object_Number)$", col)
        if m and m.group(1) not in table.columns:
            renames[col] = m.group(1)
    return table.rename(columns=renames)


def _has_centres(table: pd.DataFrame) -> bool:
    return any(str(c).endswith("Location_Center_X") for c in table.columns)


def read_sources(image_table: str | Path, objects: str | Path | None, *,
                 object_name: str = "Nuclei", tables: tuple[str, ...] | None = None,
                 need_objects: bool = True) -> Sources:
    """Read the image and object tables of any supported shape (see the module docstring).

    ``objects`` may be None when ``image_table`` holds the objects too (a SQLite file, or a
    single-cell table); ``tables`` names the SQLite image and object tables, which are
    otherwise found by name (``*Per_Image``; ``*Per_<object_name>``, else ``*Per_Object``).

    Raises
    ------
    InputError
        Besides what each step refuses: when a column is held in both naming styles and
        the two disagree, or a field's plate, well or site is empty
        (:func:`cellprof.prepare.tables.refuse_empty_field_keys`).
    """
    image_table = Path(image_table)
    src = _read_sources(image_table, objects, object_name, tables, need_objects)
    single_cell = src.object_name == str(image_table)
    canonical_columns(src.images, source=src.image_name)  # refuses disagreeing twins
    if src.objects is not None and not single_cell:
        canonical_columns(src.objects, source=src.object_name)
    images = canonical_columns(src.images)
    if single_cell and IMAGE_NUMBER in images.columns:  # its rows are images, not lines
        refuse_empty_field_keys(images, src.image_name, images[IMAGE_NUMBER], IMAGE_NUMBER)
    else:
        refuse_empty_field_keys(images, src.image_name)
    return src


def _read_sources(image_table: Path, objects: str | Path | None, object_name: str,
                  tables: tuple[str, ...] | None, need_objects: bool) -> Sources:
    """:func:`read_sources` before the tables' columns and field keys are checked."""
    obj_path = Path(objects) if objects is not None else None
    notes: list[str] = []
    for path in (image_table, obj_path):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: table not found")
    if tables and not is_sqlite(image_table):
        raise InputError(f"--tables names tables of a SQLite database; {image_table} is not one")
    if is_sqlite(image_table):
        img_t = _sqlite_table(image_table, tables, 0, object_name)
        if tables:
            _check_table_order(image_table, tables, both=obj_path is None or
                               obj_path.resolve() == image_table.resolve())
        images = _ids_canonical(_read(image_table, object_name, img_t))
        image_name = f"{image_table}:{img_t}"
        obj_path = image_table if obj_path is None else obj_path  # the database holds both
    else:
        images = _ids_canonical(_read(image_table, object_name))
        image_name = str(image_table)
    if not need_objects:
        return Sources(images, None, image_name, "", notes)
    if obj_path is None or (obj_path.resolve() == image_table.resolve()
                            and not is_sqlite(obj_path)):
        if not _has_centres(images):
            raise InputError(f"{image_table}: has no object centres (no {object_name}_"
                             "Location_Center_X or Location_Center_X column); give an object "
                             "table (--objects) or ask for segmentation (--segment)")
        obj, images = images, _image_rows(images, image_table)
        notes.append(f"{image_table.name} is a single-cell table: {len(images)} images and "
                     f"{len(obj)} objects read from it")
        return Sources(images, obj, image_name, str(image_table), notes)
    if is_sqlite(obj_path):
        obj_t = _sqlite_table(obj_path, tables, 1, object_name)
        obj = _ids_canonical(_read(obj_path, object_name, obj_t))
        if obj_path.resolve() == image_table.resolve():
            notes.append(f"read {image_table.name}: images from table "
                         f"{image_name.rsplit(':', 1)[1]}, objects from table {obj_t}")
        return Sources(images, obj, image_name, f"{obj_path}:{obj_t}", notes)
    return Sources(images, _ids_canonical(_read(obj_path, object_name)), image_name,
                   str(obj_path), notes)


def _table_columns(path: Path, table: str) -> list[str]:
    with _connect(path) as con:
        return [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]


def _check_table_order(path: Path, tables: tuple[str, ...], both: bool) -> None:
    """``--tables IMAGE,OBJECTS``: the first must be an image table (it names files).
    Given the other way round (``both``: the database holds both tables), the message
    says so and gives the right order."""
    image_t, object_t = tables[0], tables[1]

    def names_files(table: str) -> bool:
        return any(_bare(c).startswith("FileName_") for c in _table_columns(path, table))

    if names_files(image_t):
        return
    if both and object_t in sqlite_tables(path) and names_files(object_t):
        raise InputError(f"{path}: --tables {image_t},{object_t}: {image_t} has no FileName_ "
                         f"columns and {object_t} has: --tables takes IMAGE,OBJECTS, the image "
                         f"table first: --tables {object_t},{image_t}")
    raise InputError(f"{path}: table {image_t} has no FileName_<channel> (or "
                     "Image_FileName_<channel>) columns, so it is not an image table; "
                     f"--tables takes IMAGE,OBJECTS (tables: {', '.join(sqlite_tables(path))})")


def _sqlite_table(path: Path, tables: tuple[str, ...] | None, index: int,
                  object_name: str) -> str:
    """The image (``index`` 0) or object (1) table of a database: named in ``tables``, or
    found (``*Per_Image``; ``*Per_<object_name>``, else ``*Per_Object``)."""
    names = sqlite_tables(path)
    if tables and len(tables) > index:
        if tables[index] not in names:
            raise InputError(f"{path}: no table {tables[index]} (tables: {', '.join(names)})")
        return tables[index]
    if index == 0:
        return _find_table(path, names, ["Per_Image"], "image")
    return _find_table(path, names, [f"Per_{object_name}", "Per_Object"], "object")


def _image_rows(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The image table inside a single-cell table: its image columns, one row per image
    (per ``TableNumber`` + ``ImageNumber`` when it has them, else per image file, else per
    distinct row).

    A ``Metadata_`` column whose value differs between one image's rows is the objects'
    own (CytoTable's ``Metadata_Cells_Parent_Nuclei``): it is left out of the image rows,
    and the crop keeps it per object. Taking the image's first row's value for all its
    objects would give most cells another cell's value.

    Raises
    ------
    InputError
        When one image number stands for rows of several images (other files, plates,
        wells or sites), as when images are numbered per plate without ``TableNumber``.
    """
    image_cols = [c for c in table.columns if re.sub(r"^Image_", "", c).startswith(
        _IMAGE_PREFIXES) or c in (IMAGE_NUMBER, TABLE_NUMBER) or is_metadata_alias(_bare(c))]
    numbers = [c for c in (TABLE_NUMBER, IMAGE_NUMBER) if c in table.columns]
    # 3, "3" and "3.0" are one image (numbers held as text, written two ways); an empty or
    # broken one is named by its row in the file, not by a row of the image rows built here
    table = table.assign(**{k: whole_numbers(table[k], k, source) for k in numbers})
    files = [c for c in image_cols if _bare(c).startswith(("FileName_", "PathName_", "URL_"))]
    keys = numbers or files
    if not keys:
        return table[image_cols].drop_duplicates().reset_index(drop=True)
    distinct = table[image_cols].drop_duplicates()
    repeated = distinct[distinct.duplicated(keys, keep=False)]
    varying: list[str] = []
    if len(repeated):
        rest = [c for c in image_cols if c not in keys]
        counts = repeated.groupby(keys, sort=False)[rest].nunique(dropna=False).max()
        varying = [c for c in rest if counts[c] > 1]
        identity = [c for c in varying if _identifies_image(c)]
        if identity:
            raise InputError(_several_images(source, repeated, keys, identity, numbers))
    kept = [c for c in image_cols if c not in varying]
    return distinct[kept].drop_duplicates(keys).reset_index(drop=True)


def _bare(column: str) -> str:
    return re.sub(r"^Image_", "", str(column))


def _identifies_image(column: str) -> bool:
    """Whether a column says which image a row is (its files, plate, well, site ...), as
    opposed to metadata an object may have of its own."""
    bare = _bare(column)
    return not bare.startswith("Metadata_") and not is_metadata_alias(bare) or bool(
        re.match(r"(Metadata_)?(Source|Batch|Plate|Well|Site|Field)(_|$)", bare, re.I))


def _several_images(source: Path, repeated: pd.DataFrame, keys: list[str], identity: list[str],
                    numbers: list[str]) -> str:
    """The message for one image number (or file) standing for rows of several images."""
    identity = sorted(identity, key=lambda c: not _bare(c).startswith("Metadata_"))
    col = identity[0]
    group = next(g for _, g in repeated.groupby(keys, sort=False) if g[col].nunique() > 1)
    key = ", ".join(f"{k} {_plain_text(group[k].iloc[0])}" for k in keys)
    values = ", ".join(map(str, group[col].drop_duplicates().head(4)))
    if numbers and TABLE_NUMBER not in numbers:
        fix = ("images are numbered per plate (or per input table), and the file has no "
               "TableNumber to tell them apart: keep CytoTable's Metadata_TableNumber column, "
               "or add a TableNumber column (one value per plate)")
    elif numbers == [TABLE_NUMBER]:
        fix = ("the file has TableNumber but no ImageNumber to tell its images apart: keep "
               "CytoTable's Metadata_ImageNumber column (or ImageNumber)")
    else:
        fix = f"{' + '.join(keys)} must identify one image"
    return f"{source}: {key} stands for rows of several images ({_bare(col)} {values}): {fix}"


def _plain_text(value: object) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)


def _key_text(values: pd.Series) -> pd.Series:
    """Key values as text that joins across tables: ``1``, ``1.0`` and ``"1"`` agree, each
    value on its own (one empty or textual value does not turn every ``1.0`` into text
    that no longer meets ``1``)."""
    text = values.astype(str).str.strip()
    nums = pd.to_numeric(values, errors="coerce")
    whole = (np.isfinite(nums) & (nums == np.round(nums)) & (nums.abs() < 2 ** 53)).to_numpy()
    if whole.any():
        text = text.where(~whole, nums.where(whole, 0).astype(np.int64).astype(str))
    return text


def _examples(values: pd.Series | np.ndarray, n: int = 3) -> str:
    values = list(pd.unique(np.asarray(values, dtype=object)))
    return ", ".join(map(str, values[:n])) + (" …" if len(values) > n else "")


def _refuse_empty_keys(frame: pd.DataFrame, keys: list[str], name: str, lines: pd.Series,
                       what: str, other: str) -> None:
    """An empty key (NaN, "") pairs with nothing: refused, naming the column and rows
    (``lines``: each row's line in its file), not reported as an unknown image."""
    for k in keys:
        empty = (frame[k].isna() | (frame[k].astype(str).str.strip() == "")).to_numpy()
        if empty.any():
            rows = lines.to_numpy()[empty]
            listed = ", ".join(map(str, rows[:5])) + (" …" if len(rows) > 5 else "")
            where = f"row {listed}" if len(rows) == 1 else f"{len(rows)} rows ({listed})"
            raise InputError(f"{name}: {k} is empty in {where}: {what} without it cannot be "
                             f"paired with {other}; fill it in, or remove those rows")


def _same_wells(obj_keys: pd.DataFrame, img_keys: pd.DataFrame, object_name: str,
                image_name: str, notes: list[str]) -> None:
    """Match wells that differ only in zero padding (``B2`` and ``B02``), in place, when
    neither table writes one well both ways (then the forms are unambiguous); said in
    ``notes``."""
    obj_w, img_w = obj_keys[WELL], img_keys[WELL]
    if obj_w.isin(img_w).all():
        return
    forms = [w.str.replace(r"^([A-Za-z]+)0*(\d+)$", r"\1\2", regex=True) for w in (obj_w, img_w)]
    for raw, form in zip((obj_w, img_w), forms, strict=True):
        if pd.DataFrame({"r": raw, "f": form}).drop_duplicates().duplicated("f").any():
            return  # e.g. B2 and B02 both in one table: perhaps not the same well
    newly = ~obj_w.isin(img_w) & forms[0].isin(forms[1])
    if not newly.any():
        return
    theirs = dict(zip(forms[1], img_w, strict=True))
    ours = obj_w[newly].iloc[0]
    notes.append(f"wells are written {ours} in {object_name} and {theirs[forms[0][newly].iloc[0]]}"
                 f" in {image_name}: matched as the same wells, since they differ only in zero "
                 f"padding ({int(newly.sum())} objects)")
    obj_keys[WELL], img_keys[WELL] = forms


def _unmatched(obj_keys: pd.DataFrame, img_keys: pd.DataFrame, missing: np.ndarray,
               object_name: str, image_name: str) -> str:
    """Why objects found no image: the key values of theirs the image table never has,
    beside the values it has, and the fix."""
    keys = list(obj_keys.columns)
    lost = obj_keys[missing]
    said = []
    for k in keys:
        absent = lost[k][~lost[k].isin(img_keys[k])]
        if len(absent):
            said.append(f"{k} {_examples(absent)} of the objects never occurs in the image "
                        f"table, which has {_examples(img_keys[k])}")
    if not said:  # each value occurs, but not together
        first = ", ".join(f"{k}={v}" for k, v in lost.iloc[0].items())
        has = ", ".join(f"{k}={v}" for k, v in img_keys.iloc[0].items())
        said.append(f"no image has {first} (the image table has e.g. {has})")
    return (f"{int(missing.sum())} of {len(missing)} objects of {object_name} match no image "
            f"of {image_name} on {', '.join(keys)} (logged as unknown_image): "
            f"{'; '.join(said)}; make both tables write these keys alike")


def pair_objects(images: pd.DataFrame, image_had_numbers: bool, objects: pd.DataFrame,
                 image_name: str, object_name: str, notes: list[str]) -> pd.Series:
    """The image ``_key`` of every object row (NaN for objects of no listed image).

    ``images`` has canonical names and a ``_key`` column; ``objects`` has canonical names
    (``Metadata_Plate`` …, ``ImageNumber`` when it has one). Pairs on ``ImageNumber``
    (+ ``TableNumber``) when both tables carry it, checking any shared plate/well/site
    agree; otherwise on every field key both tables share, which must identify an image.

    Raises
    ------
    InputError
        When there is nothing safe to pair on: the object table numbers its images but the
        image table does not (pairing by row order would silently scramble wells), the
        tables share no keys, or the shared keys do not identify one image.
    """
    shared = [k for k in FIELD_KEYS if k in images.columns and k in objects.columns]
    obj_numbered = IMAGE_NUMBER in objects.columns
    if image_had_numbers and obj_numbered:
        ids = [c for c in (TABLE_NUMBER, IMAGE_NUMBER) if c in images.columns]
        if TABLE_NUMBER in images.columns and TABLE_NUMBER not in objects.columns:
            raise InputError(f"{object_name}: missing column TableNumber (the image table "
                             f"{image_name} has one, so ImageNumber alone is ambiguous)")
        _check_agree(images, objects, ids, shared, image_name, object_name)
        return _lookup(images, objects, ids)
    if not shared:
        if obj_numbered:
            raise InputError(
                f"{object_name}: its ImageNumber cannot be matched: {image_name} has no "
                "ImageNumber column, and pairing by row order could put every cell in the "
                "wrong well. Add ImageNumber to the image table, or give both tables "
                "Metadata_Plate/Metadata_Well/Metadata_Site")
        have = ", ".join(map(str, objects.columns[:10]))
        raise InputError(f"{object_name}: missing column(s) ImageNumber, and no metadata key "
                         f"({', '.join(FIELD_KEYS)}) shared with {image_name} to join on "
                         f"(has: {have})")
    obj_lines = objects["_row"] if "_row" in objects.columns else \
        pd.Series(np.arange(len(objects)) + 2, index=objects.index)
    _refuse_empty_keys(objects, shared, object_name, obj_lines, "an object",
                       f"its image in {image_name}")
    _refuse_empty_keys(images, shared, image_name, images.index.to_series() + 2, "an image",
                       f"its objects in {object_name}")
    key_text = pd.DataFrame({k: _key_text(images[k]) for k in shared})
    dup = key_text.duplicated(keep=False)
    if dup.any():
        example = ", ".join(f"{k}={v}" for k, v in key_text[dup].iloc[0].items())
        # Keys the objects lack help only if the image table's rows differ in them.
        full = [k for k in FIELD_KEYS if k in images.columns]
        lacking = [k for k in full if k not in objects.columns]
        full_text = pd.DataFrame({k: _key_text(images[k]) for k in full})[dup]
        fix = (f"{object_name} has no {', '.join(lacking)}, which {image_name} has: add "
               f"{'it' if len(lacking) == 1 else 'them'} to the object table, or add "
               "ImageNumber to both tables"
               if lacking and not full_text.duplicated(keep=False).all()
               else "list each image once, or add ImageNumber to both tables")
        raise InputError(f"{image_name}: {int(dup.sum())} rows share {example}: the keys both "
                         f"tables have ({', '.join(shared)}) do not identify one image; {fix}")
    notes.append(f"objects of {object_name} paired with images of {image_name} on "
                 f"{', '.join(shared)}")
    obj_keys = pd.DataFrame({k: _key_text(objects[k]) for k in shared}, index=objects.index)
    if WELL in shared:
        _same_wells(obj_keys, key_text, object_name, image_name, notes)
    found = _merge(obj_keys, key_text.assign(_key=images["_key"].to_numpy()), shared)
    missing = found.isna().to_numpy()
    if missing.any():
        notes.append(_unmatched(obj_keys, key_text, missing, object_name, image_name))
    return found


def _lookup(images: pd.DataFrame, objects: pd.DataFrame, keys: list[str]) -> pd.Series:
    left = pd.DataFrame({k: _key_text(objects[k]) for k in keys}, index=objects.index)
    right = pd.DataFrame({k: _key_text(images[k]) for k in keys}).assign(_key=images["_key"].values)
    return _merge(left, right, keys)


def _merge(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The ``_key`` of ``right`` for each row of ``left`` (key columns as text), in order."""
    return left.merge(right, on=keys, how="left")["_key"].set_axis(left.index)


def _check_agree(images: pd.DataFrame, objects: pd.DataFrame, ids: list[str],
                 shared: list[str], image_name: str, object_name: str) -> None:
    """Objects that carry their image's plate/well/site must agree with the image table
    (an object's empty value claims nothing: it is paired by its numbers)."""
    if not shared:
        return
    keyed = pd.DataFrame({k: _key_text(images[k]) for k in ids + shared})
    left = pd.DataFrame({k: _key_text(objects[k]).where(objects[k].notna()) for k in ids + shared})
    both = left.merge(keyed, on=ids, how="inner", suffixes=("", "_image"))
    for k in shared:
        bad = (both[k] != both[f"{k}_image"]) & both[k].notna()
        if bad.any():
            r = both[bad].iloc[0]
            raise InputError(
                f"{object_name}: image {r[ids[-1]]} has {k}={r[k]}, but {image_name} says "
                f"{r[f'{k}_image']}: the two tables number images differently")


def planes_as_channels(table: pd.DataFrame, wanted: tuple[str, ...] | None,
                       first_files: list[Path], notes: list[str]) -> pd.DataFrame:
    """Name the planes of multi-channel files the image table does not address.

    CellProfiler records which plane of a stack is which channel in ``Frame_<ch>`` columns;
    other tools write a (C, H, W) TIFF or an OME-TIFF and one file column. Without those
    columns the planes get names only when nothing is guessed: an OME-TIFF's own channel
    names, or ``--channels`` naming exactly as many channels as the file has planes (file
    order; said once in ``notes``). ``first_files`` are the first rows' resolved files; the
    first that can be read says how many planes there are and, with OME names, which
    channels the screen has. Files need not store those channels in one order, so with OME
    names each file's planes are looked up by its own names when its field is read (an
    ``OmeName_<channel>`` column; :func:`cellprof.formats.images.ome_plane`), and a file
    lacking one is reported with the names it has.

    Returns the table with one ``FileName_/PathName_`` pair per named plane, and its
    ``Frame_`` (file order) or ``OmeName_`` (OME names) column.

    Raises
    ------
    InputError
        When a file holds several planes and they cannot be named without guessing.
    """
    from cellprof.errors import ImageError
    from cellprof.formats.images import channel_names, read_planes

    available = [c[len("FileName_"):] for c in table.columns if c.startswith("FileName_")]
    if any(f"Frame_{c}" in table.columns or f"Channel_{c}" in table.columns for c in available):
        return table
    for first_file in first_files:
        try:
            n_planes = read_planes(first_file).shape[0]
            break
        except ImageError:
            continue  # reported when its field is read
    else:
        return table
    if n_planes == 1:
        return table
    named = channel_names(first_file)
    ome = named if named is not None and len(named) == n_planes else None
    if len(available) > 1:  # several channel columns, one stack: only OME names can say
        if ome is None or not set(available) <= set(ome):
            shared = len({str(table[f"FileName_{c}"].iloc[0]) for c in available}) == 1
            what = (f"the image table names channels {', '.join(available)} in it"
                    if shared else f"the image table's channel {available[0]} is one of them")
            has = (f"; its OME channel names are {', '.join(named)}, without "
                   f"{', '.join(c for c in available if c not in named)}"
                   if named else "; it names no channels in OME metadata")
            raise InputError(
                f"{first_file}: holds {n_planes} planes and {what}{has}: rename the "
                "FileName_ columns to those names, or add Frame_<channel> (0-based plane) "
                f"columns, e.g. Frame_{available[0]}")
        notes.append(f"planes matched to channels {', '.join(available)} by each file's own "
                     f"OME channel names (the first, {first_file.name}: {', '.join(ome)})")
        return table.assign(**{f"{OME_NAME}{c}": c for c in available})
    (col,) = available
    if ome is not None:
        names = ome
        notes.append(f"{first_file.name} holds {n_planes} channels named in its OME metadata: "
                     f"{', '.join(names)}; each file's planes are taken by each file's own "
                     "OME channel names")
    elif wanted is not None and len(wanted) == n_planes:
        names = list(wanted)
        notes.append(f"{first_file.name} holds {n_planes} planes and no channel names: took "
                     f"them in file order as {', '.join(names)} (--channels)")
    else:
        raise InputError(
            f"{first_file}: holds {n_planes} planes and neither the image table "
            f"(Frame_<channel> columns) nor the file (OME channel names) says which is which; "
            f"name them in file order with --channels ({n_planes} names)")
    if len(set(names)) != len(names):
        raise InputError(f"{first_file}: channel names repeat ({', '.join(names)})")
    out = table.drop(columns=[f"FileName_{col}", f"PathName_{col}"], errors="ignore")
    for k, name in enumerate(names):
        out[f"FileName_{name}"] = table[f"FileName_{col}"]
        if f"PathName_{col}" in table.columns:
            out[f"PathName_{name}"] = table[f"PathName_{col}"]
        if ome is not None:
            out[f"{OME_NAME}{name}"] = name
        else:
            out[f"Frame_{name}"] = k
    return out
