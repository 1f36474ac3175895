"""Per-plate illumination correction, as CellProfiler's CorrectIlluminationCalculate does it.

Widefield optics light the centre of a field more than its corners (vignetting), and the
pattern is the same in every field of a plate. Averaging all fields of a plate cancels
the cells, whose positions are random, and leaves that pattern; heavy smoothing removes
what is left of the cells. Dividing each field by the result makes a nucleus in a corner
as bright as the same nucleus in the centre, so crops do not learn their position in
the field. This mirrors CorrectIlluminationCalculate with "All" images, the "Regular"
intensity method, Gaussian smoothing and "robust minimum" rescaling; the two differences
(an edge-corrected Gaussian, no clamping at the robust minimum) are explained where they
are made.

Typical use, one plate at a time::

    acc = IlluminationAccumulator((C, H, W))
    for field in plate_fields:          # (C, H, W) uint16
        acc.add(field)
    illum = acc.result()                # (C, H, W) float32, 2nd percentile = 1
    corrected = correct(field, illum)   # (C, H, W) float32
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

ROBUST_PERCENTILE = 2.0
"""The function is divided by this percentile of its positive values (CellProfiler's 0.02)."""

ILLUM_FLOOR = 1e-6
"""Smallest divisor :func:`correct` uses. Functions from this module are ~1 at their
dimmest (1 means "no correction"), so anything below the floor is a hole (dead pixel,
empty channel), not light; 65535 / 1e-6 is still finite in float32."""

_SMALL_SIGMA = 4.0
# Smoothing runs on a block-averaged copy on which sigma is about this many pixels: the
# fit is then cheap (1280x1024 at the default sigma -> 41x52 nodes, ~15 ms), and a Gaussian
# of 4 nodes is sampled finely enough that linear interpolation between nodes stays within
# 0.5 % of the full-resolution fit (2 nodes: 0.9 %). Block averaging adds a box blur of std
# ~ block/sqrt(12) ~ sigma/14, negligible next to sigma. Below sigma = 8 px there is no
# downsampling and the fit costs ~0.4-1 s per 1280x1024 channel; such small sigmas leave
# cell texture in the function anyway.


def default_sigma(shape: tuple[int, ...]) -> float:
    """Default smoothing sigma (px): 1/10 of the smaller image side (~102 px on 1280x1024).

    The plate mean still carries cell texture (cells land at random, so a few dozen
    fields do not average them out), and vignetting changes only over the whole field,
    so sigma should be as large as the edges allow. With the edge-corrected smoother of
    this module the bias that limits a plain Gaussian is small: on synthetic plates like
    those of the tests (cells ~1/30 of the field across, 128x160 px) the RMS error of
    the function in the 16 px corners was, for sigma = side/20 | side/10 | side/8:

    ============  =====  =====  =====
    fields        20     10     8
    ============  =====  =====  =====
    none (exact)  0.3 %  1.7 %  2.8 %
    24            8.8 %  6.7 %  5.9 %
    96            4.3 %  3.4 %  3.7 %
    400           2.1 %  2.2 %  3.1 %
    ============  =====  =====  =====

    (a plain normalised Gaussian: 4.7 %, 12.5 %, 16 % with no noise at all). side/10 is
    the best compromise from small to large plates. CellProfiler's automatic size (FWHM
    min(30, side/40), sigma <= 13 px) assumes a median or polynomial smoother.
    """
    return min(shape[-2:]) / 10.0


def _as_stack(image: np.ndarray, name: str) -> np.ndarray:
    """Return ``image`` as a (C, H, W) view; 2-D images are one channel."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[np.newaxis]
    if image.ndim != 3:
        raise ValueError(f"{name} must have shape (C, H, W) or (H, W); got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise ValueError(f"{name} must be real numeric; got dtype {image.dtype}")
    return image


def _blocks(n: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel count and centre coordinate (px) of each block of ``block`` pixels along one axis."""
    starts = np.arange(0, n, block)
    ends = np.minimum(starts + block, n)
    return (ends - starts).astype(np.float64), (starts + ends - 1) / 2.0


def _interpolation_matrix(n: int, nodes: np.ndarray) -> np.ndarray:
    """(n, len(nodes)) weights of piecewise-linear interpolation at pixels 0..n-1.

    Outside the outermost nodes the end segments are extended (linear extrapolation), so
    the half block at each edge keeps the slope instead of going flat.
    """
    matrix = np.zeros((n, len(nodes)))
    if len(nodes) == 1:
        matrix[:, 0] = 1.0
        return matrix
    x = np.arange(n, dtype=np.float64)
    left = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    frac = (x - nodes[left]) / (nodes[left + 1] - nodes[left])
    matrix[np.arange(n), left] = 1.0 - frac
    matrix[np.arange(n), left + 1] = frac
    return matrix


def _smooth(plane: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth one (H, W) float64 plane, without the usual darkening at the edges.

    A plain Gaussian blur averages each edge pixel with the brighter interior (or with
    invented padding), so the function comes out too bright in the corners, exactly
    where vignetting is strongest, and the corrected corners too dark (12 % RMS error in
    the corners at the default sigma on a noise-free synthetic vignetting, 1.7 % here).
    Instead each pixel gets a Gaussian-weighted *local linear* fit (value and slope in x
    and y); in the interior this equals the plain blur, at the edges it follows the
    slope. The fit runs on block means with their pixel counts as weights, then is
    linearly interpolated back to full size. The fit is kept above half the dimmest block
    mean, so extrapolating a steep edge (a black frame, a dead column) never invents a
    value at or below zero; on smooth data this bound is never reached.
    """
    h, w = plane.shape
    block = max(1, int(sigma // _SMALL_SIGMA))
    row_n, row_c = _blocks(h, block)
    col_n, col_c = _blocks(w, block)
    nh, nw = len(row_n), len(col_n)
    padded = np.zeros((nh * block, nw * block))
    padded[:h, :w] = plane
    weight = np.outer(row_n, col_n)
    values = padded.reshape(nh, block, nw, block).sum(axis=(1, 3)) / weight

    def blur(a: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(a, sigma / block, mode="constant", cval=0.0)

    # Weighted moments centred on each node give the normal equations
    # [[a, b, c], [b, d, e], [c, e, f]] @ (value, x slope, y slope) = (r0, r1, r2).
    y, x = np.meshgrid(row_c, col_c, indexing="ij")
    s0, sx, sy = blur(weight), blur(weight * x), blur(weight * y)
    sxx, syy, sxy = blur(weight * x * x), blur(weight * y * y), blur(weight * x * y)
    t0, tx, ty = blur(weight * values), blur(weight * x * values), blur(weight * y * values)
    # The ridge (1e-6 px^2, far below any real spread) keeps one-pixel-high images solvable.
    a, b, c = s0, sx - x * s0, sy - y * s0
    d = sxx - 2 * x * sx + x * x * s0 + 1e-6 * s0
    f = syy - 2 * y * sy + y * y * s0 + 1e-6 * s0
    e = sxy - x * sy - y * sx + x * y * s0
    r0, r1, r2 = t0, tx - x * t0, ty - y * t0
    # Only the value is needed: Cramer's rule, elementwise (a batched solve is ~5x slower).
    minor = d * f - e * e
    fit = (r0 * minor - b * (r1 * f - e * r2) + c * (r1 * e - d * r2)) / (
        a * minor - b * (b * f - c * e) + c * (b * e - c * d)
    )
    positive = values[values > 0]
    if positive.size:
        fit = np.maximum(fit, 0.5 * positive.min())
    if block == 1:
        return fit
    return _interpolation_matrix(h, row_c) @ fit @ _interpolation_matrix(w, col_c).T


def _rescale(plane: np.ndarray) -> np.ndarray:
    """Divide by the robust minimum (2nd percentile of the positive values), as CellProfiler.

    Why the robust minimum and not the mean: the function is then ~1 in the dimmest
    region and > 1 elsewhere, so :func:`correct` dims the bright centre down to the
    corners rather than lifting the corners above anything the camera recorded; the
    corrected field stays in the raw intensity range (it fits back into uint16) and the
    dimmest region keeps its raw intensities. A percentile, not the minimum, so a few
    dead pixels do not set the scale.

    Unlike CellProfiler, values below the robust minimum are not clamped to it: clamping
    leaves the darkest 2 % of the field, one corner, under-corrected (by up to 30 % at
    the corner pixel in the strong vignetting of the tests). Not clamping corrects them
    like every other pixel; they end up brighter than raw (by that same up to 1.3x),
    which float32 output absorbs.

    A channel with no positive value (empty, all zero) cannot be rescaled and gets 1
    everywhere: no correction rather than a division by zero.
    """
    positive = plane[plane > 0]
    if positive.size == 0:
        return np.ones_like(plane)
    return plane / np.percentile(positive, ROBUST_PERCENTILE)


def illumination_function(
    mean_image: np.ndarray, smoothing_sigma: float | None = None
) -> np.ndarray:
    """Turn the mean of a plate's fields into an illumination function.

    Parameters
    ----------
    mean_image : (C, H, W) or (H, W) ndarray
        Per-channel mean of every field of one plate (see
        :class:`IlluminationAccumulator`), any real dtype.
    smoothing_sigma : float, optional
        Gaussian sigma in px; ``None`` uses :func:`default_sigma` (1/10 of the smaller
        side), ``0`` skips smoothing. Sigmas below 8 px are fitted at full resolution,
        which is ~50x slower than the default.

    Returns
    -------
    (C, H, W) or (H, W) ndarray of float32
        Same shape as ``mean_image``; per channel, the smoothed mean divided by its
        2nd percentile, so 98 % of the values are >= 1.

    Raises
    ------
    ValueError
        If ``mean_image`` is not 2-D or 3-D, not real-valued or not finite, or
        ``smoothing_sigma`` is negative.

    Examples
    --------
    >>> rows, cols = np.mgrid[:100, :120]
    >>> vignette = 1.0 - 0.4 * ((rows - 50) ** 2 + (cols - 60) ** 2) / 60**2
    >>> illum = illumination_function(1000 * vignette)
    >>> round(float(np.percentile(illum, 2)), 3)
    1.0
    >>> round(float(illum[50, 60] / illum[0, 0]), 1)  # centre / corner; true ratio 3.1
    2.9
    """
    stack = _as_stack(mean_image, "mean_image")
    if smoothing_sigma is None:
        smoothing_sigma = default_sigma(stack.shape)
    if smoothing_sigma < 0:
        raise ValueError(f"smoothing_sigma must be >= 0 px; got {smoothing_sigma}")
    stack = stack.astype(np.float64, copy=False)
    if not np.isfinite(stack).all():
        raise ValueError("mean_image must be finite; it contains NaN or inf")
    out = np.empty(stack.shape, np.float32)
    for c, plane in enumerate(stack):
        smooth = _smooth(plane, smoothing_sigma) if smoothing_sigma > 0 else plane
        out[c] = _rescale(smooth)
    return out.reshape(np.shape(mean_image))


def correct(field: np.ndarray, illum: np.ndarray) -> np.ndarray:
    """Divide a field by its plate's illumination function.

    Parameters
    ----------
    field : (C, H, W) or (H, W) ndarray
        Raw field, any real dtype.
    illum : ndarray
        Illumination function of the same shape, e.g. from
        :meth:`IlluminationAccumulator.result`.

    Returns
    -------
    ndarray of float32
        ``field / illum``. Values of ``illum`` below :data:`ILLUM_FLOOR` (zeros,
        negatives) are raised to it, so the result never holds inf or NaN for finite
        input.

    Raises
    ------
    ValueError
        If the shapes differ or ``illum`` is not finite.
    """
    field = np.asarray(field)
    illum = np.asarray(illum)
    if field.shape != illum.shape:
        raise ValueError(
            f"illum must have the field's shape {field.shape}; got shape {illum.shape}"
        )
    _as_stack(field, "field")
    _as_stack(illum, "illum")
    if not np.isfinite(illum).all():
        raise ValueError("illum must be finite; it contains NaN or inf")
    divisor = np.maximum(illum.astype(np.float32, copy=False), np.float32(ILLUM_FLOOR))
    return field.astype(np.float32) / divisor


class IlluminationAccumulator:
    """Running per-channel mean of every field of one plate; memory = one (C,H,W) float64 array.

    Fields are added one at a time as they are read, so a plate of thousands of fields
    never has to be in memory. The sum is kept in float64: 10,000 uint16 fields sum to
    at most 6.6e8 per pixel, exact in float64.

    Parameters
    ----------
    shape : tuple of int
        ``(C, H, W)`` of every field of the plate.

    Examples
    --------
    >>> acc = IlluminationAccumulator((1, 4, 4))
    >>> acc.add(np.full((1, 4, 4), 10, np.uint16))
    >>> acc.add(np.full((1, 4, 4), 30, np.uint16))
    >>> acc.count, float(acc.mean()[0, 0, 0])
    (2, 20.0)
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes; got {shape}")
        self.shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self._sum = np.zeros(shape, np.float64)
        self._count = 0

    def add(self, field: np.ndarray) -> None:
        """Add one (C, H, W) field of any real dtype; a wrong shape raises ValueError."""
        field = np.asarray(field)
        if field.shape != self.shape:
            raise ValueError(
                f"field must have the plate's shape (C, H, W) = {self.shape}; "
                f"got shape {field.shape}"
            )
        if not np.issubdtype(field.dtype, np.number) or np.iscomplexobj(field):
            raise ValueError(f"field must be real numeric; got dtype {field.dtype}")
        if field.dtype.kind == "f" and not np.isfinite(field).all():
            # One NaN field would poison the whole plate's function.
            raise ValueError("field must be finite; it contains NaN or inf")
        np.add(self._sum, field, out=self._sum)
        self._count += 1

    @property
    def count(self) -> int:
        """Number of fields added so far."""
        return self._count

    def mean(self) -> np.ndarray:
        """Unsmoothed per-channel mean of the fields added, (C, H, W) float64."""
        if self._count == 0:
            raise ValueError("no fields added: the mean needs at least 1 field of the plate")
        return self._sum / self._count

    def result(self, smoothing_sigma: float | None = None) -> np.ndarray:
        """Illumination function of the plate, (C, H, W) float32, 2nd percentile 1.

        See :func:`illumination_function` for ``smoothing_sigma``. Raises ValueError if
        no field was added.
        """
        if self._count == 0:
            raise ValueError(
                "no fields added: estimating illumination needs at least 1 field of the plate"
            )
        return illumination_function(self.mean(), smoothing_sigma)
