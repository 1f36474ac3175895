"""Diagnostics of a trained model's images: does it draw something the cells do not have?

The one measured here is the *frame*: a model whose decoder computes border pixels
differently from the interior (zero-padded convolutions) and whose loss corrects that band
weakly can draw a bright or dark rectangle a few pixels in from the crop edge on every
cell. It does not show in a single cell's pixel error, but it does in the mean image of
many cells: cells are centred, so the mean of real crops falls off smoothly from the
centre, and any ring that stands out from its neighbours is the model's, not the cells'.

:func:`ring_means` averages a stack of images over each 1-px square ring at distance
``r`` from the edge; :func:`ring_standout` is how far each ring's mean sits from the
average of its two neighbour rings (a discrete second difference), relative to the mean
intensity of the rings considered, so stores of different brightness compare.
:func:`frame_report` puts reconstructions beside their originals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RINGS = (2, 14)
"""Rings (px from the edge, inclusive) the frame score looks at: the band where the
decoder's zero padding and the discriminator's valid convolutions act (issue 8)."""


def ring_index(size: int) -> np.ndarray:
    """(size, size) array giving each pixel's distance in pixels from the nearest edge.

    >>> ring_index(5).tolist()[2]
    [0, 1, 2, 1, 0]
    """
    i = np.arange(size)
    d = np.minimum(i, size - 1 - i)
    return np.minimum(d[:, None], d[None, :])


def ring_means(images: np.ndarray) -> np.ndarray:
    """Mean over images and pixels of each 1-px ring: ``(N, C, H, W)`` -> ``(C, H // 2 + 1)``
    (``H == W``); ring ``r`` holds the pixels ``r`` px from the nearest edge."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, C, S, S), got shape {images.shape}")
    mean = images.mean(axis=0)
    idx = ring_index(images.shape[2]).ravel()
    counts = np.bincount(idx)
    return np.stack([np.bincount(idx, weights=m.ravel()) / counts for m in mean])


def ring_standout(images: np.ndarray, rings: tuple[int, int] = RINGS) -> np.ndarray:
    """Per channel and ring in ``rings``: |ring mean - mean of its two neighbours|, divided
    by the channel's mean over those rings. ``(C, rings[1] - rings[0] + 1)``."""
    m = ring_means(images)
    lo, hi = rings
    if lo < 1 or hi + 1 >= m.shape[1]:
        raise ValueError(f"rings {rings} need 1 <= first and last + 1 < {m.shape[1]}")
    r = np.arange(lo, hi + 1)
    second = np.abs(m[:, r] - 0.5 * (m[:, r - 1] + m[:, r + 1]))
    scale = np.maximum(m[:, lo - 1:hi + 2].mean(axis=1, keepdims=True), 1e-12)
    return second / scale


@dataclass(frozen=True)
class FrameReport:
    """Mean ring standout of reconstructions and of their originals (see module docstring)."""

    recon: float
    """Mean over channels and rings of :func:`ring_standout` of the reconstructions."""
    original: float
    """The same for the crops they reconstruct: what the cells themselves do."""
    worst_ring: int
    """Ring (px from the edge) where the reconstructions stand out most, summed over channels."""

    @property
    def ratio(self) -> float:
        """recon / original: about 1 when the model draws no frame."""
        return self.recon / max(self.original, 1e-12)


def frame_report(recon: np.ndarray, original: np.ndarray,
                 rings: tuple[int, int] = RINGS) -> FrameReport:
    """Compare the ring profile of reconstructions with their originals'."""
    s_rec = ring_standout(recon, rings)
    s_org = ring_standout(original, rings)
    worst = int(np.argmax(s_rec.sum(axis=0))) + rings[0]
    return FrameReport(float(s_rec.mean()), float(s_org.mean()), worst)
