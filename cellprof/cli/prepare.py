"""Commands that make crop stores: ``synth``, ``crop``, ``merge``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cellprof.cli._app import (
    _fail,
    _progress,
    _split,
    app,
    console,
)
from cellprof.errors import CellprofError
from cellprof.formats.safeio import refuse_inputs


@app.command()
def synth(
    outdir: Annotated[Path, typer.Argument(help="Folder to write the screen into.")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same screen.")] = 0,
    batches: Annotated[int, typer.Option(help="Batches (plate-name prefixes Week1, Week2 …).")] = 2,
    plates_per_batch: Annotated[int, typer.Option(help="Plates in each batch.")] = 2,
    sites: Annotated[int, typer.Option(help="Fields per well.")] = 2,
    field_size: Annotated[int, typer.Option(help="Field side in pixels.")] = 384,
    cells_per_field: Annotated[int, typer.Option(help="Mean cells per field.")] = 32,
    multichannel: Annotated[bool, typer.Option(
        help="One 3-plane TIFF per field instead of one file per channel.")] = False,
) -> None:
    """Write a small synthetic screen shaped like a real one.

    Writes OUTDIR/images/<plate>/*.tif (16-bit DNA, Tubulin, Actin), OUTDIR/Image.csv,
    OUTDIR/Nuclei.csv (CellProfiler spreadsheet style) and OUTDIR/moa.csv
    (compound, concentration, moa). Several MOAs, each with ≥2 compounds at ≥2
    concentrations, differ by visible phenotypes; DMSO on every plate.
    """
    from cellprof.example.synth import SynthConfig, synthesize

    try:
        cfg = SynthConfig(seed=seed, batches=batches, plates_per_batch=plates_per_batch,
                          sites=sites, field_size=field_size, cells_per_field=cells_per_field,
                          multichannel=multichannel)
        with _progress() as bar:
            res = synthesize(outdir, cfg, progress=lambda d, t: bar("synth", d, t))
    except CellprofError as exc:
        _fail(exc)
    console.print(f"wrote {res.n_fields} fields, {res.n_cells} cells: {res.image_table}, "
                  f"{res.object_table}, {res.moa_table}")


@app.command()
def crop(
    image_table: Annotated[Optional[Path], typer.Argument(
        help="CellProfiler image table (Image.csv, JUMP load_data.csv, BBBC021_v1_image.csv "
             "…; CSV, CSV.gz or Parquet; spreadsheet or database naming), an ExportToDatabase "
             "SQLite file, or a CytoTable single-cell Parquet.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Crop store to write (.h5).")] = ...,
    objects: Annotated[Optional[Path], typer.Option(
        help="Object table with Location_Center_X/Y and ImageNumber or Metadata_Plate/Well/"
             "Site (e.g. Nuclei.csv); not needed for SQLite or single-cell tables.",
        show_default=False)] = None,
    tables: Annotated[Optional[str], typer.Option(
        help="SQLite input: IMAGE,OBJECTS table names (default: found, e.g. Per_Image,"
             "Per_Nuclei).", show_default=False)] = None,
    segment: Annotated[bool, typer.Option(
        "--segment", help="No object table: find nuclei with scikit-image "
                          "(threshold + split touching nuclei).")] = False,
    singlecell: Annotated[Optional[Path], typer.Option(
        help="Folder of pre-cut single-cell crops (.npy, .tif, .png), listed by --metadata "
             "or labelled by class sub-folders (apo/, meta/ …).",
        show_default=False)] = None,
    metadata: Annotated[Optional[Path], typer.Option(
        help="With --singlecell: one row per crop (crop_path, plate, well, compound, any "
             "label …); without it, every crop under DIR, its sub-folder its class.",
        show_default=False)] = None,
    channels: Annotated[Optional[str], typer.Option(
        help="Channels to keep, in order, e.g. DAPI,Tubulin,Actin (default: all in table "
             "order; with --singlecell: names for the arrays' channels).",
        show_default=False)] = None,
    root: Annotated[Optional[Path], typer.Option(
        help="Folder to find images under when the table's PathName_ is not valid here.",
        show_default=False)] = None,
    size: Annotated[int, typer.Option(help="Crop side in pixels (the paper's 68).")] = 68,
    moa: Annotated[Optional[Path], typer.Option(
        help="Table of compound, concentration, moa to label treatments.",
        show_default=False)] = None,
    edge: Annotated[str, typer.Option(
        help="Cells whose crop leaves the image: skip (counted) or pad (zeros).")] = "skip",
    illumination: Annotated[bool, typer.Option(
        "--illum/--no-illum", help="Divide fields by a per-plate, per-channel smooth "
                                   "illumination function (crops stored as float32).")] = False,
    offset: Annotated[str, typer.Option(
        help="X,Y added to object centres (pipelines that cropped images before "
             "measuring, e.g. 501,251 for ExampleFly).")] = "0,0",
    object_name: Annotated[str, typer.Option(
        help="Object prefix in database-style tables (Nuclei_Location_Center_X).")] = "Nuclei",
    nucleus_channel: Annotated[Optional[str], typer.Option(
        help="With --segment: channel holding nuclei (default: the first).",
        show_default=False)] = None,
    min_area: Annotated[int, typer.Option(help="With --segment: smallest nucleus, px.")] = 30,
    plates: Annotated[Optional[str], typer.Option(
        help="Only these plates, e.g. one cluster job per plate; join shards with "
             "`cellprof merge`.", show_default=False)] = None,
    compression: Annotated[str, typer.Option(
        help="How OUT keeps its crops: gzip (level 1, ~0.6 of the size on real crops; any "
             "HDF5 tool reads it) or none (~1.6x the space; crop takes about a fifth less "
             "time, and training streams it without decompressing).")
    ] = "gzip",
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    strict: Annotated[bool, typer.Option(
        help="Fail on the first bad image or row instead of reporting it and going on.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Cut single-cell crops into one HDF5 crop store.

    \b
    Inputs:
      cellprof crop Image.csv --objects Nuclei.csv --out crops.h5
      cellprof crop load_data.csv --objects Nuclei.csv --out crops.h5   (JUMP)
      cellprof crop screen.sqlite [--tables Per_Image,Per_Nuclei] --out crops.h5
      cellprof crop cytotable.parquet --out crops.h5   (single-cell table)
      cellprof crop Image.csv --segment --out crops.h5
      cellprof crop --singlecell DIR --metadata meta.csv --out crops.h5
      cellprof crop --singlecell DIR --out crops.h5   (crops in DIR/<class>/)

    A JUMP load_data.csv and its objects are joined on the Metadata_ keys both tables
    share; a CytoTable single-cell table is both the image and the object table.
    --channels A,B,C picks and orders channels (or names an image's planes), --root DIR
    finds images moved since the tables were written, and --moa moa.csv labels
    treatments with their MOA.

    Writes OUT (crops (N, C, H, W), per-cell Metadata_* table, per-field statistics; see
    docs/formats.md) and, when anything was reported, OUT.issues.csv (kind, file, row,
    reason). An interrupted run leaves OUT.partial; rerun the same command to resume.
    """
    from cellprof.prepare.crop import CropConfig, crop_screen
    from cellprof.prepare.segment import SegmentConfig
    from cellprof.prepare.singlecell import import_singlecell

    t0 = time.perf_counter()
    try:
        if singlecell is not None:
            refuse_inputs(out, [metadata, moa])
            with _progress() as bar:
                summary = import_singlecell(singlecell, metadata, out, moa=moa,
                                            channels=_split(channels), workers=workers,
                                            strict=strict, overwrite=overwrite, progress=bar,
                                            compression=compression)
        else:
            if image_table is None:
                raise CellprofError("give an IMAGE_TABLE (or --singlecell DIR --metadata TABLE)")
            for given in (image_table, objects, moa):
                if given is not None and not given.is_file():
                    raise CellprofError(f"{given}: no such file")
            try:
                ox, oy = (float(v) for v in offset.split(","))
            except ValueError:
                raise CellprofError(f"--offset must be X,Y numbers, got {offset!r}") from None
            cfg = CropConfig(size=size, channels=_split(channels), edge=edge,
                             illumination=illumination, offset=(ox, oy), object_name=object_name,
                             segment=SegmentConfig(min_area=min_area) if segment else None,
                             nucleus_channel=nucleus_channel, plates=_split(plates),
                             tables=_split(tables), compression=compression)
            with _progress() as bar:
                summary = crop_screen(image_table, out, objects=None if segment else objects,
                                      config=cfg, root=root, moa=moa, workers=workers,
                                      strict=strict, overwrite=overwrite, progress=bar)
    except CellprofError as exc:
        _fail(exc)
    _print_crop_summary(summary, time.perf_counter() - t0)
    if summary.n_cells == 0:
        _fail(CellprofError(_why_no_cells(summary)))


def _why_no_cells(s: object) -> str:
    """The reason a crop produced nothing, from its counts and issue kinds."""
    if s.n_fields and s.n_fields_failed == s.n_fields:
        kinds = ", ".join(f"{k} {n}" for k, n in s.issues.items())
        why = f"every one of the {s.n_fields} fields failed ({kinds})"
    elif s.n_edge_skipped or s.n_rejected:
        why = (f"all {s.n_edge_skipped + s.n_rejected} objects were skipped at the image "
               f"edge ({s.n_edge_skipped}) or rejected ({s.n_rejected}); try --edge pad or a "
               "smaller --size")
    else:
        why = "the object table has no objects for these fields"
    log = f"; see {s.issues_file}" if s.issues_file else ""
    return f"no cells were cropped: {why}{log}"


def _print_crop_summary(s: object, seconds: float) -> None:
    table = Table(title=f"cellprof crop -> {s.out}", show_header=False)
    table.add_row("fields", f"{s.n_fields} ({s.n_fields_failed} failed, "
                            f"{s.resumed_fields} resumed)")
    table.add_row("cells cropped", f"{s.n_cells}  ({s.n_cells / max(seconds, 1e-9):.0f}/s)")
    table.add_row("skipped at image edge", str(s.n_edge_skipped))
    table.add_row("rejected objects", str(s.n_rejected))
    for note in getattr(s, "notes", ()):
        console.print(f"note: {note}", soft_wrap=True, highlight=False)
    for kind, n in s.issues.items():
        table.add_row(f"issue: {kind}", str(n))
    if s.issues_file:
        table.add_row("issue log", str(s.issues_file))
    console.print(table)


@app.command()
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Crop stores to join, in order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged crop store (.h5).")] = ...,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Join crop stores cut in shards (`cellprof crop --plates ...`) into one.

    Shards must share channels, crop size and pixel type; cells, fields, issues and
    illumination functions are concatenated in the order given.
    """
    from cellprof.prepare.merge import merge_stores

    try:
        with _progress() as bar:
            path = merge_stores(inputs, out, overwrite=overwrite, progress=bar)
    except CellprofError as exc:
        _fail(exc)
    console.print(f"merged {len(inputs)} stores -> {path}")
