"""``cellprof crop``: plate images + CellProfiler tables -> one HDF5 crop store.

A run has three steps: *plan* (read the tables, resolve every image path, group object
centres by field; all table problems are found here, before any pixel is read),
optionally *estimate illumination* (one pass over every field of a plate), then *crop*
(one field per task, in parallel workers; the parent commits results in table order).

Nothing is lost on interruption: results go to ``<out>.partial`` field by field, and
rerunning the same command resumes after the last committed field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.images import read_planes, resolve_image
from cellprof.formats.safeio import atomic_path, files_fingerprint, fingerprint, refuse_inputs
from cellprof.formats.schema import (
    CELL_KEYS,
    CENTER_X,
    CENTER_Y,
    FIELD_KEY,
    KEY_METADATA,
    OBJECT_NUMBER,
    store_columns,
)
from cellprof.formats.store import CropStoreWriter, check_compression, column_kind
from cellprof.prepare.fieldwork import (
    WORKER_BUFFER,
    FieldTask,
    field_mean,
    issue,
    process_field,
)
from cellprof.prepare.folder import table_input
from cellprof.prepare.illumination import IlluminationAccumulator
from cellprof.prepare.nuclei import fit_to_nuclei
from cellprof.prepare.runner import Progress, commit_results, ordered_map, worker_count
from cellprof.prepare.segment import SegmentConfig
from cellprof.prepare.sources import (
    FIELD_KEYS,
    OME_NAME,
    Sources,
    pair_objects,
    planes_as_channels,
    read_sources,
)
from cellprof.prepare.tables import (
    AREA,
    DEFAULT_OBJECT,
    PLATE,
    canonical_columns,
    channels_of,
    complete_metadata,
    join_moa,
    object_centres,
    read_moa_table,
    whole_numbers,
)

EDGES = ("skip", "pad")
"""What happens to a cell whose crop leaves the image: skipped (counted), or padded with zeros."""


@dataclass(frozen=True)
class CropConfig:
    """Settings of a crop run; a resumed run must use the same ones."""

    size: int | str = 68
    """Crop side in pixels (the paper's 68, for nuclei about 33 px across), or ``"auto"``:
    twice the median nucleus diameter, measured on a few fields with ``segment`` or read from
    an object table of nuclei's ``AreaShape_Area``, to a multiple of 4
    (:mod:`cellprof.prepare.nuclei`)."""
    channels: tuple[str, ...] | None = None
    """Channel names to keep, in this order; None keeps all ``FileName_`` channels."""
    edge: str = "skip"
    """Cells whose crop leaves the image: ``"skip"`` (counted) or ``"pad"`` (zeros)."""
    illumination: bool = False
    """Divide each field by its plate's smooth per-channel illumination function."""
    offset: tuple[float, float] = (0.0, 0.0)
    """(x, y) added to object centres, for pipelines that cropped images before measuring."""
    object_name: str | None = None
    """Object whose centres to use in a database-style table (``Nuclei_Location_Center_X``);
    None: Nuclei, else the only object the table has (said in the notes). A named object the
    table lacks is refused, listing the objects it has."""
    segment: SegmentConfig | None = None
    """Find nuclei with scikit-image instead of reading an object table."""
    nucleus_channel: str | None = None
    """Channel to segment nuclei in (default: the one channel named like a DNA stain, e.g.
    DNA, DAPI, Hoechst; refused when none or several are)."""
    pattern: str | None = None
    """A folder of images as input: which parts of the file names are the plate, well,
    site and channel, e.g. ``"{well}_s{site}_{channel}.tif"`` (default: found;
    :mod:`cellprof.prepare.folder`)."""
    plates: tuple[str, ...] | None = None
    """Only these plates (a shard of the screen, e.g. one cluster job per plate)."""
    tables: tuple[str, ...] | None = None
    """SQLite input: the image and object table names (default: found, ``*Per_Image`` and
    ``*Per_<object_name>`` or ``*Per_Object``)."""
    compression: str = "gzip"
    """How the store keeps its crops: ``"gzip"`` (level 1 after byte-shuffle, ~0.6 of the
    size on real crops) or ``"none"`` (crop then takes 10-15% less time: 1.30x the
    image-reading time with one worker, against 1.46; see
    :data:`cellprof.formats.store.COMPRESSIONS` and docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        if self.size != "auto" and not (isinstance(self.size, int) and 8 <= self.size <= 1024):
            raise InputError(f"--size must be between 8 and 1024 pixels, or auto, got "
                             f"{self.size}")
        if self.tables is not None and (len(self.tables) != 2 or not all(self.tables)):
            n = len([t for t in self.tables if t])
            raise InputError(f"--tables takes IMAGE,OBJECTS: two table names, image table "
                             f"first (e.g. --tables Per_Image,Per_Nuclei), got {n} "
                             f"name{'' if n == 1 else 's'} ({','.join(self.tables)})")
        if self.edge not in EDGES:
            raise InputError(f"--edge must be one of {', '.join(EDGES)}, got {self.edge!r}")
        check_compression(self.compression)


@dataclass(frozen=True)
class CropSummary:
    """What a crop run did, printed by the CLI and stored in the file's attributes."""

    out: Path
    n_fields: int
    n_fields_failed: int
    n_cells: int
    n_edge_skipped: int
    n_rejected: int
    issues: dict[str, int]
    issues_file: Path | None
    resumed_fields: int
    notes: tuple[str, ...] = ()
    """What cellprof decided for the user and says once (e.g. the keys objects joined on)."""


def plan(image_table: str | Path, objects: str | Path | None, config: CropConfig,
         root: str | Path | None = None, moa: str | Path | None = None,
         notes: list[str] | None = None,
         ) -> tuple[list[FieldTask], list[str], list[dict[str, Any]]]:
    """Read the tables into one task per field; return tasks, channels and table issues.

    ``objects`` may be None for a SQLite file or a single-cell table that holds both
    (see :mod:`cellprof.prepare.sources`); what was decided on the user's behalf (tables found,
    join keys) is appended to ``notes``.
    """
    image_table = Path(image_table)
    notes = [] if notes is None else notes
    src = read_sources(image_table, objects, object_name=config.object_name or DEFAULT_OBJECT,
                       tables=config.tables, need_objects=config.segment is None)
    notes.extend(src.notes)
    table = canonical_columns(src.images)
    keep = ("FileName_", "PathName_", "Frame_", "Channel_", "Height_", "Width_", "Metadata_")
    table = table[[c for c in table.columns
                   if c.startswith(keep) or c in ("ImageNumber", "TableNumber")]].copy()
    if not channels_of(table):
        raise InputError(f"{src.image_name}: no FileName_<channel> (or "
                         "Image_FileName_<channel>) columns: is this a CellProfiler image table?")
    root_dir = Path(root) if root is not None else None
    table = planes_as_channels(table, config.channels, _first_files(table, root_dir, image_table),
                               notes)
    available = channels_of(table)
    channels = list(config.channels) if config.channels else available
    unknown = [c for c in channels if c not in available]
    if unknown:
        raise InputError(f"{image_table}: no channel {', '.join(unknown)} "
                         f"(channels: {', '.join(available)})")
    had_numbers = "ImageNumber" in table.columns
    if not had_numbers:  # a field's id in the store; never used to pair objects
        table["ImageNumber"] = np.arange(1, len(table) + 1)
    table["ImageNumber"] = whole_numbers(table["ImageNumber"], "ImageNumber", image_table)
    # Database exports number images per TableNumber: the pair identifies a field.
    table["_key"] = _field_keys(table)
    if table["_key"].duplicated().any():
        dup = table["_key"][table["_key"].duplicated()].iloc[0]
        raise InputError(f"{src.image_name}: image {dup} appears twice (ImageNumber, with "
                         "TableNumber when present, must identify one row)")
    issues: list[dict[str, Any]] = []
    centres: dict[str, _Objects] = {}
    if src.objects is not None:
        centres = _object_centres(src, table, had_numbers, config, issues, notes)
    elif config.segment is None:
        raise InputError("give an object table (--objects) or ask for segmentation (--segment)")
    table = complete_metadata(table, channels[0])
    if config.plates:
        missing = sorted(set(config.plates) - set(table[PLATE]))
        if missing:
            raise InputError(f"{image_table}: no plate {', '.join(missing)} (plates: "
                             f"{', '.join(sorted(set(table[PLATE]))[:8])} …)")
        table = table[table[PLATE].isin(config.plates)]
    if moa is not None:
        table = join_moa(table, read_moa_table(moa), moa)
    meta_cols = [c for c in table.columns if c.startswith("Metadata_") or c == "TableNumber"]
    object_file = str(objects if objects is not None else image_table)

    tasks = []
    # Rows keep their place in the file (index) through --plates, for the issue log.
    for i, r in zip(table.index, table.itertuples(index=False), strict=True):
        rec = dict(zip(table.columns, r, strict=True))
        files = []
        bad = False
        for ch in channels:
            fname = rec.get(f"FileName_{ch}")
            if fname is None or (isinstance(fname, float) and np.isnan(fname)) or fname == "":
                issues.append(issue("missing_filename", image_table, i + 2,
                                    f"FileName_{ch} is empty"))
                bad = True
                continue
            path, _ = resolve_image(rec.get(f"PathName_{ch}"), fname, root=root_dir,
                                    table_dir=image_table.parent)
            files.append((ch, path, _plane(rec, ch)))
        if bad:
            continue
        obj = centres.get(rec["_key"], _NO_OBJECTS)  # CellProfiler writes no rows for
        tasks.append(FieldTask(                         # a field without objects
            key=rec["_key"], image_number=int(rec["ImageNumber"]), row=i + 2,
            meta={c: _plain(rec[c]) for c in meta_cols}, files=files,
            table_file=str(image_table), object_file=object_file,
            centres=None if config.segment is not None else obj.xy,
            object_numbers=obj.numbers, object_rows=obj.rows, object_meta=obj.meta,
            nucleus_areas=obj.areas,
            expected_shape=_expected_shape(rec, channels[0]),
        ))
    if not tasks:
        raise InputError(_no_usable_rows(src.image_name, table, channels))
    return tasks, channels, issues


def _no_usable_rows(image_name: str, table: pd.DataFrame, channels: list[str]) -> str:
    """Why no row of the image table names a file for every channel, column by column."""
    empty = {ch: int((table[f"FileName_{ch}"].isna()
                      | (table[f"FileName_{ch}"].astype(str).str.strip() == "")).sum())
             for ch in channels}
    n = len(table)
    said = "; ".join(f"FileName_{ch} is empty in {'all ' if k == n else ''}{k} "
                     f"row{'' if k == 1 else 's'}" for ch, k in empty.items() if k)
    if not n:
        return f"{image_name}: no image rows (with --plates: none of those plates)"
    return (f"{image_name}: no usable image rows, of {n}: {said}; fill in those file names, "
            "or leave the channel out with --channels")


@dataclass(frozen=True)
class _Objects:
    """One field's objects: centres ``(n, 2)`` x, y, object numbers, table rows, and the
    ``Metadata_*`` values each object has of its own."""

    xy: np.ndarray
    numbers: np.ndarray
    rows: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    areas: np.ndarray | None = None
    """The objects' ``AreaShape_Area`` when the table has it and they are nuclei."""


_NO_OBJECTS = _Objects(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64))


