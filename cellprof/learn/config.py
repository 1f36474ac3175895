"""The settings of the learn stage, as frozen dataclasses that import no torch.

:class:`ModelConfig` is what a checkpoint must match to load or resume; :class:`TrainConfig`
what may change between runs; :class:`DataConfig` how crops become model input;
:class:`EmbedConfig` how cells become profiles. They live apart from the networks and the
training loop so that reading them (the CLI takes every option's default from their fields,
``cellprof --help`` lists them) costs no torch import. Checkpoints save them as plain
JSON-type dicts (``to_dict`` / ``asdict``), so ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cellprof.errors import CheckpointError, InputError

VARIANTS = ("vae", "vae-gan", "vae-gan-progressive")
PADDINGS = ("zeros", "replicate")
UPSAMPLINGS = ("nearest", "bilinear")
BALANCES = ("fixed", "adaptive")
LIKELIHOODS = ("unit", "calibrated")
LEGACY_DEFAULTS = {"decoder_padding": "zeros", "fm_balance": "fixed",
                   "decoder_upsample": "nearest", "fm_weight": 1.0}
"""Fields whose default changed, with the value checkpoints saved before the field existed
were trained with (those checkpoints lack the field)."""


def spatial_plan(image_size: int, kernel_size: int) -> tuple[tuple[int, int, int], int]:
    """Pre-pool sizes of the three conv blocks, and the size left after the last pool.

    Each block is a 'valid' ``kernel_size`` convolution (-(k-1) px) then a 2x2 max-pool (floor).
    The remaining size is the kernel of the layer that collapses the map to 1x1 (5 for 68 px,
    as in the reference; 4 for 64 px), and of the decoder's first layer that expands 1x1 back.

    >>> spatial_plan(68, 5)
    ((64, 28, 10), 5)
    """
    size, pre_pool = image_size, []
    for _ in range(3):
        size -= kernel_size - 1
        pre_pool.append(size)
        size //= 2
    return (pre_pool[0], pre_pool[1], pre_pool[2]), size


@dataclass(frozen=True)
class ModelConfig:
    """Everything that must match to load or resume a checkpoint; defaults are the paper's.

    Saved in checkpoints as :meth:`to_dict` (plain JSON types) so ``torch.load(weights_only=True)``
    reads them. Settings that may change between runs (learning rates, batch size, number of
    steps) belong in ``TrainConfig``, not here.
    """

    in_channels: int = 3
    """Channels per crop (BBBC021: DNA, beta-tubulin, F-actin)."""
    image_size: int = 68
    """Crop side in pixels; at least 36 for the default 5x5 kernels."""
    latent_dim: int = 256
    """Dimension of the Gaussian posterior; the per-cell profile is its mean."""
    enc_filters: int = 32
    """Filters of each encoder conv block."""
    kernel_size: int = 5
    """Side of every spatial convolution except the collapse/expand layers."""
    dec_filters: int = 32
    """Filters of each decoder conv layer (the reference uses 32, like the encoder)."""
    disc_channels: tuple[int, ...] = (32, 32, 32, 64, 1)
    """Output channels of the 5 discriminator layers: 3 conv+pool blocks, collapse conv, logit."""
    matched_layers: int = 4
    """Feature matching uses discriminator layers 0..matched_layers-1."""
    beta: float = 2.0
    """Weight of the KL term in the encoder loss (beta-VAE)."""
    likelihood: str = "unit"
    """The decoder's Gaussian: 'unit' (variance 1, the reference's: half the squared error)
    or 'calibrated' (variance = the batch's mean squared error, detached: the maximum-
    likelihood variance of Rybkin et al. 2021). On crops scaled to [0, 1] with a squared
    error of ~0.015 per pixel, variance 1 weighs reconstruction ~70x less than the data
    do, and beta x KL then wins: the latent keeps ever less about each cell."""
    variant: str = "vae-gan-progressive"
    """'vae' (no discriminator), 'vae-gan' (all matching terms from step 0) or the paper's ramp."""
    ramp_start: int = 2500
    """Layer k's matching weight starts ramping at step ramp_start*(k+1)."""
    ramp_length: int = 2500
    """Steps over which a layer's matching weight rises linearly from 0 to 1."""
    warmup: int | None = None
    """Plain-VAE steps before layer 0 starts ramping; layer k then starts at
    warmup + ramp_start*k. None: ramp_start, the paper's (layer k at ramp_start*(k+1))."""
    decoder_padding: str = "replicate"
    """How the decoder's "full" convolutions pad their input: 'replicate' (the border band is
    computed like the interior) or 'zeros' (the reference's, which draws a frame about 8 px in
    from the edge that the full model never unlearns; docs/method.md, "The frame")."""
    decoder_upsample: str = "bilinear"
    """How the decoder doubles its maps: 'bilinear' (no block edges) or 'nearest' (the
    reference's: each value becomes a 2x2 block, and the convolutions that follow see an
    edge at every block boundary, in the same place for every cell; feature matching
    sharpens those edges into stripes that every reconstruction carries, docs/method.md,
    "The frame")."""
    disc_padding: int = 0
    """Reflect-pad crops and reconstructions by this many px before the discriminator, so
    its valid convolutions see border pixels as often as interior ones (0: the reference)."""
    disc_jitter: int = 0
    """Before the discriminator, shift each crop and its reconstruction together by the same
    random offset of up to this many px in x and y (reflect-padded). The discriminator's valid
    convolutions and 2x2 pools see each pixel position differently, so the feature-matching
    gradient carries a fixed pattern of rows and columns that every reconstruction would
    learn; random shifts average it out (the translation of DiffAugment, Zhao et al. 2020).
    0: no shift (the reference)."""
    fm_weight: float = 0.25
    """Multiplies every feature-matching term. With the adaptive balance it is the ratio of
    feature matching's gradient to the pixel term's on the decoder's output layer once every
    layer is on. Chosen on held-out reconstructions of real BBBC021 cells, not on NSC: at 1
    the full model paints one textured template with a frame on every cell by 1,200 steps
    (frame ratio 2.1 +- 0.3 at 2,400 steps, 3 seeds); 0.25 was the one setting screened that
    draws none (1.13 +- 0.04; plain VAE 1.06) at the same NSC. It costs the 16-treatment
    synthetic demo screen's profiles (mAP 0.80 +- 0.10 against 0.90 +- 0.03 at 1, 3 seeds;
    docs/method.md, "The frame that came back"). Checkpoints saved before the field
    existed load with 1. With the fixed balance, 1 is the reference's scale."""
    fm_balance: str = "adaptive"
    """'adaptive': feature matching is scaled, each step, so that its gradient on the
    decoder's output layer is fm_weight times the pixel term's (VQGAN's adaptive weight,
    Esser et al. 2021); at the reference's scale it is 40-70x larger, which leaves the pixel
    term no say (docs/method.md, "The frame"). 'fixed': fm_weight x the ramp (the reference
    with fm_weight 1)."""

    def __post_init__(self) -> None:
        # Accept lists (JSON) and ints where a tuple / float is meant, so from_dict round-trips.
        if isinstance(self.disc_channels, (list, tuple)):
            object.__setattr__(self, "disc_channels", tuple(self.disc_channels))
        for name in ("beta", "fm_weight"):
            if isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool):
                object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("in_channels", "image_size", "latent_dim", "enc_filters", "kernel_size",
                     "dec_filters", "matched_layers", "ramp_start", "ramp_length",
                     "disc_padding", "disc_jitter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"ModelConfig.{name} must be an integer, got {value!r}")
        for name in ("in_channels", "latent_dim", "enc_filters", "kernel_size", "dec_filters"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"ModelConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if spatial_plan(self.image_size, self.kernel_size)[1] < 1:
            smallest = next(s for s in range(1, 10_000)
                            if spatial_plan(s, self.kernel_size)[1] >= 1)
            raise ValueError(
                f"ModelConfig.image_size={self.image_size} is too small: three {self.kernel_size}x"
                f"{self.kernel_size} conv + 2x2 pool blocks need image_size >= {smallest}")
        ch = self.disc_channels
        if (not isinstance(ch, tuple) or len(ch) != 5 or ch[-1] != 1
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ch)):
            raise ValueError("ModelConfig.disc_channels must be 5 positive integers ending in 1 "
                             f"(3 conv+pool blocks, a collapse conv, one logit), got {ch!r}")
        if not 1 <= self.matched_layers <= len(ch) - 1:
            raise ValueError(f"ModelConfig.matched_layers must be in 1..{len(ch) - 1} (the "
                             f"logit layer is not matched), got {self.matched_layers}")
        if not isinstance(self.beta, float) or not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"ModelConfig.beta must be a finite number >= 0, got {self.beta!r}")
        for name in ("ramp_start", "ramp_length", "disc_padding", "disc_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup is not None and (not isinstance(self.warmup, int)
                                        or isinstance(self.warmup, bool) or self.warmup < 0):
            raise ValueError(f"ModelConfig.warmup must be None or an integer >= 0, "
                             f"got {self.warmup!r}")
        for name, allowed in (("likelihood", LIKELIHOODS), ("fm_balance", BALANCES),
                              ("decoder_padding", PADDINGS), ("decoder_upsample", UPSAMPLINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("disc_jitter", "disc_padding"):
            if getattr(self, name) >= self.image_size:
                raise ValueError(f"ModelConfig.{name} must be below image_size "
                                 f"({self.image_size}), got {getattr(self, name)}")
        if not isinstance(self.fm_weight, float) or not math.isfinite(self.fm_weight) \
                or self.fm_weight < 0:
            raise ValueError(f"ModelConfig.fm_weight must be a finite number >= 0, "
                             f"got {self.fm_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), safe for ``torch.load(weights_only=True)``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; raises :class:`CheckpointError` naming the bad field.

        Missing fields take their defaults, so checkpoints survive a new field whose default
        keeps the old behaviour, except where the default changed: those take the value
        older checkpoints were trained with (:data:`LEGACY_DEFAULTS`). Unknown fields are
        refused (a newer or foreign checkpoint).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"model config has unknown field(s) {unknown}; "
                                  f"expected only {sorted(known)}")
        try:
            return cls(**{**LEGACY_DEFAULTS, **d})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"model config is invalid: {err}") from err


PRECISIONS = ("auto", "fp32", "bf16")
"""``auto`` (bf16 autocast where the hardware has it, else fp32), ``fp32`` or ``bf16``;
how they run is :mod:`cellprof.learn.device`'s."""


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
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    precision: str = "auto"
    """``auto``, ``fp32`` or ``bf16`` (see :mod:`cellprof.learn.device`): auto is bf16 autocast
    with channels-last on CUDA and on CPUs with native bf16, fp32 elsewhere. Losses and
    validation are float32 either way."""
    log_every: int = 25
    val_every: int = 500
    image_every: int = 1000
    checkpoint_every: int = 500
    explode_factor: float = 1e3
    """Stop when the loss exceeds this multiple of its early median."""
    compile: bool = False
    """``torch.compile`` the three networks (:func:`cellprof.learn.device.try_compile`): minutes
    of compiling, then faster steps on GPUs; falls back to eager with a note."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "val_every", "image_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if self.batch_size < 2:
            raise InputError("--batch-size must be at least 2 (batch norm needs two crops)")
        for name in ("lr", "disc_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"--{name.replace('_', '-')} must be a positive number, "
                                 f"got {value}")


CROP_SCALINGS = ("max", "percentile")


@dataclass(frozen=True)
class DataConfig:
    """How crops become training tensors."""

    crop_scaling: str = "max"
    """How raw intensities become model input. ``max``: each crop divided by its own
    per-channel maximum (the paper's); ``percentile``: per-plate per-channel
    (x - p1) / (p99 - p1) from field statistics. Not called normalisation: that word is
    ``cellprof match``'s, for profiles against control wells."""
    augment: bool = True
    """Random flips and 90-degree rotations (cells have no preferred orientation)."""
    val_fraction: float = 0.1
    """Share of *fields* held out for validation (cells of one field are correlated)."""
    val_max_cells: int = 1024
    """Cap on validation cells, evenly spaced over the held-out fields, to keep checks quick."""
    memory_limit_gb: float = 4.0
    """Load the whole store when its raw crops fit in this much memory; stream otherwise."""
    group_blocks: int = 32
    """Streaming: chunks (of 64 cells) shuffled together; larger = better mixed, more memory."""
    balance_by: tuple[str, ...] = ()
    """Draw each batch evenly across the groups of these metadata columns (e.g. compound and
    concentration) instead of uniformly over cells (:mod:`cellprof.learn.balance`); empty:
    uniformly over cells, the paper's way."""

    def __post_init__(self) -> None:
        if self.crop_scaling not in CROP_SCALINGS:
            raise InputError(f"--crop-scaling must be one of {', '.join(CROP_SCALINGS)}, "
                             f"got {self.crop_scaling!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if isinstance(self.balance_by, str):  # one column, or "A,B" as the CLI takes it
            object.__setattr__(self, "balance_by", tuple(
                c.strip() for c in self.balance_by.split(",") if c.strip()))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """A saved data config (checkpoint, config.json), including those saved before
        ``normalization`` was renamed ``crop_scaling``; unknown fields are refused."""
        d = dict(d)
        if "normalization" in d:  # the old name, in files written before the rename
            d.setdefault("crop_scaling", d.pop("normalization"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"data config has unknown field(s) {unknown}; "
                                  f"expected only {sorted(known)}")
        if "balance_by" in d:  # a JSON list in a saved config
            d["balance_by"] = tuple(d["balance_by"])
        return cls(**d)


TTAS = ("none", "flips", "dihedral")
"""Test-time symmetry averaging of ``embed``: the views of each cell whose posterior means
are averaged (``none`` 1, ``flips`` 2: the cell and its left-right mirror, ``dihedral`` 8:
every rotation and mirror of the square); :func:`cellprof.learn.embed.encode_views`."""


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of an embedding run."""

    batch_size: int = 1024
    """Cells read per block and crops per forward pass (memory grows with it: about 0.5 GB
    per 1,024 crops of 68 px at fp32). With ``tta`` each cell is several crops, so a block
    takes that many passes, and memory stays what it is without."""
    tta: str = "dihedral"
    """Test-time symmetry averaging (:data:`TTAS`): each cell's profile is the mean of the
    posterior means of its symmetric views. A cell has no preferred orientation on the
    slide, but a trained encoder is not exactly invariant; averaging makes the profile
    invariant to the views' symmetries, at V times the encoder's work (``flips`` 2x,
    ``dihedral`` 8x). ``dihedral``, the eight views training augments with, was chosen on
    the 12-MOA benchmark's compound half a (docs/benchmarks.md): it lifted NSC, NSCB and mAP
    there over ``none`` for both models, and over ``flips`` on balance."""
    logvar: bool = False
    """Also store each cell's posterior log-variance (its uncertainty)."""
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    precision: str = "auto"
    """``auto`` (bf16 where the hardware has it), ``fp32`` or ``bf16``; see
    :mod:`cellprof.learn.device`."""
