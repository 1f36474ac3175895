"""Losses of VAE+ and the progressive schedule (Lafarge et al., MIDL 2019).

All terms are sums over a crop's values averaged over the batch, as in the reference code, so
their sizes are comparable: the pixel term is a Gaussian log-likelihood (up to constants), and
each feature-matching term is rescaled to the size of a crop (see :func:`feature_distances`).

How the terms reach the parameters (the reference's three optimisers, one forward pass)::

    encoder       <- fm + pixel + beta*kl
    decoder       <- fm + pixel
    discriminator <- disc (BCE, real crops vs detached reconstructions)

:func:`compute_losses` wires the graph so that one ``losses["total"].backward()`` gives exactly
those gradients: KL does not depend on decoder parameters, so ``encoder`` differentiated
w.r.t. the decoder equals ``decoder``; ``disc`` sees reconstructions detached, so it reaches
no encoder/decoder parameter; and the discriminator computes the features to match with
detached weights, so ``fm`` reaches no discriminator parameter. A training step is therefore::

    losses = compute_losses(model, x, x_real, step)        # model in train mode
    opt_vae.zero_grad(); opt_disc.zero_grad()
    losses["total"].backward()
    opt_vae.step()       # Adam over model.vae_parameters()
    opt_disc.step()      # SGD + momentum over model.discriminator.parameters()

Both networks update simultaneously from the same forward pass, as in the reference ("VAE and
Discriminator are trained in parallel"). ``losses["encoder"].backward()`` followed by
``losses["disc"].backward()`` gives the same gradients (the two graphs share no node that
needs ``retain_graph``), but under DDP prefer the single backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellprof.learn.model import ModelConfig, VAEPlus

MIN_SIGMA2 = 1e-4
"""Floor of the calibrated variance (a 1% error per pixel), so a batch reconstructed
almost perfectly does not make the likelihood's scale explode."""


def pixel_loss(recon: Tensor, x: Tensor) -> Tensor:
    """1/2 * sum of squared error per crop, averaged over the batch (the reference's L2)."""
    return 0.5 * (recon - x).pow(2).flatten(1).sum(1).mean()


def kl_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, averaged over the batch."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(1).mean()


def feature_distances(feats_real: list[Tensor], feats_recon: list[Tensor],
                      input_numel: int) -> list[Tensor]:
    """Per layer: 1/2 * input_numel * mean squared activation difference, batch-averaged.

    The reference rescales each layer's mean to the number of values in a crop (C*H*W,
    13,872 for 3x68x68) rather than summing: a plain sum would weigh layer 0 (32x32x32
    activations) 512 times more than layer 3 (64), while this puts every layer on the pixel
    loss's scale, so a ramp weight of 1 means the same for each.
    """
    if len(feats_real) != len(feats_recon):
        raise ValueError(f"feats_real has {len(feats_real)} layers, feats_recon {len(feats_recon)}")
    return [0.5 * input_numel * (a - b).pow(2).flatten(1).mean(1).mean()
            for a, b in zip(feats_real, feats_recon)]


def feature_matching_loss(feats_real: list[Tensor], feats_recon: list[Tensor],
                          weights: list[float], input_numel: int) -> Tensor:
    """The adversarial similarity: :func:`feature_distances` weighted by ``weights``."""
    if len(weights) != len(feats_real):
        raise ValueError(f"got {len(weights)} weights for {len(feats_real)} feature layers")
    distances = feature_distances(feats_real, feats_recon, input_numel)
    return sum((w * d for w, d in zip(weights, distances)), distances[0].new_zeros(()))


def layer_weights(step: int, config: ModelConfig) -> list[float]:
    """Weight of each matched discriminator layer's term at training step ``step``.

    'vae-gan-progressive': layer k ramps linearly from 0 at step ramp_start*(k+1) to 1 at
    ramp_start*(k+1) + ramp_length (paper: a plain beta-VAE until 2,500, all four layers at
    full weight from 12,500). 'vae-gan': all ones. 'vae': no terms, an empty list.
    """
    if config.variant == "vae":
        return []
    if config.variant == "vae-gan":
        return [1.0] * config.matched_layers
    weights = []
    warmup = config.ramp_start if config.warmup is None else config.warmup
    for k in range(config.matched_layers):
        start = warmup + config.ramp_start * k
        if config.ramp_length == 0:
            weights.append(1.0 if step >= start else 0.0)
        else:
            weights.append(min(1.0, max(0.0, (step - start) / config.ramp_length)))
    return weights


def adaptive_scale(pixel: Tensor, fm: Tensor, last_weight: Tensor,
                   max_scale: float = 1e4) -> Tensor:
    """||d pixel / d W|| / ||d fm / d W|| on the decoder's output layer ``W``, detached.

    With ``fm`` the sum of every matched layer's term at full weight, multiplying the
    weighted feature-matching term by this gives it the pixel term's gradient size (where
    both act on the same weights) once the schedule has every layer on, and proportionally
    less during the ramp, whatever the relative scale of the two losses. Computed with
    ``autograd.grad``, which leaves ``.grad`` and DDP's gradient hooks untouched.
    """
    g_pix, = torch.autograd.grad(pixel, last_weight, retain_graph=True)
    g_fm, = torch.autograd.grad(fm, last_weight, retain_graph=True)
    return (g_pix.norm() / (g_fm.norm() + 1e-8)).clamp(max=max_scale).detach()


