"""``cellprof train``: the adversarial progressive VAE on a crop store.

:func:`train` reads top to bottom: resume or start the run folder, build the data, model
and optimisers, then one loop: take this step's batch (from
:class:`cellprof.learn.loader.Loader`, a pure function of seed and step, made a step ahead
on a GPU), one forward and one
backward (:func:`cellprof.learn.losses.compute_losses` wires each network to its own loss), step
both optimisers, decay conv kernels, then log, validate, draw and checkpoint at their
intervals, the only steps at which the host reads the loss (on a GPU every read waits for
the device; divergence is watched on the device in between, :class:`_Watch`). The same
command under ``torchrun --nproc-per-node N`` trains on N processes (DDP: NCCL on GPUs,
gloo on CPU; :mod:`cellprof.learn.device`); only rank 0 writes the run folder
(:mod:`cellprof.learn.runfolder`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cellprof.errors import CellprofError, CheckpointError, InputError
from cellprof.formats.checkpoint import check_fits, load_checkpoint, save_checkpoint
from cellprof.learn.config import TrainConfig
from cellprof.learn.data import CropData, DataConfig
from cellprof.learn.device import (
    Compute,
    Dist,
    agree,
    any_rank,
    check_replicas,
    setup,
    try_compile,
)
from cellprof.learn.embed import load_encoder
from cellprof.learn.loader import Loader
from cellprof.learn.losses import compute_losses, layer_weights
from cellprof.learn.model import ModelConfig, VAEPlus, model_config_of
from cellprof.learn.runfolder import Pictures, RunFolder, StopRequest, holding_run_lock, validate


class TrainingDiverged(CellprofError):
    """The loss became non-finite or exploded; the last good checkpoint is kept."""


RESUME_MAY_CHANGE = ("steps", "lr", "disc_lr", "log_every", "val_every", "image_every",
                     "checkpoint_every", "explode_factor", "device", "precision", "compile")
"""Settings a resumed run takes from the command (recorded in config.json and, for the
learning rates, in every losses.csv row); the others must stay as saved, since the data
stream (seed, batch size) and the optimiser's meaning (decay, momentum) depend on them."""


def resume_changes(saved: TrainConfig, wanted: TrainConfig) -> dict[str, list[Any]]:
    """``{field: [saved, wanted]}`` for what a resume changes, or :class:`InputError`
    naming the options that may not change. ``device`` is not recorded: where a run
    computes does not change what it computes."""
    changed = {k: [getattr(saved, k), getattr(wanted, k)] for k in asdict(saved)
               if getattr(saved, k) != getattr(wanted, k)}
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if fixed:
        raise InputError(
            "--resume cannot change " + ", ".join(
                f"--{k.replace('_', '-')} ({changed[k][0]} -> {changed[k][1]})" for k in fixed)
            + "; they fix the data stream and optimiser: drop them, or start a new run "
            "(another --out, or --overwrite)")
    return {k: v for k, v in changed.items() if k != "device"}


def saved_train_config(out: str | Path) -> TrainConfig:
    """The training settings of the run in ``out`` (its last checkpoint's)."""
    last = Path(out) / "checkpoints" / "last.pt"
    if not last.exists():
        raise CheckpointError(f"{out}: nothing to resume (no checkpoints/last.pt)")
    return _saved_train_config(load_checkpoint(last))


def _saved_train_config(ckpt: dict[str, Any]) -> TrainConfig:
    """A checkpoint's TrainConfig; ``amp`` (saved before --precision) meant bf16 where
    supported, which is ``precision auto``."""
    saved = dict(ckpt.get("train_config") or {})
    if "amp" in saved:
        saved.setdefault("precision", "auto" if saved.pop("amp") else "fp32")
    try:
        return TrainConfig(**saved)
    except TypeError as exc:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: damaged checkpoint, its "
                              f"train_config is invalid ({exc})") from None


