"""Commands that make crop stores: ``synth``, ``crop``, ``merge``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from cellprof.cli._app import _progress, _split, app, console
from cellprof.cli._defaults import defaults
from cellprof.errors import CellprofError
from cellprof.example.synth import SynthConfig
from cellprof.formats.safeio import refuse_inputs
from cellprof.formats.store import COMPRESSIONS
from cellprof.prepare.crop import EDGES, CropConfig
from cellprof.prepare.segment import SegmentConfig

_S = defaults(SynthConfig)
_C = defaults(CropConfig)
_SEG = defaults(SegmentConfig)
_INPUTS, _CROPS, _SEGMENT = "Inputs", "Crops", "With --segment"


@app.command()
def synth(
    outdir: Annotated[Path, typer.Argument(help="Folder to write the screen into.")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same screen.")] = _S["seed"],
    batches: Annotated[int, typer.Option(
        help="Batches (plate-name prefixes Week1, Week2 …).")] = _S["batches"],
    plates_per_batch: Annotated[int, typer.Option(
        help="Plates in each batch.")] = _S["plates_per_batch"],
    sites: Annotated[int, typer.Option(help="Fields per well.")] = _S["sites"],
    field_size: Annotated[int, typer.Option(help="Field side in pixels.")] = _S["field_size"],
    cells_per_field: Annotated[int, typer.Option(
        help="Mean cells per field.")] = _S["cells_per_field"],
    multichannel: Annotated[bool, typer.Option(
        "--multichannel", help="One 3-plane TIFF per field, not one file per channel.")
    ] = _S["multichannel"],
) -> None:
    """Write a small synthetic screen shaped like a real one.

    Writes OUTDIR/images/<plate>/*.tif (16-bit DNA, Tubulin, Actin), OUTDIR/Image.csv,
    OUTDIR/Nuclei.csv (CellProfiler spreadsheet style) and OUTDIR/moa.csv. Several MOAs,
    each with ≥2 compounds at ≥2 concentrations, differ by visible phenotypes; DMSO on
    every plate. Details: docs/cli.md#synth.
    """
    from cellprof.example.synth import synthesize

    cfg = SynthConfig(seed=seed, batches=batches, plates_per_batch=plates_per_batch,
                      sites=sites, field_size=field_size, cells_per_field=cells_per_field,
                      multichannel=multichannel)
    with _progress() as bar:
        res = synthesize(outdir, cfg, progress=lambda d, t: bar("synth", d, t))
    console.print(f"wrote {res.n_fields} fields, {res.n_cells} cells: {res.image_table}, "
                  f"{res.object_table}, {res.moa_table}")


@app.command()
def crop(
    image_table: Annotated[Optional[Path], typer.Argument(
        help="Image table, SQLite or CytoTable file, or a folder of images.",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Crop store to write (.h5).")] = ...,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Stop at the first bad image or row.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")
    ] = False,
    objects: Annotated[Optional[Path], typer.Option(
        help="Object table with centres (e.g. Nuclei.csv).", show_default=False,
        rich_help_panel=_INPUTS)] = None,
    tables: Annotated[Optional[str], typer.Option(
        help="SQLite: IMAGE,OBJECTS table names.", show_default=False,
        rich_help_panel=_INPUTS)] = _C["tables"],
    pattern: Annotated[Optional[str], typer.Option(
        help="Folder input: names, e.g. {well}_s{site}_{channel}.tif.",
        show_default=False, rich_help_panel=_INPUTS)] = _C["pattern"],
    segment: Annotated[bool, typer.Option(
        "--segment", help="No object table: find nuclei.", rich_help_panel=_INPUTS)] = False,
    singlecell: Annotated[Optional[Path], typer.Option(
        help="Folder of pre-cut single-cell crops.", show_default=False,
        rich_help_panel=_INPUTS)] = None,
    metadata: Annotated[Optional[Path], typer.Option(
        help="With --singlecell: one row per crop.", show_default=False,
        rich_help_panel=_INPUTS)] = None,
    root: Annotated[Optional[Path], typer.Option(
        help="Folder to find moved images under.", show_default=False,
        rich_help_panel=_INPUTS)] = None,
    moa: Annotated[Optional[Path], typer.Option(
        help="Table of compound, concentration, moa.", show_default=False,
        rich_help_panel=_INPUTS)] = None,
    plates: Annotated[Optional[str], typer.Option(
        help="Only these plates (a shard; `cellprof merge`).", show_default=False,
        rich_help_panel=_INPUTS)] = _C["plates"],
    object_name: Annotated[Optional[str], typer.Option(
        help="Object to centre on \\[default: Nuclei, else the only one].",
        show_default=False, rich_help_panel=_INPUTS)
    ] = _C["object_name"],
    offset: Annotated[str, typer.Option(
        help="X,Y added to object centres.", rich_help_panel=_INPUTS)
    ] = ",".join(f"{v:g}" for v in _C["offset"]),
    channels: Annotated[Optional[str], typer.Option(
        help="Channels to keep, in order, e.g. DNA,Tubulin,Actin.", show_default=False,
        rich_help_panel=_CROPS)] = _C["channels"],
    size: Annotated[str, typer.Option(
        help="Crop side in px, or auto: 2 nucleus diameters.", rich_help_panel=_CROPS)
    ] = _C["size"],
    edge: Annotated[Literal[EDGES], typer.Option(
        help="Cells whose crop leaves the image.", rich_help_panel=_CROPS)] = _C["edge"],
    illumination: Annotated[bool, typer.Option(
        "--illum", help="Divide by a per-plate illumination function.",
        rich_help_panel=_CROPS)] = _C["illumination"],
    compression: Annotated[Literal[tuple(COMPRESSIONS)], typer.Option(
        help="How OUT keeps its crops.", rich_help_panel=_CROPS)] = _C["compression"],
    nucleus_channel: Annotated[Optional[str], typer.Option(
        help="Channel holding nuclei \\[default: the one named DNA, DAPI …].",
        show_default=False,
        rich_help_panel=_SEGMENT)] = _C["nucleus_channel"],
    min_area: Annotated[int, typer.Option(
        help="Smallest nucleus, px.", rich_help_panel=_SEGMENT)] = _SEG["min_area"],
) -> None:
    """Cut single-cell crops into one HDF5 crop store.

    \b
      cellprof crop Image.csv --objects Nuclei.csv --out crops.h5
      cellprof crop load_data.csv --objects Nuclei.csv --out crops.h5   (JUMP)
      cellprof crop screen.sqlite --out crops.h5          (ExportToDatabase)
      cellprof crop cytotable.parquet --out crops.h5      (single-cell table)
      cellprof crop Image.csv --segment --out crops.h5
      cellprof crop images/ --pattern "{well}_s{site}_{channel}.tif" --segment --out crops.h5
      cellprof crop --singlecell DIR [--metadata meta.csv] --out crops.h5

    Writes OUT (crops (N, C, H, W), per-cell metadata, per-field statistics) and
    OUT.issues.csv when anything was reported. Rerun to resume. Details: docs/cli.md#crop.
    """
    from cellprof.prepare.crop import crop_screen
    from cellprof.prepare.singlecell import import_singlecell

    t0 = time.perf_counter()
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
            if given is not None and not given.is_file() and not (
                    given is image_table and given.is_dir()):
                raise CellprofError(f"{given}: no such file")
        try:
            ox, oy = (float(v) for v in offset.split(","))
        except ValueError:
            raise CellprofError(f"--offset must be X,Y numbers, got {offset!r}") from None
        if size != "auto" and not size.isdigit():
            raise CellprofError(f"--size must be a number of pixels or auto, got {size!r}")
        cfg = CropConfig(size=size if size == "auto" else int(size),
                         channels=_split(channels), edge=edge, pattern=pattern,
                         illumination=illumination, offset=(ox, oy), object_name=object_name,
                         segment=SegmentConfig(min_area=min_area) if segment else None,
                         nucleus_channel=nucleus_channel, plates=_split(plates),
                         tables=_split(tables), compression=compression)
        with _progress() as bar:
            summary = crop_screen(image_table, out, objects=None if segment else objects,
                                  config=cfg, root=root, moa=moa, workers=workers,
                                  strict=strict, overwrite=overwrite, progress=bar)
    seconds = time.perf_counter() - t0
    picture = None
    if singlecell is None and segment:  # the library crops; the report layer draws
        from cellprof.report.segmentation import save_segmentation
        picture = save_segmentation(summary.out) or "none (no field could be read)"
    _print_crop_summary(summary, seconds, picture)
    if summary.n_cells == 0:
        # An empty store helps no one and stood in the way of the rerun (it had to be named
        # with --overwrite); the issues file and the segmentation picture say what went wrong.
        summary.out.unlink(missing_ok=True)
        raise CellprofError(_why_no_cells(summary) + f"; {summary.out.name} was not kept, so "
                            "the next run starts afresh")


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


def _print_crop_summary(s: object, seconds: float, picture: object = None) -> None:
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
    if picture is not None:  # on a line of its own: a table would cut a long path short
        console.print(f"segmentation picture: {picture}", soft_wrap=True, highlight=False)


@app.command()
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Crop stores to join, in order.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged crop store (.h5).")] = ...,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")
    ] = False,
) -> None:
    """Join crop stores cut in shards (`cellprof crop --plates ...`) into one.

    Shards must share channels, crop size and pixel type; cells, fields, issues and
    illumination functions are concatenated in the order given.
    """
    from cellprof.prepare.merge import merge_stores

    with _progress() as bar:
        path = merge_stores(inputs, out, overwrite=overwrite, progress=bar)
    console.print(f"merged {len(inputs)} stores -> {path}")
