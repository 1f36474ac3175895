"""``cellprof embed``: every cell of a crop store through a trained encoder.

A cell's profile is its posterior mean (the paper's choice: deterministic, and the
log-variance can be kept too). Cells are read from the store in chunk-aligned blocks, so
memory is bounded by one batch whatever the store's size, and written in store order to
``<out>.partial``; an interrupted run continues after the last block written.

Speed: the next block is read (its chunks decompressed in parallel) while the current one
is encoded; raw crops go to the device and are scaled there; the encoder runs in inference
mode, under bf16 autocast with channels-last where ``--precision`` resolves to bf16
(:mod:`cellprof.learn.device`), with each batch norm folded into the convolution before it
(:func:`fold_batch_norm`). fp32 profiles equal the model's posterior means to float
rounding (about 1e-6 relative); bf16 ones to about 3 significant digits.

Test-time symmetry averaging (``--tta``, :func:`encode_views`): a cell lies on the slide in
no preferred orientation, but the encoder is not exactly invariant to turning or mirroring
it, so a profile can be averaged over the cell's symmetric views (:data:`VIEWS`). The V
views of a block go through the encoder as one batch of V x N crops (one gather turns and
mirrors them, :func:`~cellprof.learn.data.model_input`), split into forward passes of at
most ``--batch-size`` crops, so memory is what it is without; the time is V times.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import fuse_conv_bn_eval

from cellprof.errors import InputError
from cellprof.formats import chunks, store
from cellprof.formats.checkpoint import check_fits, load_checkpoint
from cellprof.formats.profiles import ProfileWriter
from cellprof.formats.safeio import fingerprint, refuse_inputs
from cellprof.formats.schema import PLATE
from cellprof.learn.config import TTAS, EmbedConfig
from cellprof.learn.data import (
    DataConfig,
    as_tensor,
    model_input,
    percentile_scale,
    plate_percentiles,
)
from cellprof.learn.device import PRECISIONS, Compute, setup, to_device
from cellprof.learn.model import VAEPlus, model_config_of


@dataclass(frozen=True)
class EmbedResult:
    out: Path
    n_cells: int
    n_features: int
    resumed_from: int
    cells_per_s: float


def fold_batch_norm(encoder: nn.Module) -> nn.Module:
    """A copy of an eval-mode network with each batch norm that follows a convolution
    folded into that convolution's weights and bias: the same function (to float
    rounding) with one pass less over memory; batch norm took a quarter of the encoder's
    time under bf16 on the CPU."""
    folded = copy.deepcopy(encoder).eval()
    for module in list(folded.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        layers, out = list(module), []
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
                layer = fuse_conv_bn_eval(layer, layers.pop(0))
            out.append(layer)
        for name in list(module._modules):
            del module._modules[name]
        for i, layer in enumerate(out):
            module.add_module(str(i), layer)
    return folded


def load_encoder(checkpoint: str | Path, device: torch.device) -> tuple[VAEPlus, dict]:
    """The trained model in eval mode (batch norm on running statistics) and its checkpoint."""
    ckpt = load_checkpoint(checkpoint, map_location=device)
    model = VAEPlus(model_config_of(ckpt))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True)),
    "dihedral": tuple((k, m) for k in range(4) for m in (False, True)),
}
"""Each ``--tta`` (:data:`~cellprof.learn.config.TTAS`) as its views: (quarter turns,
left-right mirror) as :func:`~cellprof.learn.data.model_input` applies them. Each set is a
group (the identity and the mirror; the 8 symmetries of the square), so a cell's view of a
view is again one of its views, and the average over them is the same for the cell turned
or mirrored by any of them: exactly, up to float rounding."""


def encode_views(encoder: nn.Module, raw: Tensor | np.ndarray, tta: str = "none", *,
                 scale: Tensor | np.ndarray | None = None, compute: Compute | None = None,
                 batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances ``(N, D)`` float32 of ``N`` raw crops, pooled over
    the views of ``tta`` (:data:`VIEWS`): the profiles ``embed --tta`` writes.

    ``encoder`` is a trained model's (``load_encoder(...)[0].encoder``, or
    :func:`fold_batch_norm` of it) in eval mode, on ``raw``'s device; ``raw`` the store's
    crops ``(N, C, H, W)`` (numpy, or a tensor from :func:`~cellprof.learn.data.as_tensor`)
    and ``scale`` their percentile scaling (:func:`~cellprof.learn.data.percentile_scale`;
    None: ``max``), as :func:`~cellprof.learn.data.model_input` takes them. ``compute``
    (default fp32 on ``raw``'s device) gives autocast and layout. The V x N crops (view by
    view) go through the encoder ``batch_size`` at a time (None: all at once).

    The mean is the mean of the V posterior means. The log-variance is that of the equal
    mixture of the V Gaussian posteriors, as one Gaussian with the same mean: the mean of
    their variances plus the variance of their means, so views that disagree widen it, and
    with one view it is the posterior's own.
    """
    if tta not in VIEWS:
        raise ValueError(f"tta must be one of {', '.join(VIEWS)}, got {tta!r}")
    raw = as_tensor(raw) if isinstance(raw, np.ndarray) else raw
    if len(raw) == 0:
        raise ValueError("no crops to encode")
    views = VIEWS[tta]
    compute = compute or Compute.of(raw.device, "fp32")
    scale = None if scale is None else to_device(scale, raw.device)
    total = len(views) * len(raw)
    step = total if batch_size is None else max(1, batch_size)
    mus, logvars = [], []
    with torch.inference_mode():
        for lo in range(0, total, step):
            x = _views_input(raw, scale, views, lo, min(lo + step, total))
            with compute.autocast():
                mu, logvar = encoder(compute.layout(x))
            mus.append(mu.float())
            logvars.append(logvar.float())
        mu, logvar = _pool_views(torch.cat(mus).view(len(views), len(raw), -1),
                                 torch.cat(logvars).view(len(views), len(raw), -1))
    return mu.cpu().numpy(), logvar.cpu().numpy()