@dataclass
class TrainResult:
    out: Path
    step: int
    status: str                        # "complete" or "interrupted"
    checkpoint: Path | None
    val: dict[str, float] = field(default_factory=dict)
    cells_per_s: float = 0.0
    data_wait: float = 0.0
    """Share of the loop's wall time spent waiting for batches."""
    signal: int = 0
    """The signal that interrupted the run (SIGINT 2, SIGTERM 15), 0 if none; the CLI
    exits 128 + it, as shells and schedulers expect of a stopped job."""
    notes: list[str] = field(default_factory=list)
    """One-line notes for the user (e.g. how ``--compile`` went)."""


@holding_run_lock


def train(
    store_path: str | Path, out: str | Path, *, model_config: ModelConfig | None = None,
    config: TrainConfig = TrainConfig(), data_config: DataConfig = DataConfig(),
    resume: bool = False, overwrite: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    pictures: Pictures | None = None,
) -> TrainResult:
    """Train (or resume) a model on a crop store into the run folder ``out``.

    ``pictures`` draws held-out reconstructions and random samples every ``image_every``
    steps (:func:`cellprof.report.plots.save_training_images`, as ``cellprof train`` does).

    Raises
    ------
    InputError
        ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    CheckpointError
        ``resume`` with a checkpoint that does not fit this store or model.
    TrainingDiverged
        The loss became non-finite or exploded (the last good checkpoint is kept).
    """
    d = setup(config.device)
    run = RunFolder(out, main=d.main)
    ckpt = run.resume_point(d.device) if resume else run.check_fresh(overwrite)
    p = _build(store_path, ckpt, model_config, config, data_config, run, d)
    model, data, step = p.model, p.data, p.step
    terms, weight_cols = _columns(p.model_config, p.gan)
    run.start({**p.described, "world_size": d.world, "device": str(d.device),
               "precision": p.compute.precision},
              ["step", "epoch", *terms, "total", *weight_cols, "val_pixel", "val_mse",
               "cells_per_s", "elapsed_s", "lr", "disc_lr"], step if ckpt is not None else None,
              p.changes)
    model.train()
    watch, status, val, rate = _Watch(config.explode_factor, d.device), "complete", {}, 0.0
    shown: dict[str, Any] = {}  # the latest logged losses, shown beside the progress
    t0 = time.perf_counter()
    batches = Loader(data, config.batch_size, range(step, config.steps), d.device, disc=p.gan)
    with StopRequest() as stop, batches:
        for step, x, x_real in batches:
            with p.compute.autocast():
                losses = compute_losses(p.net, p.compute.layout(x),
                                        p.compute.layout(x_real) if p.gan else None, step)
            watch(losses["total"], step)  # on the device: nothing waits for it here
            p.update(losses["total"], config.weight_decay)
            step += 1
            stop_now, due = any_rank(stop.requested, d), _due(step, config)
            if due or stop_now:  # the one read of the loss (a GPU sync), before any write
                saving = "checkpoint" in due or stop_now or step == config.steps
                watch.check(d, step - 1, losses, run.last, model.state_dict() if saving else {})
            elapsed = time.perf_counter() - t0
            rate = (step - batches.steps.start) * len(x) * d.world / max(elapsed, 1e-9)
            row: dict[str, Any] = {}
            if "val" in due:
                val = validate(model, data, d.device, config.batch_size)
                row.update(val)
            if "log" in due or row:
                row.update({k: float(losses[k].detach()) for k in terms if k in losses},
                           step=step, total=float(losses["total"].detach()), cells_per_s=rate,
                           lr=config.lr, disc_lr=config.disc_lr if p.gan else "",
                           epoch=step * config.batch_size * d.world / len(data.train_idx),
                           elapsed_s=elapsed, **dict(zip(weight_cols,
                                                         layer_weights(step, p.model_config))))
                run.log(row)
                shown = row
            if progress is not None and d.main:  # every step: batch logs print on a clock
                progress(step, config.steps, {**shown, **val, "cells_per_s": rate})
            if "images" in due:
                run.images(model, data, d.device, step, pictures)
            if "checkpoint" in due:
                run.checkpoint(False, p.state("running", step))
            if stop_now:
                status = "interrupted"
                break
    saved = run.checkpoint(status == "complete", p.state(status, step))
    check_replicas(model, d)
    wait = batches.wait_s / max(time.perf_counter() - t0, 1e-9)
    return TrainResult(run.out, step, status, saved, val, rate, wait,
                       stop.signum if status == "interrupted" else 0, p.notes)