def _object_centres(src: Sources, table: pd.DataFrame, had_numbers: bool, config: CropConfig,
                    issues: list[dict[str, Any]], notes: list[str]) -> dict[str, _Objects]:
    """Each field's objects (centres, numbers, rows, own metadata), paired with the image
    table's rows by :func:`cellprof.prepare.sources.pair_objects`; objects of no listed image
    are reported with the keys they were looked up by.

    ``Metadata_*`` columns of the object table that the image table lacks are the objects'
    own (CytoTable's ``Metadata_Cells_Parent_Nuclei``): kept per object, not per field."""
    obj = object_centres(canonical_columns(src.objects), src.object_name, config.object_name,
                         notes)
    obj[CENTER_X] += config.offset[0]
    obj[CENTER_Y] += config.offset[1]
    obj["_key"] = pair_objects(table, had_numbers, obj, src.image_name, src.object_name, notes)
    by_number = had_numbers and "ImageNumber" in obj.columns
    keys = [k for k in FIELD_KEYS if k in table.columns and k in obj.columns]
    stray = obj[obj["_key"].isna()]
    if stray.empty:
        where = pd.Series([], dtype=str)
    elif by_number:
        where = "image " + stray["ImageNumber"].astype(str)
    else:
        where = "its image (" + pd.DataFrame(
            {k: f"{k}=" + stray[k].astype(str).fillna("") for k in keys}
        ).agg(", ".join, axis=1) + ")"
    for row, said in zip(stray["_row"], where, strict=True):
        issues.append(issue("unknown_image", src.object_name, row,
                            f"{said} is not in {src.image_name}"))
    obj = obj[obj["_key"].notna()].copy()
    if obj[OBJECT_NUMBER].isna().any():  # numbered per image, in table order
        obj[OBJECT_NUMBER] = obj.groupby("_key").cumcount() + 1
    # A repeated object row would become a duplicate cell: reported, the first row kept.
    dup = obj.duplicated(["_key", OBJECT_NUMBER])
    for row, key, number in zip(obj["_row"][dup], obj["_key"][dup], obj[OBJECT_NUMBER][dup],
                                strict=True):
        issues.append(issue("duplicate_object", src.object_name, row,
                            f"object {number} of image {key} appears again; the first row "
                            "is kept"))
    obj = obj[~dup]
    xy = obj[[CENTER_X, CENTER_Y]].to_numpy(np.float64)
    numbers, rows = obj[OBJECT_NUMBER].to_numpy(np.int64), obj["_row"].to_numpy(np.int64)
    own = {c: obj[c].to_numpy() for c in obj.columns if str(c).startswith("Metadata_")
           and c not in table.columns and c not in (*FIELD_KEYS, *KEY_METADATA)}
    areas = obj[AREA].to_numpy(np.float64) if AREA in obj.columns else None
    return {key: _Objects(xy[i], numbers[i], rows[i],  # arrays, not a frame per field:
                          {c: v[i] for c, v in own.items()},  # 1 ms a field otherwise
                          None if areas is None else areas[i])
            for key, i in obj.groupby("_key").indices.items()}