def _views_input(raw: Tensor, scale: Tensor | None, views: tuple[tuple[int, bool], ...],
                 lo: int, hi: int) -> Tensor:
    """Model input of crops ``[lo, hi)`` of the V x N views, view by view: crop ``i`` is
    cell ``i % N`` in view ``i // N``, oriented by the one gather of ``model_input``."""
    if len(views) == 1:  # the cells as they are (no gather): `embed` as it always was
        return model_input(raw[lo:hi], None if scale is None else scale[:, lo:hi])
    at = torch.arange(lo, hi, device=raw.device)
    cells, view = at % len(raw), at // len(raw)
    turns = torch.tensor([k for k, _ in views], device=raw.device)[view]
    flips = torch.tensor([m for _, m in views], device=raw.device)[view]
    return model_input(raw[cells], None if scale is None else scale[:, cells], turns, flips)


def _pool_views(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """``(V, N, D)`` posterior means and log-variances -> ``(N, D)`` of the views' mixture:
    its mean, and the log of its variance (mean variance + variance of the means), summed
    in log space so tiny variances do not underflow to log 0."""
    if len(mu) == 1:
        return mu[0], logvar[0]
    mean = mu.mean(0)
    within = torch.logsumexp(logvar, 0) - math.log(len(mu))
    between = (mu - mean).square().mean(0)
    return mean, torch.logaddexp(within, between.log())


def embed(checkpoint: str | Path, crops: str | Path, out: str | Path, *,
          config: EmbedConfig = EmbedConfig(), overwrite: bool = False,
          progress: Callable[[str, int, int], None] | None = None) -> EmbedResult:
    """Write every cell's profile of ``crops`` to ``out`` (see :mod:`cellprof.formats.profiles`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    if config.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {config.precision!r}")
    if config.tta not in TTAS:
        raise InputError(f"--tta must be one of {', '.join(TTAS)}, got {config.tta!r}")
    device = setup(config.device).device
    compute = Compute.of(device, config.precision)
    model, ckpt = load_encoder(checkpoint, device)
    encoder = compute.prepare(fold_batch_norm(model.encoder))
    info = store.read_info(crops)
    check_fits(ckpt, info.channels, info.crop_size, crops)
    method = DataConfig.from_dict(ckpt["data_config"]).crop_scaling
    cells = store.read_cells(crops)
    plates = cells[PLATE].astype(str).to_numpy()
    # Percentile scaling uses the embedded store's own plates (they may be new plates).
    pct = plate_percentiles(crops, info.channels) if method == "percentile" else None
    d = model.config.latent_dim
    names = [f"VAE_{i:03d}" for i in range(d)]
    attrs = {"profile_kind": "learned",
             "checkpoint": str(Path(ckpt["path"]).resolve()), "checkpoint_step": ckpt["step"],
             "store": str(Path(crops).resolve()), "crop_scaling": method,
             "model_config": ckpt["model_config"], "channels": list(info.channels),
             "precision": compute.precision,
             # in the resume key too: a partial file of another --tta is started over
             "tta": config.tta, "n_views": len(VIEWS[config.tta])}
    refuse_inputs(out, [ckpt["path"], crops])
    writer = ProfileWriter(out, cells, names, attrs, config.logvar, resume=not overwrite,
                           inputs=fingerprint({"checkpoint": ckpt["path"], "crop store": crops}))
    start = writer.n_done
    n = info.n_cells
    blocks = store.blocks(start, n, config.batch_size)
    t0, done = time.perf_counter(), 0
    try:
        with store.open_store(crops) as f, ThreadPoolExecutor(1) as reader, \
                torch.inference_mode():
            ds = f[store.CROPS]
            ahead = reader.submit(_read_block, ds, *blocks[0]) if blocks else None
            for i, (lo, hi) in enumerate(blocks):
                raw = ahead.result()
                if i + 1 < len(blocks):  # read the next block while this one is encoded
                    ahead = reader.submit(_read_block, ds, *blocks[i + 1])
                scale = None if pct is None else percentile_scale(plates[lo:hi], pct)
                # a pass of at most --batch-size crops, and the whole block without --tta
                mu, logvar = encode_views(encoder, to_device(as_tensor(raw), device),
                                          config.tta, scale=scale, compute=compute,
                                          batch_size=max(config.batch_size, hi - lo))
                writer.write(lo, mu, logvar if config.logvar else None)
                done += hi - lo
                if progress:
                    progress("embed", hi, n)
        writer.finish()
    finally:
        writer.close()
    return EmbedResult(out, n, d, start, done / max(time.perf_counter() - t0, 1e-9))


def _read_block(ds: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
    """Raw crops [lo, hi), read by whole chunks decompressed in parallel."""
    return chunks.read_rows(ds, slice(lo, hi))
