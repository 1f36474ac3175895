"""Commands that make profiles: ``train`` and ``embed`` (learned), ``measure`` (hand-crafted)."""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, replace
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cellprof.cli._app import (
    _fail,
    _given,
    _progress,
    _renamed,
    app,
    console,
)
from cellprof.cli._defaults import defaults
from cellprof.errors import CellprofError


# Every default below is the library's own (see cellprof.cli._defaults), so `--help` and
# the library cannot drift apart.
_T = defaults("cellprof.learn.train", "TrainConfig")
_D = defaults("cellprof.learn.data", "DataConfig")
_M = defaults("cellprof.learn.model", "ModelConfig")
_E = defaults("cellprof.learn.embed", "EmbedConfig")
_PRECISION_HELP = "auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32 or bf16."
# The optional table `embed` and `measure` both write beside their profiles file.
_TableFormat = Annotated[Optional[str], typer.Option(
    "--format", help="Also write a table: parquet or csv (Metadata_ columns, then "
                     "features) as OUT.<level>.<format>.", show_default=False)]
_TableLevel = Annotated[str, typer.Option(
    help="Table level: cell, well or treatment (means; see `cellprof export`).")]
_Overwrite = Annotated[bool, typer.Option(help="Replace an existing OUT.")]

_KEPT_ON_RESUME = ("model", "latent_dim", "filters", "beta", "decoder_padding",
                   "decoder_upsample", "fm_balance", "fm_weight",
                   "schedule", "crop_scaling", "normalization",
                   "augment", "val_fraction")


@app.command()
def train(
    ctx: typer.Context,
    crops: Annotated[Path, typer.Argument(help="Crop store from `cellprof crop`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (config, losses.csv, "
                                      "images/, checkpoints/, model.pt).")] = ...,
    model: Annotated[str, typer.Option(
        help="vae (plain beta-VAE), vae-gan (feature matching on all layers from the "
             "start) or vae-gan-progressive (the paper's full model).")] = _M["variant"],
    steps: Annotated[int, typer.Option(help="Optimisation steps (the paper's 80,000).")] = _T["steps"],
    batch_size: Annotated[int, typer.Option(help="Crops per step per process.")] = _T["batch_size"],
    lr: Annotated[float, typer.Option(help="Adam learning rate, encoder and decoder.")] = _T["lr"],
    disc_lr: Annotated[float, typer.Option(help="SGD learning rate, discriminator.")] = _T["disc_lr"],
    latent_dim: Annotated[int, typer.Option(
        help="Latent dimensions (profile length).")] = _M["latent_dim"],
    filters: Annotated[int, typer.Option(help="Encoder and decoder conv filters.")] = _M["enc_filters"],
    beta: Annotated[float, typer.Option(help="Weight of the KL term.")] = _M["beta"],
    decoder_padding: Annotated[str, typer.Option(
        help="How the decoder's convolutions pad: replicate, or zeros (the reference's, "
             "which draws a frame; docs/method.md).")] = _M["decoder_padding"],
    decoder_upsample: Annotated[str, typer.Option(
        help="How the decoder doubles its maps: bilinear, or nearest (the reference's, whose "
             "block edges the full model turns into stripes; docs/method.md).")
    ] = _M["decoder_upsample"],
    fm_balance: Annotated[str, typer.Option(
        help="adaptive (feature matching scaled to the pixel term at the decoder's "
             "output, times --fm-weight) or fixed (the reference's scale, times --fm-weight)."
    )] = _M["fm_balance"],
    fm_weight: Annotated[float, typer.Option(
        help="Strength of feature matching: with adaptive balance, its gradient over the pixel "
             "term's at the decoder's output (on real cells 1 paints a frame on every "
             "reconstruction by ~1,000 steps and 0.25 does not, at the same NSC; 1 gives the "
             "synthetic demo better profiles; docs/method.md); with --fm-balance fixed, 1 is "
             "the reference's.")
    ] = _M["fm_weight"],
    schedule: Annotated[str, typer.Option(
        help="Progressive schedule: paper (layer k from step 2,500(k+1), over 2,500 steps) "
             "or scaled (the same proportions of --steps, for short runs).")] = "paper",
    crop_scaling: Annotated[str, typer.Option(
        help="How crops' intensities become model input: max (each crop / its per-channel "
             "max, the paper's) or percentile (per-plate 1st-99th percentile scaling).")
    ] = _D["crop_scaling"],
    normalization: Annotated[Optional[str], typer.Option(
        hidden=True, help="Deprecated name of --crop-scaling.")] = None,
    augment: Annotated[bool, typer.Option(
        help="Random flips and 90-degree rotations.")] = _D["augment"],
    val_fraction: Annotated[float, typer.Option(help="Share of fields held out.")] = _D["val_fraction"],
    memory_limit: Annotated[float, typer.Option(
        help="GiB: load the store into memory when it fits, else stream it.")
    ] = _D["memory_limit_gb"],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _T["device"],
    precision: Annotated[str, typer.Option(help=_PRECISION_HELP)] = _T["precision"],
    compile_: Annotated[bool, typer.Option(
        "--compile/--no-compile",
        help="torch.compile the networks: minutes of compiling first, then faster steps "
             "on a GPU; falls back to eager with a note where it fails.")] = _T["compile"],
    seed: Annotated[int, typer.Option(
        help="Seed of weights, split, order, augmentation.")] = _T["seed"],
    log_every: Annotated[int, typer.Option(help="Steps between losses.csv rows.")] = _T["log_every"],
    val_every: Annotated[int, typer.Option(help="Steps between validation errors.")] = _T["val_every"],
    image_every: Annotated[int, typer.Option(help="Steps between PNG grids.")] = _T["image_every"],
    checkpoint_every: Annotated[int, typer.Option(
        help="Steps between checkpoints.")] = _T["checkpoint_every"],
    resume: Annotated[bool, typer.Option(
        help="Continue the run in --out from its last checkpoint (exactly). --steps, --lr, "
             "--disc-lr, the intervals, --device and --precision may change (recorded in "
             "config.json and losses.csv); model, data, --seed and --batch-size may not.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over in an --out holding a run.")] = False,
) -> None:
    """Train the adversarial progressive VAE on a crop store.

    On CUDA when present, else the CPU; bf16 autocast with channels-last where the
    hardware has bf16 (--precision). Multi-GPU or multi-node: the same command under
    `torchrun --nproc-per-node N cellprof train ...` (DDP; only rank 0 writes).
    Ctrl-C saves a checkpoint; `--resume` continues exactly.
    """
    from cellprof.learn.data import DataConfig
    from cellprof.learn.model import ModelConfig
    from cellprof.learn.train import TrainConfig, saved_train_config, scaled_schedule
    from cellprof.learn.train import train as run_train
    from cellprof.report.plots import save_training_images

    try:
        if schedule not in ("paper", "scaled"):
            raise CellprofError(f"--schedule must be paper or scaled, got {schedule!r}")
        mcfg = None
        if not resume:
            try:
                mcfg = ModelConfig(variant=model, latent_dim=latent_dim, enc_filters=filters,
                                   dec_filters=filters, beta=beta,
                                   decoder_padding=decoder_padding,
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
        dcfg = DataConfig(crop_scaling=_renamed(ctx, "normalization", "crop_scaling"),
                          augment=augment,
                          val_fraction=val_fraction, memory_limit_gb=memory_limit)
        with _progress() as bar:
            res = run_train(crops, out, model_config=mcfg, config=tcfg, data_config=dcfg,
                            resume=resume, overwrite=overwrite, progress=bar.train,
                            pictures=save_training_images)
    except CellprofError as exc:
        _fail(exc)
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
    checkpoint: Annotated[Path, typer.Argument(help="model.pt, checkpoints/last.pt or a run folder.")],
    crops: Annotated[Path, typer.Argument(help="Crop store to embed (any plates, same channels).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profiles file to write (.h5).")] = ...,
    batch_size: Annotated[int, typer.Option(help="Cells per forward pass.")] = _E["batch_size"],
    logvar: Annotated[bool, typer.Option(
        help="Also keep each cell's posterior log-variance.")] = _E["logvar"],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _E["device"],
    precision: Annotated[str, typer.Option(help=_PRECISION_HELP)] = _E["precision"],
    format: _TableFormat = None,
    level: _TableLevel = "cell",
    overwrite: _Overwrite = False,
) -> None:
    """Embed every cell: posterior means (N, 256) plus the store's per-cell metadata.

    Writes OUT (HDF5: /features, /cells/<column>, provenance attributes; docs/formats.md),
    resumably (OUT.partial until complete), and optionally a Parquet/CSV table.
    """
    from cellprof.learn.embed import EmbedConfig
    from cellprof.learn.embed import embed as run_embed

    t0 = time.perf_counter()
    try:
        _check_format(format, level)  # before hours of embedding, not after
        with _progress() as bar:
            res = run_embed(checkpoint, crops, out, config=EmbedConfig(
                batch_size=batch_size, logvar=logvar, device=device, precision=precision),
                overwrite=overwrite,
                progress=bar)
        _done("embedded", res, format, level, t0)
    except CellprofError as exc:
        _fail(exc)