def _first_files(table: pd.DataFrame, root: Path | None, image_table: Path, n: int = 8
                 ) -> list[Path]:
    """The first rows' files of the first channel, resolved as the crop will resolve them."""
    ch = channels_of(table)[0]
    return [resolve_image(rec.get(f"PathName_{ch}"), rec[f"FileName_{ch}"], root=root,
                          table_dir=image_table.parent)[0]
            for _, rec in table.head(n).iterrows() if isinstance(rec[f"FileName_{ch}"], str)]


def _field_keys(table: pd.DataFrame) -> pd.Series:
    numbers = pd.to_numeric(table["ImageNumber"], errors="coerce").astype("Int64").astype(str)
    if "TableNumber" in table.columns:
        return table["TableNumber"].astype(str) + "-" + numbers
    return numbers


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _plane(rec: dict[str, Any], ch: str) -> int | str | None:
    """Which plane of its file is channel ``ch``, as CellProfiler's NamesAndTypes records
    it: ``Channel_<ch>`` for a colour channel (-1 = not one), else ``Frame_<ch>`` for a
    plane of a stack; the OME channel name to look up in the file itself when the planes
    are named by OME metadata (:func:`cellprof.prepare.sources.planes_as_channels`); None
    when the table says neither."""
    name = rec.get(f"{OME_NAME}{ch}")
    if isinstance(name, str):
        return name
    for col in (f"Channel_{ch}", f"Frame_{ch}"):
        v = rec.get(col)
        if v is not None and not pd.isna(v) and int(v) >= 0:
            return int(v)
    return None


