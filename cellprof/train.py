"""``cellprof train``: the adversarial progressive VAE on a crop store.

One loop, read top to bottom: draw this step's batch (a pure function of seed and step,
:mod:`cellprof.data`), one forward and one backward (:func:`cellprof.losses.compute_losses`
wires each network to its own loss), step both optimisers, decay conv kernels, then log,
validate, draw and checkpoint at their intervals. The same command under
``torchrun --nproc-per-node N`` trains on N processes (DDP: NCCL on GPUs, gloo on CPU);
only rank 0 writes.

Run folder::

    config.json            every setting, seed, versions, store channels and normalisation
    losses.csv             step, each loss term, schedule weights, validation error, cells/s
    images/recon_*.png     held-out cells and their reconstructions
    images/samples_*.png   cells decoded from random latents
    checkpoints/last.pt    newest checkpoint (atomic); model.pt when training completes
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cellprof.checkpoint import RESUME, check_fits, load_checkpoint, save_checkpoint, versions
from cellprof.data import CropData, DataConfig
from cellprof.errors import CellprofError, CheckpointError, InputError
from cellprof.losses import compute_losses, layer_weights, pixel_loss
from cellprof.model import ModelConfig, VAEPlus
from cellprof.safeio import OutputLock, atomic_path, write_json


class TrainingDiverged(CellprofError):
    """The loss became non-finite or exploded; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings that may change between runs (unlike :class:`ModelConfig`)."""

    steps: int = 80_000
    """Optimisation steps (the reference's 80,000)."""
    batch_size: int = 104
    """Crops per step per process (the reference's 104); DDP multiplies it by the ranks."""
    lr: float = 1e-3
    """Adam, encoder and decoder. The reference's code gives Adam 0.01 and SGD 0.001, the
    two constants crossed; 1e-3 is Adam's usual rate and trains stably here."""
    disc_lr: float = 1e-2
    """SGD with momentum, discriminator (the reference's other constant)."""
    disc_momentum: float = 0.9
    weight_decay: float = 1e-4
    """Conv kernels are multiplied by (1 - weight_decay) after every step, as in the reference."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool = True
    """bf16 autocast on CUDA; never used on the CPU."""
    log_every: int = 25
    val_every: int = 500
    image_every: int = 1000
    checkpoint_every: int = 500
    explode_factor: float = 1e3
    """Stop when the loss exceeds this multiple of its early median."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "val_every", "image_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.batch_size < 2:
            raise InputError("--batch-size must be at least 2 (batch norm needs two crops)")
        for name in ("lr", "disc_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"--{name.replace('_', '-')} must be a positive number, "
                                 f"got {value}")


RESUME_MAY_CHANGE = ("steps", "lr", "disc_lr", "log_every", "val_every", "image_every",
                     "checkpoint_every", "explode_factor", "device", "amp")
"""Settings a resumed run takes from the command (recorded in config.json and, for the
learning rates, in every losses.csv row); the others must stay as saved, since the data
stream (seed, batch size) and the optimiser's meaning (decay, momentum) depend on them."""


def resume_changes(saved: TrainConfig, wanted: TrainConfig) -> dict[str, list[Any]]:
    """``{field: [saved, wanted]}`` for what a resume changes, or :class:`InputError`
    naming the options that may not change."""
    changed = {k: [getattr(saved, k), getattr(wanted, k)] for k in asdict(saved)
               if getattr(saved, k) != getattr(wanted, k)}
    fixed = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if fixed:
        raise InputError(
            "--resume cannot change " + ", ".join(
                f"--{k.replace('_', '-')} ({changed[k][0]} -> {changed[k][1]})" for k in fixed)
            + "; they fix the data stream and optimiser: drop them, or start a new run "
            "(another --out, or --overwrite)")
    return {k: v for k, v in changed.items() if k not in ("device", "amp")}


def saved_train_config(out: str | Path) -> TrainConfig:
    """The training settings of the run in ``out`` (its last checkpoint's)."""
    last = Path(out) / "checkpoints" / "last.pt"
    if not last.exists():
        raise CheckpointError(f"{out}: nothing to resume (no checkpoints/last.pt)")
    return TrainConfig(**load_checkpoint(last)["train_config"])


@dataclass
class TrainResult:
    out: Path
    step: int
    status: str                        # "complete" or "interrupted"
    checkpoint: Path | None
    val: dict[str, float] = field(default_factory=dict)
    cells_per_s: float = 0.0
    signal: int = 0
    """The signal that interrupted the run (SIGINT 2, SIGTERM 15), 0 if none; the CLI
    exits 128 + it, as shells and schedulers expect of a stopped job."""


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Rank, world size and device from torchrun's environment (one process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise InputError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        dev = torch.device(device if ":" in device else f"cuda:{local if world > 1 else 0}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return Dist(rank, world, dev)


class _Stop:
    """Ctrl-C / SIGTERM set a flag; the loop checkpoints and leaves at the next step."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():  # signals: main only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _agree(flags: list[bool], d: Dist) -> list[bool]:
    """Any rank's flag becomes every rank's (so all stop or all go on together)."""
    if d.world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _to_device(x: np.ndarray, d: Dist) -> torch.Tensor:
    t = torch.from_numpy(x)
    if d.device.type == "cuda":
        return t.pin_memory().to(d.device, non_blocking=True).to(
            memory_format=torch.channels_last)
    return t


def _validate(model: VAEPlus, data: CropData, d: Dist, batch_size: int) -> dict[str, float]:
    """Held-out reconstruction error with z = mu: ½·sum of squares per cell and per-pixel MSE."""
    model.eval()
    total, sq, n, numel = 0.0, 0.0, 0, 1
    with torch.no_grad():
        for x in data.val_batches(batch_size):
            xt = _to_device(x, d)
            recon = model.decode(model.encode(xt)[0]).float()
            total += float(pixel_loss(recon, xt.float())) * len(x)
            sq += float((recon - xt).pow(2).sum())
            n += len(x)
            numel = x[0].size
    model.train()
    return {"val_pixel": total / n, "val_mse": sq / (n * numel)} if n else {}


def _images(model: VAEPlus, data: CropData, d: Dist, out: Path, step: int) -> None:
    """Reconstructions of 8 held-out cells and 16 random samples, as PNG grids."""
    from cellprof.plots import save_grid

    idx = data.val_indices()[:8] if len(data.val_idx) else data.train_idx[:8]
    x = data.normalized(np.sort(idx))
    model.eval()
    with torch.no_grad():
        recon = model.decode(model.encode(_to_device(x, d))[0]).float().cpu().numpy()
        gen = torch.Generator(device=d.device).manual_seed(1234)
        samples = model.sample(16, generator=gen).float().cpu().numpy()
    model.train()
    save_grid(out / "images" / f"recon_{step:07d}.png", [x, recon], list(data.channels),
              row_labels=["held-out cells", "reconstruction"], title=f"step {step}")
    save_grid(out / "images" / f"samples_{step:07d}.png", [samples[:8], samples[8:]],
              list(data.channels), title=f"random samples, step {step}")


class _Log:
    """losses.csv, appended row by row; on resume rows past the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        rows = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _holding_run_lock(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Run ``fn(store, out, ...)`` holding the run folder's lock (rank 0 only, the one
    that writes), so a second training into the same ``--out`` is refused."""
    @functools.wraps(fn)
    def locked(store_path: str | Path, out: str | Path, **kwargs: Any) -> TrainResult:
        if int(os.environ.get("RANK", "0")) != 0:
            return fn(store_path, out, **kwargs)
        with OutputLock(out, folder=True):
            return fn(store_path, out, **kwargs)
    return locked


@_holding_run_lock
def train(
    store_path: str | Path, out: str | Path, *, model_config: ModelConfig | None = None,
    config: TrainConfig = TrainConfig(), data_config: DataConfig = DataConfig(),
    resume: bool = False, overwrite: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or resume) a model on a crop store into the run folder ``out``.

    Raises
    ------
    InputError
        ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    CheckpointError
        ``resume`` with a checkpoint that does not fit this store or model.
    TrainingDiverged
        The loss became non-finite or exploded (the last good checkpoint is kept).
    """
    out = Path(out)
    d = setup(config.device)
    last = out / "checkpoints" / "last.pt"
    if not resume and (last.exists() or (out / "model.pt").exists()) and not overwrite:
        raise InputError(f"{out}: holds a training run; pass --resume to continue it or "
                         "--overwrite to start over")
    ckpt = None
    if resume:
        if not last.exists():
            raise CheckpointError(f"{out}: nothing to resume (no checkpoints/last.pt)")
        ckpt = load_checkpoint(last, map_location=d.device)
        lacking = [k for k in RESUME if k not in ckpt]
        if lacking:
            raise CheckpointError(f"{last}: cannot resume, the checkpoint lacks "
                                  f"{', '.join(lacking)}")
        saved = ModelConfig.from_dict(ckpt["model_config"])
        if model_config is not None and model_config != saved:
            raise CheckpointError(f"{last}: was trained with another model ({saved.variant}, "
                                  f"latent {saved.latent_dim}); resume without model options")
        model_config = saved
        # The saved data settings, but this machine's memory limit (it changes no result).
        data_config = DataConfig(**{**ckpt["data_config"],
                                    "memory_limit_gb": data_config.memory_limit_gb})
        changes = resume_changes(TrainConfig(**ckpt["train_config"]), config)

    data = CropData(store_path, data_config, seed=config.seed, rank=d.rank, world=d.world)
    model_config = ModelConfig.from_dict({**(model_config or ModelConfig()).to_dict(),
                                          "in_channels": len(data.channels),
                                          "image_size": data.info.crop_size})
    if ckpt is not None:
        check_fits(ckpt, data.channels, data.info.crop_size, store_path)

    torch.manual_seed(config.seed)
    model = VAEPlus(model_config).to(d.device)
    if d.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt_vae = torch.optim.Adam(model.vae_parameters(), lr=config.lr)
    opt_disc = torch.optim.SGD(model.discriminator.parameters(), lr=config.disc_lr,
                               momentum=config.disc_momentum) \
        if model.discriminator is not None else None
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt_vae.load_state_dict(ckpt["opt_vae"])
        if opt_disc is not None:
            opt_disc.load_state_dict(ckpt["opt_disc"])
        step = int(ckpt["step"])
        for opt, lr in ((opt_vae, config.lr), (opt_disc, config.disc_lr)):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr  # the saved state carries the old rate
        torch.set_rng_state(ckpt["rng_torch"].cpu())
        if d.device.type == "cuda" and ckpt.get("rng_cuda"):
            torch.cuda.set_rng_state(ckpt["rng_cuda"][0].cpu(), d.device)
    else:
        torch.manual_seed(config.seed + 1000 * d.rank)  # latent noise differs per rank
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) \
        if d.device.type == "cuda" and config.amp else nullcontext()

    described = {"model_config": model_config.to_dict(), "train_config": asdict(config),
                 "data_config": asdict(data_config), "data": data.describe()}
    terms = ["pixel", "kl"] + ([] if model.discriminator is None else
                               ["fm"] + [f"fm_{k}" for k in range(model_config.matched_layers)]
                               + ["disc"])
    weights_cols = [f"w_{k}" for k in range(model_config.matched_layers)] \
        if model.discriminator is not None else []
    log = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:  # a fresh start: nothing of an overwritten run may be resumed or shown
            for old in (last, out / "model.pt", *(out / "images").glob("*.png")):
                old.unlink(missing_ok=True)
        resumes = _earlier_resumes(out) if ckpt is not None else []
        if ckpt is not None and changes:
            resumes.append({"step": step, "changed": changes})
        write_json(out / "config.json", {**described, "world_size": d.world,
                                          "device": str(d.device), "versions": versions(),
                                          "resumes": resumes})
        log = _Log(out / "losses.csv", ["step", "epoch", *terms, "total", *weights_cols,
                                        "val_pixel", "val_mse", "cells_per_s", "elapsed_s",
                                        "lr", "disc_lr"],
                   step if ckpt is not None else None)

    def checkpoint(path: Path, status: str) -> Path | None:
        if not d.main:
            return None
        return save_checkpoint(path, {
            **described, "step": step, "status": status, "model": model.state_dict(),
            "opt_vae": opt_vae.state_dict(),
            "opt_disc": opt_disc.state_dict() if opt_disc is not None else None,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": [torch.cuda.get_rng_state(d.device)] if d.device.type == "cuda" else [],
        })

    model.train()
    t0, cells_done, early, val = time.perf_counter(), 0, [], {}
    status = "complete"
    rate = 0.0
    shown: dict[str, Any] = {}  # the latest logged losses, shown beside the progress
    with _Stop() as stop:
        while step < config.steps:
            x = _to_device(data.train_batch(step, config.batch_size), d)
            x_real = _to_device(data.disc_batch(step, config.batch_size), d) \
                if model.discriminator is not None else None
            with amp:
                losses = compute_losses(net, x, x_real, step)
            total = losses["total"].float()
            value = float(total.detach())
            bad = not math.isfinite(value)
            if len(early) < 20 and not bad:
                early.append(value)
            exploded = len(early) >= 20 and value > config.explode_factor * float(np.median(early))
            bad, exploded, stop_now = _agree([bad, exploded, stop.requested], d)
            if bad or exploded:
                what = "became non-finite" if bad else "exploded"
                good = f"last good checkpoint: {last}" if last.exists() else \
                    "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"loss {what} at step {step} (" + ", ".join(
                        f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    + f"); {good}. Try a lower --lr or --disc-lr.")
            opt_vae.zero_grad(set_to_none=True)
            if opt_disc is not None:
                opt_disc.zero_grad(set_to_none=True)
            total.backward()
            opt_vae.step()
            if opt_disc is not None:
                opt_disc.step()
            with torch.no_grad():
                for w in conv_weights:
                    w.mul_(1.0 - config.weight_decay)
            step += 1
            cells_done += len(x) * d.world
            rate = cells_done / max(time.perf_counter() - t0, 1e-9)
            row: dict[str, Any] = {}
            if step % config.val_every == 0 or step == config.steps:
                val = _validate(model, data, d, config.batch_size)
                row.update(val)
            if step % config.log_every == 0 or row or step == config.steps:
                row.update({k: float(losses[k].detach()) for k in terms}, step=step, total=value,
                           lr=config.lr, disc_lr=config.disc_lr if opt_disc is not None else "",
                           epoch=step * config.batch_size * d.world / len(data.train_idx),
                           cells_per_s=rate, elapsed_s=time.perf_counter() - t0,
                           **dict(zip(weights_cols, layer_weights(step, model_config))))
                if log is not None:
                    log.write(row)
                shown = row
            if progress is not None and d.main:  # every step: batch logs print on a clock
                progress(step, config.steps, {**shown, **val, "cells_per_s": rate})
            if d.main and (step % config.image_every == 0 or step == config.steps):
                _images(model, data, d, out, step)
            if step % config.checkpoint_every == 0 and step < config.steps:
                checkpoint(last, "running")
            if stop_now:
                status = "interrupted"
                break
    saved_path = checkpoint(last, status)
    if status == "complete":
        saved_path = checkpoint(out / "model.pt", status)
    _check_replicas(model, d)
    return TrainResult(out, step, status, saved_path, val, rate,
                       stop.signum if status == "interrupted" else 0)


def _earlier_resumes(out: Path) -> list[dict[str, Any]]:
    """Settings changed by earlier resumes, as config.json records them."""
    try:
        return list(json.loads((out / "config.json").read_text()).get("resumes", []))
    except (OSError, ValueError):
        return []


def _check_replicas(model: nn.Module, d: Dist) -> None:
    """DDP keeps replicas identical; verify it rather than assume it."""
    if d.world == 1:
        return
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    got = [torch.zeros_like(s) for _ in range(d.world)]
    dist.all_gather(got, s)
    if any(not torch.equal(g, got[0]) for g in got):
        raise CellprofError("DDP replicas diverged: parameters differ between ranks")
    dist.barrier()


def scaled_schedule(steps: int, config: ModelConfig) -> ModelConfig:
    """The progressive schedule compressed into ``steps``: the reference turns layer k on
    at 2,500·(k+1) of 80,000 steps; a short run keeps the same proportions (plain VAE for
    the first 1/32, every layer at full weight from 5/32 on)."""
    start = max(1, math.ceil(steps * 2500 / 80_000))
    return ModelConfig.from_dict({**config.to_dict(), "ramp_start": start, "ramp_length": start})
