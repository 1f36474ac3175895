"""Commands that judge and show: ``combine`` (the profiles ``match`` judges), ``match``,
``show``, ``demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from cellprof.cli._app import _progress, app, console
from cellprof.cli._defaults import defaults
from cellprof.example.config import DemoConfig
from cellprof.profile.match import AGGREGATES, METRICS, NONFINITE, NORMALIZE_AT, MatchConfig
from cellprof.profile.normalize import ALIASES, METHODS, SCOPES
from cellprof.report.config import ReportConfig, ShowConfig

# --help shows the library's own defaults (cellprof.cli._defaults).
_MC, _SC, _DC = defaults(MatchConfig), defaults(ShowConfig), defaults(DemoConfig)
_RC = defaults(ReportConfig)
_NORMALISE, _TREATMENTS, _MATCHING = "Normalisation", "Treatments", "Matching"
_PAGE = "Report page (--html; a path here implies it)"
# How commands that compare treatments are told the compound and the controls (match, show).
_CONTROL_HELP = "Negative control compound \\[default: DMSO]."
_QUERY_HELP = "Controls as a pandas query instead."
_COMPOUND_HELP = "Compound column."


@app.command()
def combine(
    profiles: Annotated[list[Path], typer.Argument(
        help="Profiles of the same cells (.h5, CSV, Parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Combined profiles file (.h5).")
    ] = ...,
    names: Annotated[Optional[str], typer.Option(
        help="Block names, comma-separated \\[default: profile kinds].",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")
    ] = False,
) -> None:
    """Join profiles of the same cells (embed's, measure's) into one of several blocks.

    Cells are joined on plate, image and object number, never on row order; `cellprof
    match OUT` then weighs the blocks equally (each block's total variance across the
    treatments made the same). Details: docs/cli.md#combine.
    """
    from cellprof.profile.combine import combine_profiles

    res = combine_profiles(profiles, out, names=names.split(",") if names else None,
                           overwrite=overwrite)
    table = Table(title=f"cellprof combine -> {res.out}", show_header=False)
    table.add_row("cells", f"{res.n_cells}, joined on {', '.join(res.keys)}")
    table.add_row("blocks (features)", ", ".join(f"{k} ({v})" for k, v in res.blocks.items()))
    if res.prefixed:
        table.add_row("features prefixed", f"{res.prefixed} (block name first: their name "
                                           "was taken)")
    console.print(table)


@app.command()
def match(
    profiles: Annotated[list[Path], typer.Argument(
        help="Profiles (.h5) or feature tables (CSV, Parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = ...,
    image_table: Annotated[Optional[Path], typer.Option(
        help="Compound and concentration per well.", show_default=False)] = None,
    moa: Annotated[Optional[Path], typer.Option(
        help="MOA of each compound and dose.", show_default=False)] = None,
    nonfinite: Annotated[Literal[NONFINITE], typer.Option(help="NaN/inf features.")
    ] = _MC["nonfinite"],
    normalize: Annotated[Literal[(*METHODS, *ALIASES)], typer.Option(
        metavar=f"<{'|'.join(METHODS)}>", help="Against the controls.",
        rich_help_panel=_NORMALISE)] = _MC["normalize"],
    scope: Annotated[Literal[SCOPES], typer.Option(
        help="Whose controls count.", rich_help_panel=_NORMALISE)] = _MC["scope"],
    normalize_at: Annotated[Literal[NORMALIZE_AT], typer.Option(
        help="Rows normalised.", rich_help_panel=_NORMALISE)] = _MC["normalize_at"],
    control: Annotated[Optional[str], typer.Option(
        help=_CONTROL_HELP, show_default=False, rich_help_panel=_NORMALISE)] = _MC["control"],
    control_query: Annotated[Optional[str], typer.Option(
        help=_QUERY_HELP, show_default=False, rich_help_panel=_NORMALISE)
    ] = _MC["control_query"],
    aggregate: Annotated[Literal[AGGREGATES], typer.Option(
        help="Cells -> wells -> treatments.", rich_help_panel=_TREATMENTS)] = _MC["aggregate"],
    compound_column: Annotated[str, typer.Option(
        help=_COMPOUND_HELP, rich_help_panel=_TREATMENTS)] = _MC["compound_column"],
    concentration_column: Annotated[str, typer.Option(
        help="Dose column.", rich_help_panel=_TREATMENTS)] = _MC["concentration_column"],
    allow_single_compound_moa: Annotated[bool, typer.Option(
        "--allow-single-compound-moa", help="Keep one-compound MOAs as candidates.",
        rich_help_panel=_TREATMENTS)] = _MC["allow_single_compound_moa"],
    metric: Annotated[Literal[METRICS], typer.Option(
        help="Similarity of profiles.", rich_help_panel=_MATCHING)] = _MC["metric"],
    permutations: Annotated[int, typer.Option(
        help="Shuffles per mAP p-value.", rich_help_panel=_MATCHING)] = _MC["permutations"],
    seed: Annotated[int, typer.Option(
        help="Seed of the shuffles.", rich_help_panel=_MATCHING)] = _MC["seed"],
    html: Annotated[bool, typer.Option(
        "--html", help="Also write OUT/report.html: one page.", rich_help_panel=_PAGE)
    ] = False,
    crops: Annotated[Optional[Path], typer.Option(
        help="Crop store: each treatment's cells.", show_default=False,
        rich_help_panel=_PAGE)] = None,
    model: Annotated[Optional[Path], typer.Option(
        help="model.pt or run folder: reconstructions, typical cells.", show_default=False,
        rich_help_panel=_PAGE)] = None,
    run: Annotated[Optional[Path], typer.Option(
        help="Run folder of the training curves \\[default: the model's].",
        show_default=False, rich_help_panel=_PAGE)] = None,
    compare: Annotated[Optional[list[Path]], typer.Option(
        metavar="<path>", help="Other profiles of these cells to set beside (e.g. measure's).",
        show_default=False, rich_help_panel=_PAGE)] = None,
    cells: Annotated[int, typer.Option(
        help="Cells shown per treatment.", rich_help_panel=_PAGE)] = _RC["cells_per_treatment"],
) -> None:
    """Match treatments by mechanism of action: NSC, NSCB and mAP.

    Aggregates cells -> wells -> treatments, normalises against the control wells of each
    plate (--scope), and finds each treatment's nearest neighbour among other compounds
    (NSC) and other batches too (NSCB). Writes OUT/metrics.json, treatments.csv,
    map_per_moa.csv, treatment_profiles.parquet and confusion_nsc.png; with --html (or any
    option of its panel) also OUT/report.html, one page to open first.
    Details: docs/cli.md#match.
    """
    from cellprof.profile.match import moa_rows, run_match, summary_rows
    from cellprof.report.plots import save_match_figures

    cfg = MatchConfig(normalize=normalize, scope=scope, aggregate=aggregate, metric=metric,
                      control=control, control_query=control_query,
                      compound_column=compound_column,
                      concentration_column=concentration_column, normalize_at=normalize_at,
                      nonfinite=nonfinite, allow_single_compound_moa=allow_single_compound_moa,
                      permutations=permutations, seed=seed)
    page = None
    if html or crops or model or run or compare:
        from cellprof.report.page import match_report

        page = match_report(profiles, out, cfg, image_table=image_table, moa=moa, crops=crops,
                            model=model, run=run, compare=compare or (),
                            config=ReportConfig(cells_per_treatment=cells))
        res = page.match
    else:
        res = run_match(profiles[0] if len(profiles) == 1 else profiles, out, cfg,
                        image_table=image_table, moa=moa)
        if (stale := out / "report.html").exists():  # its numbers were just replaced
            stale.unlink()
            console.print(f"[yellow]note:[/] removed {stale} of an earlier run (its figures "
                          "are no longer these); add --html for a new one", soft_wrap=True)
    save_match_figures(res)
    if page is not None and page.compare is not None:
        save_match_figures(page.compare)
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
    if page is not None:
        for note in page.notes:
            console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
        console.print(f"open first: [bold]{page.path}[/] ({page.size / 1e6:.1f} MB, one "
                      "self-contained page)", soft_wrap=True)


@app.command()
def show(
    checkpoint: Annotated[Path, typer.Argument(
        help="model.pt, checkpoints/last.pt or a run folder.")],
    crops: Annotated[Path, typer.Argument(
        help="Crop store (treatment figures need compounds).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = ...,
    profiles: Annotated[Optional[Path], typer.Option(
        help="Profiles of CROPS from `cellprof embed` (else encoded).",
        show_default=False)] = None,
    treatment: Annotated[Optional[str], typer.Option(
        help="Interpolate to compound\\[@conc] \\[default: the farthest].",
        show_default=False)] = _SC["treatment"],
    cells: Annotated[int, typer.Option(
        help="Sample cells per treatment.")] = _SC["cells_per_treatment"],
    control: Annotated[Optional[str], typer.Option(
        help=_CONTROL_HELP, show_default=False)] = _SC["control"],
    control_query: Annotated[Optional[str], typer.Option(
        help=_QUERY_HELP, show_default=False)] = _SC["control_query"],
    compound_column: Annotated[str, typer.Option(help=_COMPOUND_HELP)] = _SC["compound_column"],
    steps: Annotated[int, typer.Option(help="Frames of the interpolation.")] = _SC["steps"],
    seed: Annotated[int, typer.Option(help="Seed of the sample cells.")] = _SC["seed"],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = _SC["device"],
) -> None:
    """See what differs: reconstructions, a typical cell per treatment, an interpolation.

    Writes OUT/reconstructions*.png (sample cells over their reconstructions),
    OUT/samples.png (cells decoded from random latents), OUT/typical_cells.png (each
    treatment's decoded mean latent beside the control's) and OUT/interpolation.png (from
    the control's mean to a treatment's), all on the input cells' intensity scale. Without
    compounds: the first two only (by plate). Details: docs/cli.md#show.
    """
    from cellprof.report.show import show as run_show

    res = run_show(checkpoint, crops, out, profiles=profiles, config=ShowConfig(
        cells_per_treatment=cells, control=control, control_query=control_query,
        compound_column=compound_column, treatment=treatment, steps=steps,
        seed=seed, device=device))
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
    table = Table(title=f"cellprof show -> {res.out_dir}", show_header=False)
    table.add_row("reconstructions", ", ".join(p.name for p in res.reconstruction_pages))
    table.add_row("samples", res.samples.name if res.samples else "–")
    table.add_row("typical cells", res.typical_cells.name if res.typical_cells else
                  "– (needs treatment labels)")
    table.add_row("interpolation", res.interpolation.name if res.interpolation else
                  "– (needs treatment labels)")
    table.add_row("treatments", str(len(res.treatments)) if res.treatments else "–")
    console.print(table)


@app.command()
def demo(
    outdir: Annotated[Path, typer.Argument(help="Folder for every output.")
    ] = Path("cellprof-demo"),
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUTDIR if it holds earlier results.")] = False,
    steps: Annotated[int, typer.Option(
        help="Training steps (a few minutes on a CPU).")] = _DC["steps"],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = _DC["device"],
    workers: Annotated[int, typer.Option(
        help="Parallel worker processes for cropping.")] = _DC["workers"],
    seed: Annotated[int, typer.Option(help="Seed of the synthetic screen.")
    ] = _DC["synth"].seed,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline",
        help="Match the untrained model too.")] = _DC["baseline"],
) -> None:
    """Run the whole pipeline on a small built-in synthetic screen.

    synth -> crop -> train -> embed -> match -> show, into OUTDIR: screen/, crops.h5, run/,
    profiles.h5, report/, figures/. Never writes over earlier results without --force.
    Details: docs/cli.md#demo.
    """
    from dataclasses import replace

    from cellprof.example.demo import DemoInterrupted, run_demo

    cfg = DemoConfig(synth=replace(_DC["synth"], seed=seed), steps=steps, device=device,
                     workers=workers, baseline=baseline)
    t0 = time.perf_counter()
    try:
        with _progress() as bar:
            res = run_demo(outdir, force=force, config=cfg, progress=bar,
                           train_progress=bar.train)
    except DemoInterrupted as stop:  # as `cellprof train` stops: 130 or 143, not 0 or 1
        console.print(str(stop), style="yellow", markup=False, highlight=False,
                      soft_wrap=True)
        raise typer.Exit(128 + stop.signal) from None
    r = res.report
    table = Table(title=f"cellprof demo: done in {(time.perf_counter() - t0) / 60:.1f} min",
                  show_header=False)
    table.add_row("screen", f"{res.screen.n_fields} fields, {res.screen.n_cells} cells, "
                            f"{r.n_treatments} treatments of {r.n_moas} MOAs -> "
                            f"{res.screen.image_table.parent}")
    table.add_row("crops", f"{res.crops.n_cells} cells -> {res.crops.out}")
    untrained = (f" (untrained: {res.baseline_error['val_mse']:.4f})"
                 if res.baseline_error else "")
    table.add_row("training", f"{res.training.step} steps, held-out MSE "
                              f"{res.training.val.get('val_mse', float('nan')):.4f}{untrained} "
                              f"-> {res.training.out}")
    table.add_row("profiles", f"{res.profiles.n_cells} x {res.profiles.n_features} -> "
                              f"{res.profiles.out}")
    table.add_row("NSC / NSCB", f"{r.nsc:.0%} / {r.nscb:.0%} (chance about "
                                f"{res.chance_nsc:.0%}); mAP {r.map:.2f}")
    if res.baseline is not None:
        b = res.baseline
        table.add_row("untrained model", f"{b.nsc:.0%} / {b.nscb:.0%}; mAP {b.map:.2f}: the "
                                         "same pipeline on the model's initial weights, what "
                                         "training is measured against (on the page beside "
                                         f"the trained model's) -> {b.out_dir}")
    table.add_row("report", f"{r.out_dir} (metrics.json, CSVs, confusion_nsc.png)")
    table.add_row("figures", f"{res.figures.typical_cells.parent}")
    table.add_row("open first", f"{res.page}: the whole analysis on one page, offline")
    console.print(table)