def _expected_shape(rec: dict[str, Any], ch: str) -> tuple[int, int] | None:
    h, w = rec.get(f"Height_{ch}"), rec.get(f"Width_{ch}")
    if h is None or w is None or pd.isna(h) or pd.isna(w):
        return None
    return int(h), int(w)


def _source_dtype(tasks: list[FieldTask]) -> str | None:
    """Pixel type of the first readable field: every field must share it, since an 8-bit
    field among 16-bit ones would put its cells on a 256 times smaller scale."""
    for task in tasks:
        try:
            return read_planes(task.files[0][1]).dtype.str
        except InputError:
            continue
    return None


def _store_dtype(source: str | None, illumination: bool) -> str:
    """uint16 for 8/16-bit sources (raw values kept exactly), float32 otherwise."""
    if illumination:
        return "float32"
    if source is None:
        return "uint16"
    kind = np.dtype(source)
    return "uint16" if kind.kind in "ub" and kind.itemsize <= 2 else "float32"


def crop_screen(
    image_table: str | Path, out: str | Path, *, objects: str | Path | None = None,
    config: CropConfig = CropConfig(), root: str | Path | None = None,
    moa: str | Path | None = None, workers: int = 1, strict: bool = False,
    overwrite: bool = False, progress: Progress | None = None,
) -> CropSummary:
    """Cut every cell of a screen into one crop store (see module docstring).

    Parameters
    ----------
    image_table, objects
        CellProfiler image and object tables (CSV, CSV.gz or Parquet; either naming style).
        ``image_table`` may be a folder of images, read by ``config.pattern``
        (:func:`cellprof.prepare.folder.table_input`; the table is written beside ``out``).
    out
        The ``.h5`` file to write; ``<out>.partial`` until complete.
    workers
        Processes reading and cropping fields in parallel.
    strict
        Fail on the first reported problem instead of logging it and going on.
    overwrite
        Replace an existing complete ``out``, and start over rather than resume a
        ``.partial`` one; otherwise an existing ``out`` is an error.
    progress
        Called as ``progress(stage, done, total)``.

    With ``config.segment``, :func:`cellprof.report.segmentation.save_segmentation` then
    draws what was found on a few fields (``cellprof crop`` does, beside ``out``).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    notes: list[str] = []
    # A folder of images becomes the image table it implies, written beside the store.
    image_table, folder_issues = table_input(image_table, out, config.pattern, overwrite, notes,
                                             [("--objects", objects), ("--moa", moa)])
    tasks, channels, plan_issues = plan(image_table, objects, config, root, moa, notes)
    plan_issues = folder_issues + plan_issues
    workers = worker_count(workers, len(tasks))
    if strict and plan_issues:
        raise InputError(_describe(plan_issues[0]))
    nucleus, size = fit_to_nuclei(tasks, channels, config.nucleus_channel, config.segment,
                                  config.size, notes)
    settings = {"mode": "table", "image_table": str(Path(image_table).resolve()),
                "objects": str(Path(objects).resolve()) if objects else None,
                "moa": str(Path(moa).resolve()) if moa else None,
                "root": str(root) if root else None, "channels": channels, **_jsonable(config)}
    images = list(dict.fromkeys(path for t in tasks for _, path, _ in t.files))
    refuse_inputs(out, [image_table, objects, moa, *images])
    source = _source_dtype(tasks)
    dtype = _store_dtype(source, config.illumination)
    cell_cols, field_cols = store_columns(pd.DataFrame([t.meta for t in tasks]), channels)
    inputs = fingerprint({"image table": image_table, "object table": objects,
                          "moa table": moa})
    inputs["image files"] = image_fingerprint(images, Path(root or Path(image_table).parent))
    writer = CropStoreWriter(out, channels=channels, crop_size=size, dtype=dtype,
                             cell_columns=_with_object_columns(cell_cols, tasks),
                             field_columns=field_cols, config=settings, resume=not overwrite,
                             compression=config.compression, inputs=inputs)
    try:
        if writer.resumed_fields == 0 and plan_issues:
            writer.add_issues(pd.DataFrame(plan_issues))
        done = set(writer.done_fields(FIELD_KEY)[FIELD_KEY])
        if config.illumination:
            _attach_illumination(tasks, writer, workers, progress)
        todo = [t for t in tasks if t.key not in done]
        work = _FieldJob(size, config.edge == "pad", dtype, channels, config.segment,
                         nucleus, source)
        commit_results(ordered_map(work, todo, workers), writer,
                       strict=strict, total=len(tasks), done=len(done), progress=progress)
        return finish_store(writer, out, notes)
    finally:
        WORKER_BUFFER.release()  # the fields read in this process (--workers 1)
        writer.close()


def image_fingerprint(paths: Iterable[Path], root: Path) -> dict[str, Any]:
    """The identity of every image a run reads, from one ``stat`` each (size and
    modification time; :func:`cellprof.formats.safeio.files_fingerprint`), kept with the
    tables' fingerprints in the partial store.

    An image corrected or replaced between a kill and the rerun then restarts the crop,
    with a note, instead of leaving the committed fields' cells with the old pixels.
    Hashing every image would read the screen twice; a stat costs about 3 µs a file,
    once per run (0.054 s for 20,000 files on a local ext4 disk, measured; resolving the
    paths in :func:`plan` has already stat'ed each file once, so a cold network file
    system pays its round trips there, not here).
    """
    return files_fingerprint(root, paths)


def _with_object_columns(cells: dict[str, str], tasks: list[FieldTask]) -> dict[str, str]:
    """The ``/cells`` columns with the objects' own metadata (see :func:`_object_centres`)
    after the field's, their kinds read from every object's value."""
    own: dict[str, list[np.ndarray]] = {}
    for t in tasks:
        for c, v in (t.object_meta or {}).items():
            own.setdefault(c, []).append(v)
    if not own:
        return cells
    kinds = {c: column_kind(pd.Series(np.concatenate(v))) for c, v in own.items()}
    meta = {c: k for c, k in cells.items() if c not in CELL_KEYS}
    return {**meta, **{c: k for c, k in kinds.items() if c not in meta},
            **{c: cells[c] for c in CELL_KEYS}}


@dataclass(frozen=True)
class _FieldJob:
    """A picklable ``process_field`` with the run's fixed arguments bound."""

    size: int
    pad: bool
    dtype: str
    channels: list[str]
    segment: SegmentConfig | None
    nucleus: int
    source: str | None = None

    def __call__(self, task: FieldTask):  # noqa: ANN204 - FieldResult
        return process_field(task, self.size, self.pad, self.dtype, self.channels,
                             self.segment, self.nucleus, self.source, WORKER_BUFFER)


