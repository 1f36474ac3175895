"""The VAE+ network of Lafarge et al. (MIDL 2019): encoder, decoder and discriminator.

Read top to bottom: the networks, and :class:`VAEPlus` which holds them. Their settings,
:class:`ModelConfig` (everything a checkpoint must match) and the spatial plan shared by all
three networks, are in :mod:`cellprof.learn.config`, which imports no torch. The losses and
the progressive schedule are in :mod:`cellprof.learn.losses`.

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
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellprof.errors import CheckpointError
from cellprof.learn.config import (  # noqa: F401 (ModelConfig and its constants, moved)
    BALANCES,
    LEGACY_DEFAULTS,
    LIKELIHOODS,
    PADDINGS,
    UPSAMPLINGS,
    VARIANTS,
    ModelConfig,
    spatial_plan,
)

LEAK = 0.01  # LeakyReLU slope of every layer in the reference code


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
        self.convs = nn.ModuleList(nn.Conv2d(i, o, s, bias=False)
                                   for i, o, s in zip(c_in, ch, kernels))
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
