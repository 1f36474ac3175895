"""Commands that judge and show: ``match``, ``show``, ``demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cellprof.cli._app import (
    _fail,
    _progress,
    _renamed,
    app,
    console,
)
from cellprof.cli._defaults import defaults
from cellprof.errors import CellprofError

_MC = defaults("cellprof.profile.match", "MatchConfig")  # --help shows the library's own defaults
# How commands that compare treatments are told the compound and the controls (match, show).
_Control = Annotated[Optional[str], typer.Option(
    help="Compound name of the negative control [default: DMSO].", show_default=False)]
_ControlQuery = Annotated[Optional[str], typer.Option(
    help="The controls as a pandas query on the metadata, instead of --control, e.g. "
         "\"Metadata_pert_type == 'negcon'\" (JUMP, LINCS).", show_default=False)]
_CompoundColumn = Annotated[str, typer.Option(
    help="Column naming the compound, e.g. Metadata_pert_iname (LINCS) or "
         "Metadata_JCP2022 (JUMP).")]


@app.command()
def match(
    ctx: typer.Context,
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
        help="none; zscore (mean, sd) or robust (median, 1.4826 MAD) against the control "
             "wells; or sphere (typical-variation normalisation fitted on controls). "
             "pycytominer's names work too: standardize = zscore, mad_robustize = robust "
             "(not robustize, which uses the IQR), spherize = sphere.")] = _MC["normalize"],
    scope: Annotated[str, typer.Option(
        help="Where the control statistics come from: plate (each plate's controls), "
             "batch (each batch's: plate-name prefix) or screen (all controls; for screens "
             "with too few controls per plate).")] = _MC["scope"],
    aggregate: Annotated[str, typer.Option(help="Cells -> wells -> treatments: mean or "
                                                "median.")] = _MC["aggregate"],
    metric: Annotated[str, typer.Option(help="cosine, correlation or euclidean.")] = _MC["metric"],
    control: _Control = None,
    control_query: _ControlQuery = None,
    compound_column: _CompoundColumn = _MC["compound_column"],
    concentration_column: Annotated[str, typer.Option(
        help="Column giving the dose, e.g. Metadata_mmoles_per_liter (LINCS); a table "
             "without one has one treatment per compound.")] = _MC["concentration_column"],
    normalize_at: Annotated[str, typer.Option(
        help="Rows normalised against the control rows of their kind: well, site, or cell "
             "(each cell against the control cells, then averaged into wells). Not "
             "--level, which in embed and export is what a table's rows are.")
    ] = _MC["normalize_at"],
    level: Annotated[Optional[str], typer.Option(
        hidden=True, help="Deprecated name of --normalize-at.")] = None,
    nonfinite: Annotated[str, typer.Option(
        help="NaN/inf features: error, drop-features or drop-rows (reported).")
    ] = _MC["nonfinite"],
    allow_single_compound_moa: Annotated[bool, typer.Option(
        help="Keep MOAs with one compound as candidates, never as queries.")
    ] = _MC["allow_single_compound_moa"],
    permutations: Annotated[int, typer.Option(
        help="MOA-label shuffles behind each MOA's mAP p-value (0: none).")
    ] = _MC["permutations"],
    seed: Annotated[int, typer.Option(help="Seed of the shuffles.")] = _MC["seed"],
) -> None:
    """Match treatments by mechanism of action: NSC, NSCB and mAP.

    Aggregates cells -> wells (or sites) -> treatments, normalises against the control
    wells of each plate (or batch, or the screen: --scope), and for every treatment
    finds its nearest neighbour among treatments of other compounds (NSC) and also of
    other batches (NSCB; batch = plate-name prefix). Writes
    OUT/metrics.json, OUT/treatments.csv, OUT/map_per_moa.csv (each MOA's mAP with a
    permutation p-value), OUT/treatment_profiles.parquet and OUT/confusion_nsc.png.
    """
    from cellprof.profile.match import MatchConfig, moa_rows, run_match, summary_rows
    from cellprof.report.plots import save_match_figures

    try:
        normalize_at = _renamed(ctx, "level", "normalize_at")  # --level: one more release
        cfg = MatchConfig(normalize=normalize, scope=scope, aggregate=aggregate, metric=metric,
                          control=control, control_query=control_query,
                          compound_column=compound_column,
                          concentration_column=concentration_column, normalize_at=normalize_at,
                          nonfinite=nonfinite,
                          allow_single_compound_moa=allow_single_compound_moa,
                          permutations=permutations, seed=seed)
        res = run_match(profiles[0] if len(profiles) == 1 else profiles, out, cfg,
                        image_table=image_table, moa=moa)
        save_match_figures(res)
    except CellprofError as exc:
        _fail(exc)
    table = Table(title=f"cellprof match ({cfg.normalize}, {scope}, {metric})",
                  show_header=False)
    for label, value in summary_rows(res):
        table.add_row(label, value)
    console.print(table)
    per_moa = Table("MOA", "queries", "mAP", "p", "q (FDR)", title="mAP per MOA "
                    f"(p: {res.metrics['map_permutations']} label shuffles)")
    for row in moa_rows(res):
        per_moa.add_row(*row)
    console.print(per_moa)


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
    control: _Control = None,
    control_query: _ControlQuery = None,
    compound_column: _CompoundColumn = _MC["compound_column"],
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
    from cellprof.report.show import ShowConfig
    from cellprof.report.show import show as run_show

    try:
        res = run_show(checkpoint, crops, out, profiles=profiles, config=ShowConfig(
            cells_per_treatment=cells, control=control, control_query=control_query,
            compound_column=compound_column, treatment=treatment, steps=steps,
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
    from cellprof.example.demo import DemoConfig, run_demo
    from cellprof.example.synth import SynthConfig

    t0 = time.perf_counter()
    try:
        cfg = DemoConfig(synth=SynthConfig(seed=seed), steps=steps, device=device,
                         workers=workers)
        with _progress() as bar:
            res = run_demo(outdir, force=force, config=cfg, progress=bar,
                           train_progress=bar.train)
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
