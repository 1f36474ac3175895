"""Commands that make profiles: ``train`` and ``embed`` (learned), ``measure`` (hand-crafted)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.table import Table

from cellprof.cli._app import _given, _progress, app, console
from cellprof.cli._defaults import defaults, keyword_defaults
from cellprof.errors import CellprofError
from cellprof.learn.config import (
    BALANCES,
    CROP_SCALINGS,
    PADDINGS,
    PRECISIONS,
    TTAS,
    UPSAMPLINGS,
    VARIANTS,
    DataConfig,
    EmbedConfig,
    ModelConfig,
    TrainConfig,
)
from cellprof.profile.aggregate import FORMATS, LEVELS, export_table
from cellprof.profile.measure import MeasureConfig

# Every default below is a config field's (cellprof.cli._defaults), so --help and the
# library cannot drift apart.
_T, _D, _M, _E = defaults(TrainConfig), defaults(DataConfig), defaults(ModelConfig), \
    defaults(EmbedConfig)
# Panels of `train --help`; what --resume keeps is the model's and the data's.
_MODEL, _DECODER, _DATA = "Model (kept on --resume)", "Decoder and feature matching (kept " \
    "on --resume)", "Data (kept on --resume)"
_OPT, _HARDWARE, _LOG = "Optimisation", "Hardware", "Logging"
_DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."
_PRECISION_HELP = "auto: bf16 where supported."
_Precision = Annotated[Literal[PRECISIONS], typer.Option(help=_PRECISION_HELP)]
_Device = Annotated[str, typer.Option(help=_DEVICE_HELP)]
# The optional table `embed` and `measure` both write beside their profiles file.
_TableFormat = Annotated[Optional[Literal[FORMATS]], typer.Option(
    "--format", help="Also write OUT.<level>.<format>.", show_default=False)]
_TableLevel = Annotated[Literal[LEVELS], typer.Option(help="Rows of that table.")]
_Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")]
_LEVEL = keyword_defaults(export_table)["level"]

_KEPT_ON_RESUME = ("model", "latent_dim", "filters", "beta", "decoder_padding",
                   "decoder_upsample", "fm_balance", "fm_weight", "schedule", "crop_scaling",
                   "augment", "val_fraction", "balance_by")


@app.command()
def train(
    ctx: typer.Context,
    crops: Annotated[Path, typer.Argument(help="Crop store from `cellprof crop`.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run folder (config, losses, images, checkpoints).")] = ...,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in OUT exactly, from its last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start over in an OUT holding a run.")] = False,
    model: Annotated[Literal[VARIANTS], typer.Option(
        help="Network.", rich_help_panel=_MODEL)] = _M["variant"],
    latent_dim: Annotated[int, typer.Option(
        help="Profile length.", rich_help_panel=_MODEL)] = _M["latent_dim"],
    filters: Annotated[int, typer.Option(
        help="Conv filters per layer.", rich_help_panel=_MODEL)] = _M["enc_filters"],
    beta: Annotated[float, typer.Option(
        help="Weight of the KL term.", rich_help_panel=_MODEL)] = _M["beta"],
    schedule: Annotated[Literal["paper", "scaled"], typer.Option(
        help="Ramp of the GAN layers.", rich_help_panel=_MODEL)] = "paper",
    decoder_padding: Annotated[Literal[PADDINGS], typer.Option(
        help="How the decoder pads.", rich_help_panel=_DECODER)] = _M["decoder_padding"],
    decoder_upsample: Annotated[Literal[UPSAMPLINGS], typer.Option(
        help="How the decoder upsamples.", rich_help_panel=_DECODER)
    ] = _M["decoder_upsample"],
    fm_balance: Annotated[Literal[BALANCES], typer.Option(
        help="How matching is scaled.", rich_help_panel=_DECODER)] = _M["fm_balance"],
    fm_weight: Annotated[float, typer.Option(
        help="Strength of feature matching.", rich_help_panel=_DECODER)] = _M["fm_weight"],
    crop_scaling: Annotated[Literal[CROP_SCALINGS], typer.Option(
        help="Intensity scaling.", rich_help_panel=_DATA)] = _D["crop_scaling"],
    augment: Annotated[bool, typer.Option(
        help="Flips and quarter turns.", rich_help_panel=_DATA)] = _D["augment"],
    val_fraction: Annotated[float, typer.Option(
        help="Share of fields held out.", rich_help_panel=_DATA)] = _D["val_fraction"],
    memory_limit: Annotated[float, typer.Option(
        help="Load up to this many GiB.", rich_help_panel=_DATA)] = _D["memory_limit_gb"],
    balance_by: Annotated[Optional[str], typer.Option(
        metavar="COLUMNS", help="Even batches over groups \\[default: none].",
        show_default=False, rich_help_panel=_DATA)] = None,
    steps: Annotated[int, typer.Option(
        help="Optimisation steps.", rich_help_panel=_OPT)] = _T["steps"],
    batch_size: Annotated[int, typer.Option(
        help="Crops per step per process.", rich_help_panel=_OPT)] = _T["batch_size"],
    lr: Annotated[float, typer.Option(
        help="Adam learning rate, encoder and decoder.", rich_help_panel=_OPT)] = _T["lr"],
    disc_lr: Annotated[float, typer.Option(
        help="SGD learning rate, discriminator.", rich_help_panel=_OPT)] = _T["disc_lr"],
    seed: Annotated[int, typer.Option(
        help="Seed of weights, split, order, augmentation.", rich_help_panel=_OPT)
    ] = _T["seed"],
    device: Annotated[str, typer.Option(
        help=_DEVICE_HELP, rich_help_panel=_HARDWARE)] = _T["device"],
    precision: Annotated[Literal[PRECISIONS], typer.Option(
        help=_PRECISION_HELP, rich_help_panel=_HARDWARE)] = _T["precision"],
    compile_: Annotated[bool, typer.Option(
        "--compile/--no-compile", help="Compile the networks.", rich_help_panel=_HARDWARE)
    ] = _T["compile"],
    log_every: Annotated[int, typer.Option(
        help="Steps between losses.csv rows.", rich_help_panel=_LOG)] = _T["log_every"],
    val_every: Annotated[int, typer.Option(
        help="Steps between validation errors.", rich_help_panel=_LOG)] = _T["val_every"],
    image_every: Annotated[int, typer.Option(
        help="Steps between PNG grids.", rich_help_panel=_LOG)] = _T["image_every"],
    checkpoint_every: Annotated[int, typer.Option(
        help="Steps between checkpoints.", rich_help_panel=_LOG)] = _T["checkpoint_every"],
) -> None:
    """Train the adversarial progressive VAE on a crop store.

    On CUDA when present, then Apple's GPU, else the CPU. Several GPUs or nodes: the same
    command under `torchrun --nproc-per-node N cellprof train ...`. Ctrl-C saves a checkpoint;
    --resume continues exactly, keeping the model, the data, --seed and --batch-size.
    Details: docs/cli.md#train.
    """
    from cellprof.learn.train import saved_train_config, scaled_schedule
    from cellprof.learn.train import train as run_train
    from cellprof.report.plots import save_training_images

    mcfg = None
    if not resume:
        try:
            mcfg = ModelConfig(variant=model, latent_dim=latent_dim, enc_filters=filters,
                               dec_filters=filters, beta=beta, decoder_padding=decoder_padding,
                               decoder_upsample=decoder_upsample, fm_balance=fm_balance,
                               fm_weight=fm_weight)
        except ValueError as exc:
            raise CellprofError(str(exc)) from None
        if schedule == "scaled":
            mcfg = scaled_schedule(steps, mcfg)
        elif model == "vae-gan-progressive" and steps < 5 * mcfg.ramp_start:
            console.print(f"[yellow]note:[/] with --steps {steps} the paper's schedule "
                          "never switches on every discriminator layer; "
                          "--schedule scaled keeps its proportions")
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, disc_lr=disc_lr, seed=seed,
                       device=device, precision=precision, compile=compile_,
                       log_every=log_every, val_every=val_every,
                       image_every=image_every, checkpoint_every=checkpoint_every)
    if resume:  # the run's own settings, changed only where the user asked
        given = _given(ctx)
        kept = [f"--{n.replace('_', '-')}" for n in _KEPT_ON_RESUME if n in given]
        if kept:
            raise CellprofError(f"--resume continues the saved model and data settings; "
                                f"drop {', '.join(kept)} (or start over with --overwrite)")
        tcfg = replace(saved_train_config(out), **{
            k: v for k, v in asdict(tcfg).items() if k in given})
    dcfg = DataConfig(crop_scaling=crop_scaling, augment=augment, val_fraction=val_fraction,
                      memory_limit_gb=memory_limit, balance_by=balance_by or ())
    with _progress() as bar:
        res = run_train(crops, out, model_config=mcfg, config=tcfg, data_config=dcfg,
                        resume=resume, overwrite=overwrite, progress=bar.train,
                        pictures=save_training_images)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")
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
        raise typer.Exit(128 + (res.signal or signal.SIGINT))


@app.command()
def embed(
    checkpoint: Annotated[Path, typer.Argument(
        help="model.pt, checkpoints/last.pt or a run folder.")],
    crops: Annotated[Path, typer.Argument(help="Crop store to embed (same channels).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profiles file to write (.h5).")] = ...,
    batch_size: Annotated[int, typer.Option(help="Crops per forward pass.")] = _E["batch_size"],
    tta: Annotated[Literal[TTAS], typer.Option(
        help="Views (dihedral: 8x).")] = _E["tta"],
    logvar: Annotated[bool, typer.Option(
        "--logvar", help="Also keep each cell's log-variance.")] = _E["logvar"],
    device: _Device = _E["device"],
    precision: _Precision = _E["precision"],
    format: _TableFormat = None,
    level: _TableLevel = _LEVEL,
    overwrite: _Overwrite = False,
) -> None:
    """Embed every cell: posterior means (N, 256) plus the store's per-cell metadata.

    Writes OUT (HDF5: /features, /cells/<column>, provenance; docs/formats.md), resumably
    (OUT.partial until complete), and optionally a Parquet/CSV table. Details:
    docs/cli.md#embed.
    """
    from cellprof.learn.embed import embed as run_embed

    t0 = time.perf_counter()
    with _progress() as bar:
        res = run_embed(checkpoint, crops, out, config=EmbedConfig(
            batch_size=batch_size, tta=tta, logvar=logvar, device=device,
            precision=precision), overwrite=overwrite, progress=bar)
    _done("embedded", res, format, level, t0)


def _done(verb: str, res: object, format: str | None, level: str, t0: float) -> None:
    """Write the optional table of a profiles file and say what was made."""
    from cellprof.profile.aggregate import export

    table = export(res.out, res.out.with_suffix(f".{level}.{format}"), level) \
        if format else None
    console.print(f"{verb} {res.n_cells} cells x {res.n_features} features -> {res.out}"
                  + (f" (resumed at cell {res.resumed_from})" if res.resumed_from else "")
                  + f" in {time.perf_counter() - t0:.1f} s"
                  + (f"; table: {table}" if table else ""))


_MC = defaults(MeasureConfig)


@app.command()
def measure(
    crops: Annotated[Path, typer.Argument(help="Crop store from `cellprof crop`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profiles file to write (.h5).")] = ...,
    nucleus_channel: Annotated[Optional[str], typer.Option(
        help="Nucleus channel \\[default: as crop].",
        show_default=False)] = _MC["nucleus_channel"],
    batch_size: Annotated[int, typer.Option(help="Crops measured at once.")] = _MC["batch_size"],
    format: _TableFormat = None,
    level: _TableLevel = _LEVEL,
    overwrite: _Overwrite = False,
) -> None:
    """Hand-crafted features of every cell: the classical baseline beside `embed`.

    Nucleus shape, intensity, texture and channel correlation, named CellProfiler-style,
    in the same profiles format as `cellprof embed`, so `cellprof match` takes it as it
    is. Resumable (OUT.partial until complete). Details: docs/cli.md#measure.
    """
    from cellprof.profile.measure import measure as run_measure

    t0 = time.perf_counter()
    with _progress() as bar:
        res = run_measure(crops, out, config=MeasureConfig(
            batch_size=batch_size, nucleus_channel=nucleus_channel),
            overwrite=overwrite, progress=bar)
    _done("measured", res, format, level, t0)
