"""The VAE+ network of Lafarge et al. (MIDL 2019): encoder, decoder and discriminator.

Read top to bottom: :class:`ModelConfig` (everything a checkpoint must match), the spatial
plan shared by all three networks, the networks, and :class:`VAEPlus` which holds them. The
losses and the progressive schedule are in :mod:`cellprof.learn.losses`.

Shapes follow the reference code (TensorFlow 1, tueimage/cytoVAE) for 68 px crops::

    encoder        68 -conv-> 64 -pool-> 32 -conv-> 28 -pool-> 14 -conv-> 10 -pool-> 5 -conv-> 1
    decoder         1 -conv->  5 -up->  10 -conv-> 14 -up->   28 -conv-> 32 -up->  64 -conv-> 68
    discriminator  as the encoder, then 1x1 conv to one logit

The decoder is the encoder's mirror image: its upsampling targets are the encoder's pre-pool
sizes, and its "padded" 5x5 convolutions (pad 4, so +4 px) undo the encoder's "valid" ones
(-4 px). That is how :func:`spatial_plan` generalises the reference's hard-coded sizes to any
crop of at least 36 px (64 px: 64->60->30->26->13->9->4->1 and back).

Every convolution is followed by batch norm, as in the reference (so convolutions carry no
bias). Train-mode batch norm means a batch must hold at least 2 crops; for profiles and samples
call ``model.eval()`` so that running statistics are used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellprof.errors import CheckpointError

VARIANTS = ("vae", "vae-gan", "vae-gan-progressive")
PADDINGS = ("zeros", "replicate")
UPSAMPLINGS = ("nearest", "bilinear")
BALANCES = ("fixed", "adaptive")
LIKELIHOODS = ("unit", "calibrated")
LEGACY_DEFAULTS = {"decoder_padding": "zeros", "fm_balance": "fixed",
                   "decoder_upsample": "nearest", "fm_weight": 1.0}
"""Fields whose default changed, with the value checkpoints saved before the field existed
were trained with (those checkpoints lack the field)."""
LEAK = 0.01  # LeakyReLU slope of every layer in the reference code


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
            smallest = next(s for s in range(1, 10_000) if spatial_plan(s, self.kernel_size)[1] >= 1)
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


class Encoder(nn.Module):
    """Crop (N, C, H, W) in [0, 1] -> posterior mean and log-variance, each (N, latent_dim).

    Three blocks of valid conv -> batch norm -> 2x2 max-pool -> LeakyReLU(0.01), then a conv
    whose kernel equals the remaining map (5x5 for 68 px) to 2*latent_dim channels at 1x1. As in
    the reference, that last conv is batch-normalised too ("re-center embeddings") and has no
    non-linearity; in eval mode the running statistics make the profile of a cell independent
    of the batch it is embedded with.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        f, k = config.enc_filters, config.kernel_size
        _, remaining = spatial_plan(config.image_size, k)
        layers: list[nn.Module] = []
        for c_in in (config.in_channels, f, f):
            layers += [nn.Conv2d(c_in, f, k, bias=False), nn.BatchNorm2d(f),
                       nn.MaxPool2d(2), nn.LeakyReLU(LEAK)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(f, 2 * config.latent_dim, remaining, bias=False),
                                  nn.BatchNorm2d(2 * config.latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.trunk(x)).flatten(1).float().chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """Latent (N, latent_dim) -> reconstruction (N, C, H, W), the encoder's mirror image.

    Four padded convolutions (the first, with a kernel the size of the encoder's last map, acts
    as a dense layer 1x1 -> 5x5) with nearest-neighbour upsampling to the encoder's pre-pool
    sizes in between: 1->5->10->14->28->32->64->68 for 68 px. The reference's unused output
    heads at 5, 14 and 32 px are left out: they would get no gradient, which breaks DDP with
    ``find_unused_parameters=False``.

    Output: 1x1 conv -> batch norm -> LeakyReLU(0.01), the reference's choice. It suits
    per-crop max-normalised targets in [0, 1]: non-negative but mostly near 0 (background),
    with exactly 1 at each channel's brightest pixel, a value a sigmoid reaches only at an
    infinite logit; the Gaussian likelihood behind the squared-error loss also assumes an
    unbounded output. The output batch norm learns a per-channel scale and offset, which the
    three stains (sparse bright DNA, diffuse actin) need at very different values.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        f, k = config.dec_filters, config.kernel_size
        pre_pool, remaining = spatial_plan(config.image_size, k)
        layers: list[nn.Module] = []
        for i, (c_in, kernel) in enumerate(zip((config.latent_dim, f, f, f), (remaining, k, k, k))):
            # The first layer maps 1x1 to remaining x remaining: a dense layer, zero padding
            # is its definition. The others may replicate their border instead.
            mode = "zeros" if i == 0 else config.decoder_padding
            layers += [nn.Conv2d(c_in, f, kernel, padding=kernel - 1, padding_mode=mode,
                                 bias=False),
                       nn.BatchNorm2d(f), nn.LeakyReLU(LEAK)]
            if i < 3:
                layers.append(nn.Upsample(size=pre_pool[2 - i], mode=config.decoder_upsample))
        self.body = nn.Sequential(*layers)
        self.to_image = nn.Sequential(nn.Conv2d(f, config.in_channels, 1, bias=False),
                                      nn.BatchNorm2d(config.in_channels), nn.LeakyReLU(LEAK))

    @property
    def output_weight(self) -> nn.Parameter:
        """Kernel of the 1x1 convolution that makes the image (the last layer with weights
        before batch norm; where :func:`cellprof.learn.losses.adaptive_scale` compares terms)."""
        return self.to_image[0].weight

    def forward(self, z: Tensor) -> Tensor:
        return self.to_image(self.body(z[:, :, None, None])).float()


class Discriminator(nn.Module):
    """Tells real crops from reconstructions; its activations are the learned similarity.

    Five layers: three valid conv -> BN -> 2x2 max-pool -> LeakyReLU blocks, a collapse conv
    -> BN -> LeakyReLU to 64 channels at 1x1, and a 1x1 conv -> BN to one logit. Batch norm is
    on every layer, including the first and the logit ("re-center logits"), as in the
    reference. DCGAN leaves it off those because there a batch is all-real or all-fake and
    normalisation leaks which one; here every batch mixes real crops and reconstructions
    (see :func:`cellprof.learn.losses.compute_losses`), so that concern does not arise.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # It judges crops reflect-padded by disc_padding px on every side (see ModelConfig).
        _, remaining = spatial_plan(config.image_size + 2 * config.disc_padding,
                                    config.kernel_size)
        k, ch = config.kernel_size, config.disc_channels
        c_in = (config.in_channels,) + ch[:-1]
        kernels = (k, k, k, remaining, 1)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, s, bias=False) for i, o, s in zip(c_in, ch, kernels))
        self.norms = nn.ModuleList(nn.BatchNorm2d(o) for o in ch)
        self.matched_layers = config.matched_layers

    @staticmethod
    def _after_norm(layer: int, h: Tensor) -> Tensor:
        if layer < 3:
            h = F.max_pool2d(h, 2)
        return F.leaky_relu(h, LEAK) if layer < 4 else h

    def forward(self, x: Tensor, x_match: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Logits (N,) of ``x`` and the activations of layers 0..matched_layers-1.

        With ``x_match`` the features returned are those of ``x_match`` instead, computed with
        *detached* weights and normalised with ``x``'s batch statistics (running statistics in
        eval mode); they do not update the running statistics. So feature matching trains the
        encoder/decoder through ``x_match`` but never the discriminator, and crops and their
        reconstructions are compared under one normalisation, as in the reference where the
        statistics of [real; fake] normalise the originals too.
        """
        h, g, features = x, x_match, []
        for layer, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = conv(h)
            if g is not None:
                if self.training:
                    # Statistics in float32 (a no-op in fp32): under bf16 autocast the conv
                    # output is bf16, and the CPU's batch norm takes bf16 input only with
                    # float32 statistics and affine parameters.
                    stats = y.detach().float()
                    mean, var = stats.mean((0, 2, 3)), stats.var((0, 2, 3), unbiased=False)
                else:
                    mean, var = norm.running_mean, norm.running_var
                g = F.batch_norm(F.conv2d(g, conv.weight.detach()), mean, var,
                                 norm.weight.detach(), norm.bias.detach(), False, 0.0, norm.eps)
                g = self._after_norm(layer, g)
            h = self._after_norm(layer, norm(y))
            if layer < self.matched_layers:
                features.append((h if g is None else g).float())
        # Outputs leave in float32 (no-op without autocast) so the losses are float32 sums.
        return h.flatten().float(), features


def _init_weights(module: nn.Module) -> None:
    # The reference's "Xavier" normal: std = sqrt(2 / (k*k*c_in + c_out)). Batch norm makes the
    # forward pass scale-free, but the weight scale still sets Adam's effective step size.
    if isinstance(module, nn.Conv2d):
        fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (fan_in + module.out_channels)))


class VAEPlus(nn.Module):
    """Encoder + decoder (+ discriminator unless ``variant == 'vae'``).

    For 'vae' the discriminator is not built at all, so every parameter gets a gradient each
    step and DDP runs with ``find_unused_parameters=False``. :meth:`forward` touches only the
    encoder and decoder; :func:`cellprof.learn.losses.compute_losses` calls the discriminator.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.discriminator = Discriminator(config) if config.variant != "vae" else None
        self.apply(_init_weights)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mu, logvar), each (N, latent_dim); ``mu`` is the cell's profile."""
        return self.encoder(x)

    def reparameterize(self, mu: Tensor, logvar: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a posterior sample differentiable in mu, logvar."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Latent (N, latent_dim) -> image (N, C, H, W)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, mu, logvar) of crops (N, C, H, W) max-normalised to [0, 1].

        In train mode the decoder sees a posterior sample (the ELBO); in eval mode it sees the
        mean, so reconstructions shown to a user are deterministic.
        """
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` draws from the N(0, I) prior; call ``eval()`` first (decoder BN)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z)

    def vae_parameters(self) -> list[nn.Parameter]:
        """Encoder and decoder parameters: one Adam over these equals the reference's two."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable values in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def model_config_of(ckpt: Mapping[str, Any]) -> ModelConfig:
    """The model config a checkpoint (:func:`cellprof.formats.checkpoint.load_checkpoint`)
    was trained with; a :class:`CheckpointError` naming the file when it is invalid."""
    try:
        return ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError, KeyError, CheckpointError) as exc:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: damaged checkpoint, its "
                              f"model_config is invalid ({exc})") from None