def jitter(x: Tensor, offsets: Tensor, max_shift: int) -> Tensor:
    """Crops (N, C, H, W) shifted by ``offsets`` (N, 2) in 0..2*max_shift, reflect-padded.

    Crop i is the H x W window at (offsets[i, 0], offsets[i, 1]) of ``x`` reflect-padded by
    ``max_shift``: offset ``max_shift`` is the crop itself. Differentiable in ``x`` (a gather),
    on any device.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Binary cross-entropy of real (target 1) and fake (target 0) logits, mean over both."""
    logits = torch.cat([logits_real, logits_fake])
    targets = torch.cat([torch.ones_like(logits_real), torch.zeros_like(logits_fake)])
    return F.binary_cross_entropy_with_logits(logits, targets)


def compute_losses(model: nn.Module, x: Tensor, x_real_for_disc: Tensor | None,
                   step: int) -> dict[str, Tensor]:
    """Every loss term of one training step, by name.

    Parameters
    ----------
    model
        A :class:`VAEPlus`, or a DDP wrapper of one (its ``forward`` is then what DDP sees).
    x
        Crops to reconstruct, (N, C, H, W) float, per-crop per-channel max-normalised to [0, 1].
    x_real_for_disc
        An independent batch of real crops, the discriminator's positives (as in the
        reference, which draws a second batch each step). Ignored, and may be None, for 'vae'.
    step
        Training step, for the progressive schedule.

    Returns
    -------
    ``pixel``, ``kl``, ``encoder`` (= fm + pixel + beta*kl), ``decoder`` (= fm + pixel) and
    ``total`` (the one tensor to call ``backward()`` on, see the module docstring); unless the
    variant is 'vae' also ``fm`` (weighted total), ``fm_0``.. (unweighted per layer, detached,
    for logging) and ``disc``.

    In train mode batch norm uses batch statistics and updates running statistics (encoder on
    ``x``, decoder on the sampled latents, discriminator on [x_real_for_disc; reconstructions]
    only). In eval mode (validation) everything uses running statistics and ``z = mu``.
    """
    core: VAEPlus = getattr(model, "module", model)
    config = core.config
    recon, mu, logvar = model(x)
    out = {"pixel": pixel_loss(recon, x), "kl": kl_loss(mu, logvar)}
    likelihood = out["pixel"]  # -log p(x | z) up to constants, variance 1
    if config.likelihood == "calibrated":
        out["sigma2"] = (recon.detach() - x).pow(2).mean().clamp_min(MIN_SIGMA2)
        likelihood = out["pixel"] / out["sigma2"]
    if core.discriminator is None:
        out["encoder"] = likelihood + config.beta * out["kl"]
        out["decoder"] = likelihood
        out["total"] = out["encoder"]
        return out
    if x_real_for_disc is None:
        raise ValueError(f"variant {config.variant!r} needs x_real_for_disc, a batch of real crops")
    n_real, n = len(x_real_for_disc), len(x)
    judged, matched = torch.cat([x_real_for_disc, recon.detach()]), torch.cat([x, recon])
    if config.disc_jitter:
        # One offset per crop: a crop and its reconstruction move together, so matching
        # compares them at the same position. Drawn from the global generator, like the
        # reparameterisation noise, so checkpoints resume it exactly.
        j = config.disc_jitter
        pair = torch.randint(0, 2 * j + 1, (n, 2), device=x.device)
        real = torch.randint(0, 2 * j + 1, (n_real, 2), device=x.device)
        judged = jitter(judged, torch.cat([real, pair]), j)
        matched = jitter(matched, torch.cat([pair, pair]), j)
    if config.disc_padding:
        pad = (config.disc_padding,) * 4
        judged, matched = F.pad(judged, pad, mode="reflect"), F.pad(matched, pad, mode="reflect")
    logits, feats = core.discriminator(judged, x_match=matched)
    out["disc"] = discriminator_loss(logits[:n_real], logits[n_real:])
    distances = feature_distances([f[:n] for f in feats], [f[n:] for f in feats], x[0].numel())
    weights = [config.fm_weight * w for w in layer_weights(step, config)]
    out["fm"] = sum((w * d for w, d in zip(weights, distances)), distances[0].new_zeros(()))
    if (config.fm_balance == "adaptive" and any(weights) and out["fm"].requires_grad
            and torch.is_grad_enabled()):
        # Balanced against every matched layer at full weight, so the ramp still ramps.
        full = sum(distances, distances[0].new_zeros(()))
        out["fm_scale"] = adaptive_scale(likelihood, full, core.decoder.output_weight)
        out["fm"] = out["fm"] * out["fm_scale"]
    for k, d in enumerate(distances):
        out[f"fm_{k}"] = d.detach()
    out["encoder"] = out["fm"] + likelihood + config.beta * out["kl"]
    out["decoder"] = out["fm"] + likelihood
    out["total"] = out["encoder"] + out["disc"]
    return out