@dataclass
class _Parts:
    """What :func:`train`'s loop works with, built (or restored) by :func:`_build`."""

    data: CropData
    model_config: ModelConfig
    model: VAEPlus
    net: nn.Module
    """``model``, wrapped in DDP when there are several processes."""
    compute: Compute
    opt_vae: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer | None
    step: int
    described: dict[str, Any]
    changes: dict[str, list[Any]]
    notes: list[str]
    conv_weights: list[Tensor] = field(init=False)
    """The kernels :meth:`update` decays, collected once."""

    def __post_init__(self) -> None:
        self.conv_weights = [m.weight for m in self.model.modules() if isinstance(m, nn.Conv2d)]

    @property
    def gan(self) -> bool:
        return self.opt_disc is not None

    def update(self, total: Tensor, weight_decay: float) -> None:
        """One optimisation step: both networks from one backward (each loss term reaches
        only its own network, :func:`cellprof.learn.losses.compute_losses`), then the reference's
        multiplicative decay of every conv kernel."""
        opts = [o for o in (self.opt_vae, self.opt_disc) if o is not None]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in opts:
            opt.step()
        with torch.no_grad():
            for w in self.conv_weights:
                w.mul_(1.0 - weight_decay)

    def state(self, status: str, step: int) -> dict[str, Any]:
        """A checkpoint: weights, optimisers and random states, so a resume continues
        exactly."""
        return {**self.described, "step": step, "status": status,
                "model": self.model.state_dict(), "opt_vae": self.opt_vae.state_dict(),
                "opt_disc": self.opt_disc.state_dict() if self.opt_disc is not None else None,
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": [torch.cuda.get_rng_state(self.compute.device)]
                if self.compute.device.type == "cuda" else []}


def _build(store_path: str | Path, ckpt: dict[str, Any] | None,
           model_config: ModelConfig | None, config: TrainConfig, data_config: DataConfig,
           run: RunFolder, d: Dist) -> _Parts:
    """Data, model and optimisers of a new run, or restored from ``ckpt`` (whose model and
    data settings win; what ``config`` changes is returned for the log)."""
    changes: dict[str, list[Any]] = {}
    if ckpt is not None:
        model_config, data_config, changes = _resumed_configs(ckpt, model_config, config,
                                                              data_config, run)
    data = CropData(store_path, data_config, seed=config.seed, rank=d.rank, world=d.world)
    model_config = ModelConfig.from_dict({**(model_config or ModelConfig()).to_dict(),
                                          "in_channels": len(data.channels),
                                          "image_size": data.info.crop_size})
    if ckpt is not None:
        check_fits(ckpt, data.channels, data.info.crop_size, store_path)
    torch.manual_seed(config.seed)
    compute = Compute.of(d.device, config.precision)
    model = compute.prepare(VAEPlus(model_config))
    gan = model.discriminator is not None
    opt_vae = torch.optim.Adam(model.vae_parameters(), lr=config.lr)
    opt_disc = torch.optim.SGD(model.discriminator.parameters(), lr=config.disc_lr,
                               momentum=config.disc_momentum) if gan else None
    step = _restore(ckpt, model, opt_vae, opt_disc, d.device) if ckpt is not None else 0
    for opt, lr in ((opt_vae, config.lr), (opt_disc, config.disc_lr)):
        for group in opt.param_groups if opt is not None else ():
            group["lr"] = lr  # a resumed optimiser's saved state carries the old rate
    if ckpt is None:
        torch.manual_seed(config.seed + 1000 * d.rank)  # latent noise differs per rank
    net = nn.parallel.DistributedDataParallel(
        model, device_ids=[d.device.index] if d.device.type == "cuda" else None) \
        if d.world > 1 else model
    notes = [_compile(model, compute, config.batch_size, data, gan)] if config.compile else []
    described = {"model_config": model_config.to_dict(), "train_config": asdict(config),
                 "data_config": asdict(data_config), "data": data.describe()}
    return _Parts(data, model_config, model, net, compute, opt_vae, opt_disc, step,
                  described, changes, notes)