def _check_format(format: str | None, level: str) -> None:
    """Refuse a bad table option before the long run, not after it."""
    if format not in (None, "parquet", "csv"):
        raise CellprofError(f"--format must be parquet or csv, got {format!r}")
    from cellprof.profile.aggregate import LEVELS

    if level not in LEVELS:
        raise CellprofError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")


def _done(verb: str, res: object, format: str | None, level: str, t0: float) -> None:
    """Write the optional table of a profiles file and say what was made."""
    from cellprof.profile.aggregate import export

    table = export(res.out, res.out.with_suffix(f".{level}.{format}"), level) \
        if format else None
    console.print(f"{verb} {res.n_cells} cells x {res.n_features} features -> {res.out}"
                  + (f" (resumed at cell {res.resumed_from})" if res.resumed_from else "")
                  + f" in {time.perf_counter() - t0:.1f} s" + (f"; table: {table}" if table else ""))


@app.command()
def measure(
    crops: Annotated[Path, typer.Argument(help="Crop store from `cellprof crop`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profiles file to write (.h5).")] = ...,
    nucleus_channel: Annotated[Optional[str], typer.Option(
        help="Channel the nucleus is segmented on (default: the store's first).",
        show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Crops measured at once.")] = 256,
    format: _TableFormat = None,
    level: _TableLevel = "cell",
    overwrite: _Overwrite = False,
) -> None:
    """Hand-crafted features of every cell: the classical baseline beside `embed`.

    Nucleus shape, intensity, texture and channel correlation (cellprof.profile.classic, named
    CellProfiler-style) of the store's raw crops, written in the same profiles format as
    `cellprof embed` (profile_kind "hand-crafted", feature_names AreaShape_Area ...), so
    `cellprof match` takes it as it is. Resumable (OUT.partial until complete).
    """
    from cellprof.profile.measure import MeasureConfig
    from cellprof.profile.measure import measure as run_measure

    t0 = time.perf_counter()
    try:
        _check_format(format, level)
        with _progress() as bar:
            res = run_measure(crops, out, config=MeasureConfig(
                batch_size=batch_size, nucleus_channel=nucleus_channel),
                overwrite=overwrite, progress=bar)
        _done("measured", res, format, level, t0)
    except CellprofError as exc:
        _fail(exc)
