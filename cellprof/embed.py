"""``cellprof embed``: every cell of a crop store through a trained encoder.

A cell's profile is its posterior mean (the paper's choice: deterministic, and the
log-variance can be kept too). Cells are read from the store in chunk-aligned blocks, so
memory is bounded by one batch whatever the store's size, and written in store order to
``<out>.partial``; an interrupted run continues after the last block written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cellprof import store
from cellprof.checkpoint import check_fits, load_checkpoint, model_config_of
from cellprof.data import DataConfig, normalize, plate_percentiles
from cellprof.errors import InputError
from cellprof.model import VAEPlus
from cellprof.profiles import ProfileWriter, export  # noqa: F401 - export: embed's table
from cellprof.schema import PLATE
from cellprof.train import setup


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of an embedding run."""

    batch_size: int = 512
    """Cells per forward pass (memory grows with it; speed saturates early on the CPU)."""
    logvar: bool = False
    """Also store each cell's posterior log-variance (its uncertainty)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; always float32."""


@dataclass(frozen=True)
class EmbedResult:
    out: Path
    n_cells: int
    n_features: int
    resumed_from: int
    cells_per_s: float


def load_encoder(checkpoint: str | Path, device: torch.device) -> tuple[VAEPlus, dict]:
    """The trained model in eval mode (batch norm on running statistics) and its checkpoint."""
    ckpt = load_checkpoint(checkpoint, map_location=device)
    model = VAEPlus(model_config_of(ckpt))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def embed(checkpoint: str | Path, crops: str | Path, out: str | Path, *,
          config: EmbedConfig = EmbedConfig(), overwrite: bool = False,
          progress: Callable[[str, int, int], None] | None = None) -> EmbedResult:
    """Write every cell's profile of ``crops`` to ``out`` (see :mod:`cellprof.profiles`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if config.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {config.batch_size}")
    device = setup(config.device).device
    model, ckpt = load_encoder(checkpoint, device)
    info = store.read_info(crops)
    check_fits(ckpt, info.channels, info.crop_size, crops)
    method = DataConfig(**ckpt["data_config"]).normalization
    cells = store.read_cells(crops)
    plates = cells[PLATE].astype(str).to_numpy()
    # Percentile scaling uses the embedded store's own plates (they may be new plates).
    pct = plate_percentiles(crops, info.channels) if method == "percentile" else None
    d = model.config.latent_dim
    names = [f"VAE_{i:03d}" for i in range(d)]
    attrs = {"checkpoint": str(Path(ckpt["path"]).resolve()), "checkpoint_step": ckpt["step"],
             "store": str(Path(crops).resolve()), "normalization": method,
             "model_config": ckpt["model_config"], "channels": list(info.channels)}
    writer = ProfileWriter(out, cells, names, attrs, config.logvar)
    start = writer.n_done
    n = info.n_cells
    step = max(store.CHUNK_CELLS, config.batch_size // store.CHUNK_CELLS * store.CHUNK_CELLS)
    t0, done = time.perf_counter(), 0
    try:
        with store.open_store(crops) as f, torch.no_grad():
            ds = f[store.CROPS]
            for lo in range(start, n, step):
                hi = min(lo + step, n)
                x = normalize(ds[lo:hi], method, plates[lo:hi], pct)
                xt = torch.from_numpy(x).to(device)
                if device.type == "cuda":
                    xt = xt.to(memory_format=torch.channels_last)
                mu, logvar = model.encode(xt)
                writer.write(lo, mu.float().cpu().numpy(),
                             logvar.float().cpu().numpy() if config.logvar else None)
                done += hi - lo
                if progress:
                    progress("embed", hi, n)
        writer.finish()
    finally:
        writer.close()
    return EmbedResult(out, n, d, start, done / max(time.perf_counter() - t0, 1e-9))