def _attach_illumination(tasks: list[FieldTask], writer: CropStoreWriter, workers: int,
                         progress: Progress | None) -> None:
    """Estimate each plate's illumination function (once; kept in the partial file)."""
    have = writer.illumination()
    plates = sorted({str(t.meta.get(PLATE, "")) for t in tasks})
    missing = [p for p in plates if p not in have]
    if missing:
        todo = [t for t in tasks if str(t.meta.get(PLATE, "")) in missing]
        acc: dict[str, IlluminationAccumulator] = {}
        for i, (plate, stack) in enumerate(ordered_map(field_mean, todo, workers)):
            if stack is not None:
                if plate not in acc:
                    acc[plate] = IlluminationAccumulator(stack.shape)
                if stack.shape == acc[plate].shape:
                    acc[plate].add(stack)
            if progress:
                progress("illumination", i + 1, len(todo))
        for plate, a in acc.items():
            writer.set_illumination(plate, a.result())
        have = writer.illumination()
    for t in tasks:
        t.illum = have.get(str(t.meta.get(PLATE, "")))


def finish_store(writer: CropStoreWriter, out: Path, notes: list[str] | None = None
                 ) -> CropSummary:
    """Write the issue log beside the store, then complete and rename the store (every
    way of making a crop store ends here, pre-cut imports included)."""
    issues = writer.issues()
    counts = ({str(k): int(v) for k, v in issues["kind"].value_counts().items()}
              if len(issues) else {})
    issues_file = None
    if len(issues):
        issues_file = out.with_name(out.name + ".issues.csv")
        with atomic_path(issues_file) as tmp:
            issues.to_csv(tmp, index=False)
    fields = writer.done_fields(FIELD_KEY)
    summary = CropSummary(
        out=out, n_fields=len(fields), n_fields_failed=int((fields["Status"] != "ok").sum()),
        n_cells=int(fields["Count_Cropped"].sum()),
        n_edge_skipped=int(fields["Count_EdgeSkipped"].sum()),
        n_rejected=int(fields["Count_Rejected"].sum()), issues=counts,
        issues_file=issues_file, resumed_fields=writer.resumed_fields,
        notes=tuple(notes or ()),
    )
    writer.finish({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(summary).items()})
    return summary


def _describe(rec: dict[str, Any]) -> str:
    where = f"{rec['file']}" + (f", row {rec['row']}" if int(rec["row"]) >= 0 else "")
    return f"{where}: {rec['reason']}"


def _jsonable(config: CropConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))