def _compile(model: VAEPlus, compute: Compute, batch_size: int, data: CropData,
             gan: bool) -> str:
    """Compile the networks with a trial step at the loop's shapes (see try_compile)."""
    shape = (batch_size, len(data.channels), data.info.crop_size, data.info.crop_size)

    def trial() -> None:
        x = compute.layout(torch.rand(shape, device=compute.device))
        with compute.autocast():
            losses = compute_losses(model, x, x.flip(0) if gan else None, step=10**9)
        losses["total"].backward()

    networks = [n for n in (model.encoder, model.decoder, model.discriminator) if n is not None]
    return try_compile(networks, trial, model)


def _resumed_configs(ckpt: dict[str, Any], model_config: ModelConfig | None,
                     config: TrainConfig, data_config: DataConfig, run: RunFolder
                     ) -> tuple[ModelConfig, DataConfig, dict[str, list[Any]]]:
    """The saved run's model and data configs, and what ``config`` changes of its saved
    training settings (:func:`resume_changes`: steps, learning rates, intervals, device and
    precision may change; anything else is refused by name)."""
    saved = model_config_of(ckpt)
    if model_config is not None and model_config != saved:
        raise CheckpointError(f"{run.last}: was trained with another model ({saved.variant}, "
                              f"latent {saved.latent_dim}); resume without model options")
    # The saved data settings, but this machine's memory limit (it changes no result).
    data = DataConfig.from_dict({**ckpt["data_config"],
                                 "memory_limit_gb": data_config.memory_limit_gb})
    return saved, data, resume_changes(_saved_train_config(ckpt), config)


def _restore(ckpt: dict[str, Any], model: VAEPlus, opt_vae: torch.optim.Optimizer,
             opt_disc: torch.optim.Optimizer | None, device: torch.device) -> int:
    """Weights, optimiser and random states from ``ckpt``; returns its step."""
    model.load_state_dict(ckpt["model"])
    opt_vae.load_state_dict(ckpt["opt_vae"])
    if opt_disc is not None:
        opt_disc.load_state_dict(ckpt["opt_disc"])
    torch.set_rng_state(ckpt["rng_torch"].cpu())
    if device.type == "cuda" and ckpt.get("rng_cuda"):
        torch.cuda.set_rng_state(ckpt["rng_cuda"][0].cpu(), device)
    return int(ckpt["step"])


def _columns(config: ModelConfig, gan: bool) -> tuple[list[str], list[str]]:
    """losses.csv's loss terms and schedule-weight columns."""
    base = ["pixel", "kl"] + (["sigma2"] if config.likelihood == "calibrated" else [])
    if not gan:
        return base, []
    layers = range(config.matched_layers)
    scale = ["fm_scale"] if config.fm_balance == "adaptive" else []
    return ([*base, "fm", *(f"fm_{k}" for k in layers), *scale, "disc"],
            [f"w_{k}" for k in layers])


def _due(step: int, config: TrainConfig) -> set[str]:
    """What the loop does after ``step`` steps besides training: ``log``, ``val``,
    ``images`` (each at its interval and at the last step), ``checkpoint`` (at its interval
    before the last step, which writes the final one)."""
    last = step == config.steps
    due = {name for name, every in (("log", config.log_every), ("val", config.val_every),
                                    ("images", config.image_every))
           if step % every == 0 or last}
    return due | ({"checkpoint"} if step % config.checkpoint_every == 0 and not last else set())


NEVER = 2**62
"""The step :class:`_Watch` records for a failure that has not happened."""


