"""The ``cellprof`` command: a thin layer of options over the library.

Every command maps its options onto a library call (``cellprof.crop.crop_screen`` …), so
what the CLI does a notebook can do too. Errors a user can fix (:class:`CellprofError`)
print as one red line and exit with status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.table import Table

from cellprof import __version__
from cellprof.errors import CellprofError

app = typer.Typer(
    name="cellprof", no_args_is_help=True, add_completion=False,
    help="Image-based cell profiling: crop cells, train an adversarial progressive VAE, "
         "embed every cell, and match treatments by mechanism of action.",
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"cellprof {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """cellprof: crop -> train -> embed -> match."""


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per stage, fed by the library's ``progress(stage, done, total)``."""
    with Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=console) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _fail(exc: CellprofError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


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
    from cellprof.synth import SynthConfig, synthesize

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
        help="CellProfiler image table (Image.csv, BBBC021_v1_image.csv …; CSV, CSV.gz or "
             "Parquet; spreadsheet or database naming).", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Crop store to write (.h5).")] = ...,
    objects: Annotated[Optional[Path], typer.Option(
        help="Object table with ImageNumber, ObjectNumber, Location_Center_X/Y "
             "(e.g. Nuclei.csv).", show_default=False)] = None,
    segment: Annotated[bool, typer.Option(
        "--segment", help="No object table: find nuclei with scikit-image "
                          "(threshold + split touching nuclei).")] = False,
    singlecell: Annotated[Optional[Path], typer.Option(
        help="Folder of pre-cut single-cell .npy arrays (use with --metadata).",
        show_default=False)] = None,
    metadata: Annotated[Optional[Path], typer.Option(
        help="With --singlecell: one row per crop (crop_path, plate, well, compound …).",
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
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    strict: Annotated[bool, typer.Option(
        help="Fail on the first bad image or row instead of reporting it and going on.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Cut single-cell crops into one HDF5 crop store.

    \b
    Three inputs:
      cellprof crop Image.csv --objects Nuclei.csv [--channels A,B,C] [--root DIR] --out crops.h5
      cellprof crop --singlecell DIR --metadata metadata.csv [--moa moa.csv] --out crops.h5
      cellprof crop Image.csv --segment --out crops.h5

    Writes OUT (crops (N, C, H, W), per-cell Metadata_* table, per-field statistics; see
    docs/formats.md) and, when anything was reported, OUT.issues.csv (kind, file, row,
    reason). An interrupted run leaves OUT.partial; rerun the same command to resume.
    """
    from cellprof.crop import CropConfig, crop_screen
    from cellprof.segment import SegmentConfig
    from cellprof.singlecell import import_singlecell

    t0 = time.perf_counter()
    try:
        if singlecell is not None:
            if metadata is None:
                raise CellprofError("--singlecell needs --metadata TABLE")
            with _progress() as bar:
                summary = import_singlecell(singlecell, metadata, out, moa=moa,
                                            channels=_split(channels), workers=workers,
                                            strict=strict, overwrite=overwrite, progress=bar)
        else:
            if image_table is None:
                raise CellprofError("give an IMAGE_TABLE (or --singlecell DIR --metadata TABLE)")
            if objects is None and not segment:
                raise CellprofError("give --objects OBJECT_TABLE, or --segment to find nuclei")
            try:
                ox, oy = (float(v) for v in offset.split(","))
            except ValueError:
                raise CellprofError(f"--offset must be X,Y numbers, got {offset!r}") from None
            cfg = CropConfig(size=size, channels=_split(channels), edge=edge,
                             illumination=illumination, offset=(ox, oy), object_name=object_name,
                             segment=SegmentConfig(min_area=min_area) if segment else None,
                             nucleus_channel=nucleus_channel, plates=_split(plates))
            with _progress() as bar:
                summary = crop_screen(image_table, out, objects=None if segment else objects,
                                      config=cfg, root=root, moa=moa, workers=workers,
                                      strict=strict, overwrite=overwrite, progress=bar)
    except CellprofError as exc:
        _fail(exc)
    _print_crop_summary(summary, time.perf_counter() - t0)


def _print_crop_summary(s: object, seconds: float) -> None:
    table = Table(title=f"cellprof crop -> {s.out}", show_header=False)
    table.add_row("fields", f"{s.n_fields} ({s.n_fields_failed} failed, "
                            f"{s.resumed_fields} resumed)")
    table.add_row("cells cropped", f"{s.n_cells}  ({s.n_cells / max(seconds, 1e-9):.0f}/s)")
    table.add_row("skipped at image edge", str(s.n_edge_skipped))
    table.add_row("rejected objects", str(s.n_rejected))
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
    from cellprof.merge import merge_stores

    try:
        with _progress() as bar:
            path = merge_stores(inputs, out, overwrite=overwrite, progress=bar)
    except CellprofError as exc:
        _fail(exc)
    console.print(f"merged {len(inputs)} stores -> {path}")


@app.command()
def train(
    crops: Annotated[Path, typer.Argument(help="Crop store from `cellprof crop`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (config, losses.csv, "
                                      "images/, checkpoints/, model.pt).")] = ...,
    model: Annotated[str, typer.Option(
        help="vae (plain beta-VAE), vae-gan (feature matching on all layers from the "
             "start) or vae-gan-progressive (the paper's full model).")] = "vae-gan-progressive",
    steps: Annotated[int, typer.Option(help="Optimisation steps (the paper's 80,000).")] = 80_000,
    batch_size: Annotated[int, typer.Option(help="Crops per step per process.")] = 104,
    lr: Annotated[float, typer.Option(help="Adam learning rate, encoder and decoder.")] = 1e-3,
    disc_lr: Annotated[float, typer.Option(help="SGD learning rate, discriminator.")] = 1e-2,
    latent_dim: Annotated[int, typer.Option(help="Latent dimensions (profile length).")] = 256,
    filters: Annotated[int, typer.Option(help="Encoder and decoder conv filters.")] = 32,
    beta: Annotated[float, typer.Option(help="Weight of the KL term.")] = 2.0,
    schedule: Annotated[str, typer.Option(
        help="Progressive schedule: paper (layer k from step 2,500(k+1), over 2,500 steps) "
             "or scaled (the same proportions of --steps, for short runs).")] = "paper",
    normalization: Annotated[str, typer.Option(
        help="max (each crop / its per-channel max, the paper's) or percentile "
             "(per-plate 1st-99th percentile scaling).")] = "max",
    augment: Annotated[bool, typer.Option(help="Random flips and 90-degree rotations.")] = True,
    val_fraction: Annotated[float, typer.Option(help="Share of fields held out.")] = 0.1,
    memory_limit: Annotated[float, typer.Option(
        help="GiB: load the store into memory when it fits, else stream it.")] = 4.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option(help="bf16 mixed precision (CUDA only).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of weights, split, order, augmentation.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between losses.csv rows.")] = 25,
    val_every: Annotated[int, typer.Option(help="Steps between validation errors.")] = 500,
    image_every: Annotated[int, typer.Option(help="Steps between PNG grids.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in --out from its last checkpoint (exactly).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over in an --out holding a run.")] = False,
) -> None:
    """Train the adversarial progressive VAE on a crop store.

    On CUDA when present (bf16 autocast, channels-last), else the CPU. Multi-GPU or
    multi-node: the same command under `torchrun --nproc-per-node N cellprof train ...`
    (DDP; only rank 0 writes). Ctrl-C saves a checkpoint; `--resume` continues exactly.
    """
    from cellprof.data import DataConfig
    from cellprof.model import ModelConfig
    from cellprof.train import TrainConfig, scaled_schedule, train as run_train

    try:
        if schedule not in ("paper", "scaled"):
            raise CellprofError(f"--schedule must be paper or scaled, got {schedule!r}")
        mcfg = None
        if not resume:
            try:
                mcfg = ModelConfig(variant=model, latent_dim=latent_dim, enc_filters=filters,
                                   dec_filters=filters, beta=beta)
            except ValueError as exc:
                raise CellprofError(str(exc)) from None
            if schedule == "scaled":
                mcfg = scaled_schedule(steps, mcfg)
            elif model == "vae-gan-progressive" and steps < 5 * mcfg.ramp_start:
                console.print(f"[yellow]note:[/] with --steps {steps} the paper's schedule "
                              "never switches on every discriminator layer; "
                              "--schedule scaled keeps its proportions")
        tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, disc_lr=disc_lr, seed=seed,
                           device=device, amp=amp, log_every=log_every, val_every=val_every,
                           image_every=image_every, checkpoint_every=checkpoint_every)
        dcfg = DataConfig(normalization=normalization, augment=augment,
                          val_fraction=val_fraction, memory_limit_gb=memory_limit)
        with _train_progress() as bar:
            res = run_train(crops, out, model_config=mcfg, config=tcfg, data_config=dcfg,
                            resume=resume, overwrite=overwrite, progress=bar)
    except CellprofError as exc:
        _fail(exc)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    table = Table(title=f"cellprof train -> {res.out}", show_header=False)
    table.add_row("status", f"{res.status} at step {res.step}")
    for k, v in res.val.items():
        table.add_row(k, f"{v:.4g}")
    table.add_row("cells/s", f"{res.cells_per_s:.0f}")
    table.add_row("checkpoint", str(res.checkpoint))
    table.add_row("look at", str(res.out / "images"))
    console.print(table)
    if res.status == "interrupted":
        console.print("interrupted: continue with the same command plus --resume")


@contextmanager
def _train_progress() -> Iterator[Callable[[int, int, dict[str, float]], None]]:
    """Step bar with the latest losses, cells/s and ETA."""
    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                  disable=int(os.environ.get("RANK", "0")) != 0) as bar:
        task = None

        def update(step: int, total: int, metrics: dict[str, float]) -> None:
            nonlocal task
            info = " ".join(f"{k}={metrics[k]:.3g}" for k in
                            ("pixel", "kl", "fm", "disc", "val_mse", "cells_per_s") if k in metrics)
            if task is None:
                task = bar.add_task("train", total=total, info=info)
            bar.update(task, completed=step, info=info)

        yield update


@app.command()
def embed(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt, checkpoints/last.pt or a run folder.")],
    crops: Annotated[Path, typer.Argument(help="Crop store to embed (any plates, same channels).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profiles file to write (.h5).")] = ...,
    batch_size: Annotated[int, typer.Option(help="Cells per forward pass.")] = 512,
    logvar: Annotated[bool, typer.Option(help="Also keep each cell's posterior log-variance.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    format: Annotated[Optional[str], typer.Option(
        "--format", help="Also write a table: parquet or csv (Metadata_ columns, then "
                         "features) as OUT.<level>.<format>.", show_default=False)] = None,
    level: Annotated[str, typer.Option(help="Table level: cell, or well (mean).")] = "cell",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Embed every cell: posterior means (N, 256) plus the store's per-cell metadata.

    Writes OUT (HDF5: /features, /cells/<column>, provenance attributes; docs/formats.md),
    resumably (OUT.partial until complete), and optionally a Parquet/CSV table.
    """
    from cellprof.embed import EmbedConfig, embed as run_embed, export

    t0 = time.perf_counter()
    try:
        if format not in (None, "parquet", "csv"):
            raise CellprofError(f"--format must be parquet or csv, got {format!r}")
        with _progress() as bar:
            res = run_embed(checkpoint, crops, out, config=EmbedConfig(
                batch_size=batch_size, logvar=logvar, device=device), overwrite=overwrite,
                progress=bar)
        table = export(res.out, res.out.with_suffix(f".{level}.{format}"), level) \
            if format else None
    except CellprofError as exc:
        _fail(exc)
    console.print(f"embedded {res.n_cells} cells x {res.n_features} features -> {res.out}"
                  + (f" (resumed at cell {res.resumed_from})" if res.resumed_from else "")
                  + f" in {time.perf_counter() - t0:.1f} s" + (f"; table: {table}" if table else ""))


@app.command()
def match(
    profiles: Annotated[list[Path], typer.Argument(
        help="Profiles from `cellprof embed` (.h5), or any cell/site/well feature table "
             "(CSV, CSV.gz, Parquet) with Metadata_ columns or CellProfiler's "
             "Image_Metadata_Plate/_Well keys; several files (shards) are joined.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = ...,
    image_table: Annotated[Optional[Path], typer.Option(
        help="Image table giving compound and concentration per plate+well.",
        show_default=False)] = None,
    moa: Annotated[Optional[Path], typer.Option(
        help="Table of compound, concentration, moa.", show_default=False)] = None,
    normalize: Annotated[str, typer.Option(
        help="none, zscore or robust (per plate against its control wells), or sphere "
             "(typical-variation normalisation fitted on controls).")] = "zscore",
    aggregate: Annotated[str, typer.Option(help="Cells -> wells -> treatments: mean or "
                                                "median.")] = "mean",
    metric: Annotated[str, typer.Option(help="cosine, correlation or euclidean.")] = "cosine",
    control: Annotated[str, typer.Option(help="Compound name of the negative control.")] = "DMSO",
    level: Annotated[str, typer.Option(help="Level normalised against controls: well or "
                                            "site.")] = "well",
    nonfinite: Annotated[str, typer.Option(
        help="NaN/inf features: error, drop-features or drop-rows (reported).")] = "error",
    allow_single_compound_moa: Annotated[bool, typer.Option(
        help="Keep MOAs with one compound as candidates, never as queries.")] = False,
) -> None:
    """Match treatments by mechanism of action: NSC, NSCB and mAP.

    Aggregates cells -> wells (or sites) -> treatments, normalises per plate against the
    control, and for every treatment finds its nearest neighbour among treatments of other
    compounds (NSC) and also of other batches (NSCB; batch = plate-name prefix). Writes
    OUT/metrics.json, OUT/treatments.csv, OUT/treatment_profiles.parquet and
    OUT/confusion_nsc.png.
    """
    from cellprof.match import MatchConfig, run_match, summary_rows

    try:
        cfg = MatchConfig(normalize=normalize, aggregate=aggregate, metric=metric,
                          control=control, level=level, nonfinite=nonfinite,
                          allow_single_compound_moa=allow_single_compound_moa)
        res = run_match(profiles[0] if len(profiles) == 1 else profiles, out, cfg,
                        image_table=image_table, moa=moa)
    except CellprofError as exc:
        _fail(exc)
    table = Table(title=f"cellprof match ({normalize}, {metric})", show_header=False)
    for label, value in summary_rows(res):
        table.add_row(label, value)
    console.print(table)


@app.command()
def show(
    checkpoint: Annotated[Path, typer.Argument(help="model.pt, checkpoints/last.pt or a run folder.")],
    crops: Annotated[Path, typer.Argument(help="Crop store with Metadata_Compound/Concentration.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = ...,
    profiles: Annotated[Optional[Path], typer.Option(
        help="Profiles of CROPS from `cellprof embed` (else the cells needed are encoded).",
        show_default=False)] = None,
    treatment: Annotated[Optional[str], typer.Option(
        help="Interpolation target: compound@concentration or a compound (its highest "
             "concentration); default: the treatment farthest from the control.",
        show_default=False)] = None,
    cells: Annotated[int, typer.Option(help="Sample cells per treatment.")] = 8,
    control: Annotated[str, typer.Option(help="Compound name of the negative control.")] = "DMSO",
    steps: Annotated[int, typer.Option(help="Frames of the interpolation strip.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the sample cells.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """See what differs: reconstructions, a typical cell per treatment, an interpolation.

    Writes OUT/reconstructions*.png (sample cells per treatment over their
    reconstructions), OUT/typical_cells.png (each treatment's decoded mean latent beside
    the control's) and OUT/interpolation.png (decoded latents from the control's mean to
    a treatment's). Channels are shown as a labelled colour composite.
    """
    from cellprof.show import ShowConfig, show as run_show

    try:
        res = run_show(checkpoint, crops, out, profiles=profiles, config=ShowConfig(
            cells_per_treatment=cells, control=control, treatment=treatment, steps=steps,
            seed=seed, device=device))
    except CellprofError as exc:
        _fail(exc)
    table = Table(title=f"cellprof show -> {res.out_dir}", show_header=False)
    table.add_row("reconstructions", ", ".join(p.name for p in res.reconstruction_pages))
    table.add_row("typical cells", res.typical_cells.name)
    table.add_row("interpolation", res.interpolation.name)
    table.add_row("treatments", str(len(res.treatments)))
    console.print(table)


@app.command()
def demo(
    outdir: Annotated[Path, typer.Argument(help="Folder for every output.")] = Path("cellprof-demo"),
    force: Annotated[bool, typer.Option(help="Replace OUTDIR if it holds earlier results.")] = False,
    steps: Annotated[int, typer.Option(help="Training steps (a few minutes on a CPU).")] = 400,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="Parallel worker processes for cropping.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic screen.")] = 0,
) -> None:
    """Run the whole pipeline on a small built-in synthetic screen.

    synth -> crop -> train -> embed -> match -> show, into OUTDIR (default
    ./cellprof-demo): screen/, crops.h5, run/, profiles.h5, report/, figures/. Never
    writes over earlier results without --force.
    """
    from cellprof.demo import DemoConfig, run_demo
    from cellprof.synth import SynthConfig

    t0 = time.perf_counter()
    try:
        cfg = DemoConfig(synth=SynthConfig(seed=seed), steps=steps, device=device,
                         workers=workers)
        with _progress() as bar, _train_progress() as tbar:
            res = run_demo(outdir, force=force, config=cfg, progress=bar, train_progress=tbar)
    except CellprofError as exc:
        _fail(exc)
    r = res.report
    table = Table(title=f"cellprof demo: done in {(time.perf_counter() - t0) / 60:.1f} min",
                  show_header=False)
    table.add_row("screen", f"{res.screen.n_fields} fields, {res.screen.n_cells} cells, "
                            f"{r.n_treatments} treatments of {r.n_moas} MOAs -> "
                            f"{res.screen.image_table.parent}")
    table.add_row("crops", f"{res.crops.n_cells} cells -> {res.crops.out}")
    table.add_row("training", f"{res.training.step} steps, held-out MSE "
                              f"{res.training.val.get('val_mse', float('nan')):.4f} -> "
                              f"{res.training.out}")
    table.add_row("profiles", f"{res.profiles.n_cells} x {res.profiles.n_features} -> "
                              f"{res.profiles.out}")
    table.add_row("NSC / NSCB", f"{r.nsc:.0%} / {r.nscb:.0%} (chance about "
                                f"{res.chance_nsc:.0%}); mAP {r.map:.2f}")
    table.add_row("report", str(r.out_dir))
    table.add_row("open first", f"{res.figures.typical_cells}, then {r.paths['confusion']} "
                                f"and {res.training.out / 'images'}")
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cellprof")


if __name__ == "__main__":
    sys.exit(main())