class _Watch:
    """Watches the loss for becoming non-finite or exceeding ``factor`` x the median of its
    first 20 values, without making the host wait for the device.

    Each step only adds device operations: the first step at which each failure happened is
    kept in a tensor on the device. :meth:`check` reads it (a GPU sync; agreed across DDP
    ranks), which the loop does only at steps that log, validate, draw or save. A failure is
    sticky, so it is caught at the next such step, and always before a checkpoint is
    written; the weights meant for a checkpoint are checked too.
    """

    def __init__(self, factor: float, device: torch.device) -> None:
        self.factor = factor
        self.early: list[Tensor] = []
        self.limit: Tensor | float = math.inf
        self.first = torch.full((2,), NEVER, dtype=torch.int64, device=device)
        """First step the loss was non-finite, and first step it exploded."""

    def __call__(self, total: Tensor, step: int) -> None:
        value = total.detach().double()
        if len(self.early) < 20:
            self.early.append(value)
            if len(self.early) == 20:  # numpy's median: the mean of the middle two
                low, high = torch.stack(self.early).sort().values[9:11]
                self.limit = self.factor * ((low + high) / 2)
        now = torch.stack([~torch.isfinite(value), value > self.limit])
        self.first = torch.where(now, self.first.clamp_max(step), self.first)

    def check(self, d: Dist, step: int, losses: dict[str, Tensor], last: Path,
              weights: Mapping[str, Tensor]) -> None:
        """Raise :class:`TrainingDiverged` if, on any rank, the loss failed by ``step``, or
        any of ``weights`` (a state dict about to be saved; may be empty) is non-finite."""
        first = self.first
        floats = [w.detach() for w in weights.values() if w.is_floating_point()]
        if floats:
            finite = torch.stack([torch.isfinite(w).all() for w in floats]).all()
            first = torch.cat([first, torch.where(finite, NEVER, step).reshape(1)])
        at = agree(first, d)
        if min(at) < NEVER:
            raise self.diverged(at, step, losses, last)

    @staticmethod
    def diverged(at: list[int], step: int, losses: dict[str, Tensor],
                 last: Path) -> TrainingDiverged:
        what = ("loss became non-finite", "loss exploded", "weights became non-finite")
        k = at.index(min(at))
        good = f"last good checkpoint: {last}" if last.exists() else \
            "no checkpoint was written yet"
        return TrainingDiverged(
            f"{what[k]} at step {at[k]} (losses at step {step}: "
            + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            + f"); {good}. Try a lower --lr or --disc-lr.")


def scaled_schedule(steps: int, config: ModelConfig) -> ModelConfig:
    """The progressive schedule compressed into ``steps``: the reference turns layer k on
    at 2,500·(k+1) of 80,000 steps; a short run keeps the same proportions (plain VAE for
    the first 1/32, every layer at full weight from 5/32 on)."""
    start = max(1, math.ceil(steps * 2500 / 80_000))
    return ModelConfig.from_dict({**config.to_dict(), "ramp_start": start, "ramp_length": start})


def initial_checkpoint(path: str | Path, config: ModelConfig, channels: tuple[str, ...],
                       seed: int = 0) -> Path:
    """A checkpoint of a freshly initialised (untrained) model: a floor for benchmarks,
    since anything a trained encoder adds must beat random convolutional features."""
    torch.manual_seed(seed)
    model = VAEPlus(config).eval()
    return save_checkpoint(path, {
        "model_config": config.to_dict(), "train_config": {}, "data_config": asdict(DataConfig()),
        "data": {"channels": list(channels), "crop_size": config.image_size}, "step": 0,
        "status": "untrained", "model": model.state_dict()})


def held_out_error(checkpoint: str | Path, store_path: str | Path, *, seed: int = 0,
                   device: str = "auto", batch_size: int = 64) -> dict[str, float]:
    """Held-out reconstruction error (``val_pixel``, ``val_mse``, as a run's log has them) of
    any checkpoint on the fields a run of ``seed`` holds out of ``store_path``: the split is a
    function of the store and the seed. The demo measures its untrained model with it, so what
    training bought in reconstruction is a number beside the trained run's, not a claim."""
    dev = setup(device).device
    model, ckpt = load_encoder(checkpoint, dev)
    data = CropData(store_path, DataConfig.from_dict(ckpt["data_config"]), seed=seed)
    check_fits(ckpt, data.channels, data.info.crop_size, store_path)
    return validate(model, data, dev, batch_size)
