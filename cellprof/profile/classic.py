"""Hand-crafted per-cell features from crops: the classical baseline a learned profile must beat.

CellProfiler measures each segmented object; here each crop stands for one cell, centred
on its nucleus (as the crops of Singh et al. were cut), and four families are measured:

- **AreaShape** of the nucleus: the lightly smoothed first (DNA) channel of the crop cut
  at the threshold ``crop --segment`` found the field's nuclei at when known (``measure``
  passes the store's), else at the crop's own Otsu threshold, holes filled, and the
  connected component at the centre (or the
  one nearest to it within :data:`CENTRE_RADIUS` px; on log intensities when a bright
  neighbour hides a dim central nucleus), cut apart from touching nuclei by the watershed
  ``crop --segment`` uses (:func:`cellprof.prepare.segment.split_nuclei`), keeping the
  piece nearest the centre: the nucleus the crop was cut for. Area, perimeter, eccentricity,
  solidity, axis lengths, form factor and extent, with scikit-image's ``regionprops``
  definitions (pixels; 4-connected weighted perimeter).
- **Intensity** per channel, inside that nucleus (integrated, mean, std, min, max,
  quartiles, MAD) and over the whole crop (mean, std, 5th…99th percentiles; the crop is
  the cell plus its neighbourhood, where the cytoskeletal stains live). Input units.
- **Texture** per channel: Haralick-style statistics of the grey-level co-occurrence
  matrix of the whole crop, quantised to :data:`TEXTURE_LEVELS` levels after dividing by
  its own maximum (the model's input scaling), at :data:`TEXTURE_SCALE` px (CellProfiler's
  default), symmetric, averaged over 0°, 45°, 90° and 135°. Values equal
  ``skimage.feature.graycoprops`` on ``graycomatrix(..., symmetric=True, normed=True)``.
- **Correlation** of each pair of channels across the crop's pixels (colocalisation).

Everything but the convex hull (one small loop) is computed on a batch of crops at once,
so BBBC021's 5,873 crops take 5–15 s on two busy cores. Undefined values (an empty nucleus mask, a
constant channel) are 0, never NaN, except GLCM correlation, which is 1 for a constant
crop as in scikit-image.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from cellprof.prepare.segment import SegmentConfig, split_nuclei

TEXTURE_LEVELS = 16
"""Grey levels of the quantised crop (16² co-occurrence bins suit a 68×68 crop's ~4,600
pixel pairs; CellProfiler's 256 levels would leave most bins empty)."""
TEXTURE_SCALE = 3
"""Pixel distance of the co-occurring pairs (CellProfiler's default texture scale)."""
TEXTURE_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
CENTRE_RADIUS = 6
"""A nucleus must reach within this many pixels of the crop centre, else the mask is empty."""
OTSU_BINS = 256
CROP_PERCENTILES = (5, 25, 50, 75, 95, 99)
TEXTURE_NAMES = ("Contrast", "Dissimilarity", "Homogeneity", "Energy", "Correlation",
                 "Entropy")
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = ndi.generate_binary_structure(2, 1)  # 4-connected in-plane, never across crops
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2


def otsu_thresholds(images: np.ndarray, bins: int = OTSU_BINS) -> np.ndarray:
    """Otsu's threshold of each image of ``images`` ``(N, H, W)``, from a ``bins``-bin
    histogram over the image's own range; ``(N,)`` float64 (the image's value if constant).
    """
    x = images.reshape(len(images), -1).astype(np.float64)
    lo, hi = x.min(axis=1), x.max(axis=1)
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)
    idx = np.clip(((x - lo[:, None]) / width[:, None]).astype(np.int64), 0, bins - 1)
    hist = np.bincount((idx + bins * np.arange(len(x))[:, None]).ravel(),
                       minlength=bins * len(x)).reshape(len(x), bins).astype(np.float64)
    centres = lo[:, None] + width[:, None] * (np.arange(bins) + 0.5)
    w1 = np.cumsum(hist, axis=1)
    w2 = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
    m1 = np.cumsum(hist * centres, axis=1) / np.maximum(w1, 1)
    m2 = (np.cumsum((hist * centres)[:, ::-1], axis=1) / np.maximum(w2[:, ::-1], 1))[:, ::-1]
    between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    best = between.argmax(axis=1)
    return np.where(hi > lo, centres[np.arange(len(x)), best], lo)


def nucleus_masks(dna: np.ndarray, radius: float = CENTRE_RADIUS,
                  segment: SegmentConfig = SegmentConfig(),
                  thresholds: np.ndarray | None = None) -> np.ndarray:
    """The central nucleus of each crop: ``(N, H, W)`` DNA -> ``(N, H, W)`` bool.

    The crop smoothed by ``segment.smoothing_sigma`` is cut at its entry of ``thresholds``
    ``(N,)`` (the level ``crop --segment`` found its field's nuclei at), or where that is
    None or NaN at the crop's own Otsu threshold; holes filled, then the 4-connected
    component holding the foreground pixel nearest the centre, if that pixel is within
    ``radius`` px of it; where that finds nothing, Otsu on log intensities. Empty if both
    fail (a blank crop). With ``segment.split_touching`` the component is then cut as
    ``crop --segment`` cuts touching nuclei (see :func:`split_centre`).
    """
    sigma = segment.smoothing_sigma
    smooth = ndi.gaussian_filter(dna.astype(np.float64), sigma=(0, sigma, sigma))
    levels = otsu_thresholds(smooth)
    if thresholds is not None:
        levels = np.where(np.isfinite(thresholds), thresholds, levels)
    masks = _centre_component(smooth, radius, levels)
    # A bright neighbour can lift the threshold above a dim central nucleus (~0.7% of
    # BBBC021's crops); on log intensities Otsu separates it from the background.
    missed = np.flatnonzero(~masks.any(axis=(1, 2)))
    if len(missed):
        logs = np.log1p(np.maximum(smooth[missed], 0))
        masks[missed] = _centre_component(logs, radius, otsu_thresholds(logs))
    if segment.split_touching:
        split_centre(masks, segment.min_distance, segment.min_area)
    return masks


def split_centre(masks: np.ndarray, min_distance: int, min_area: int) -> np.ndarray:
    """Cut each mask ``(N, H, W)`` bool, in place, into nuclei as ``crop --segment`` does,
    keeping the piece nearest the centre; returns ``masks``.

    Without it a crop of a nucleus touching others measured the whole clump: on
    CellProfiler's ExampleFly fields cropped with ``--segment``, 414 of 1,650 measured
    nuclei were over 1.5x the area crop found. Pieces under ``min_area`` px are passed over, as
    :func:`~cellprof.prepare.segment.find_nuclei` drops them; a mask whose pieces are all
    that small stays whole. Only the mask's bounding box (plus a pixel of background, so the
    distance transform sees its edge) is split: one watershed of a few hundred pixels a crop.
    """
    _, h, w = masks.shape
    d2 = _centre_distance2(h, w)
    for i in np.flatnonzero(masks.any(axis=(1, 2))):
        rows, cols = np.flatnonzero(masks[i].any(axis=1)), np.flatnonzero(masks[i].any(axis=0))
        box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
        labels = split_nuclei(masks[i][box], min_distance)
        area = np.bincount(labels.ravel())
        passed = area < min_area
        passed[0] = True
        if len(area) <= 2 or passed.all():
            continue
        nearest = np.where(passed[labels], np.inf, d2[box]).argmin()
        masks[i] = False
        masks[i][box] = labels == labels.flat[nearest]
    return masks


def _centre_distance2(h: int, w: int) -> np.ndarray:
    """Squared distance (px²) of each pixel of an ``h`` x ``w`` crop from its centre."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2


def _centre_component(smooth: np.ndarray, radius: float, levels: np.ndarray) -> np.ndarray:
    n, h, w = smooth.shape
    fg = smooth > levels[:, None, None]
    fg = ndi.binary_fill_holes(fg, structure=_STRUCTURE)
    labels, _ = ndi.label(fg, structure=_STRUCTURE)
    d2 = _centre_distance2(h, w)
    dist = np.where(labels > 0, d2[None], np.inf).reshape(n, -1)
    nearest = dist.argmin(axis=1)
    ok = dist[np.arange(n), nearest] <= radius ** 2
    centre_label = np.where(ok, labels.reshape(n, -1)[np.arange(n), nearest], -1)
    return labels == centre_label[:, None, None]


def shape_features(masks: np.ndarray) -> dict[str, np.ndarray]:
    """``AreaShape_*`` of each mask ``(N, H, W)`` bool (regionprops' definitions; 0 if empty)."""
    n, h, w = masks.shape
    m = masks.astype(np.float64)
    area = m.sum(axis=(1, 2))
    safe = np.maximum(area, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = (m * yy).sum(axis=(1, 2)) / safe
    cx = (m * xx).sum(axis=(1, 2)) / safe
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    a = (m * dy * dy).sum(axis=(1, 2)) / safe
    b = (m * dy * dx).sum(axis=(1, 2)) / safe
    c = (m * dx * dx).sum(axis=(1, 2)) / safe
    root = np.sqrt(4 * b ** 2 + (a - c) ** 2) / 2
    l1, l2 = (a + c) / 2 + root, np.maximum((a + c) / 2 - root, 0)
    ecc = np.sqrt(np.clip(1 - np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0), 0, 1))
    u8 = masks.astype(np.uint8)
    border = u8 - ndi.binary_erosion(u8, _STRUCTURE, border_value=0).astype(np.uint8)
    code = ndi.convolve(border, np.array([[[10, 2, 10], [2, 1, 2], [10, 2, 10]]], np.uint8),
                        mode="constant", cval=0)
    perimeter = _PERIMETER_WEIGHTS[code].sum(axis=(1, 2))
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    bbox = (rows.sum(axis=1) * cols.sum(axis=1)).astype(np.float64)
    convex = np.zeros(n)
    for i in np.flatnonzero(area > 0):  # the one step without a batched form
        r, k = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        convex[i] = convex_hull_image(masks[i, r[0]:r[-1] + 1, k[0]:k[-1] + 1]).sum()
    return {
        "AreaShape_Area": area,
        "AreaShape_Perimeter": perimeter,
        "AreaShape_Eccentricity": ecc,
        "AreaShape_Solidity": np.divide(area, convex, out=np.zeros(n), where=convex > 0),
        "AreaShape_MajorAxisLength": 4 * np.sqrt(l1),
        "AreaShape_MinorAxisLength": 4 * np.sqrt(l2),
        "AreaShape_FormFactor": np.divide(4 * np.pi * area, perimeter ** 2, out=np.zeros(n),
                                          where=perimeter > 0),
        "AreaShape_Extent": np.divide(area, bbox, out=np.zeros(n), where=bbox > 0),
    }


def _masked_quantiles(values: np.ndarray, mask: np.ndarray, qs: Sequence[float]
                      ) -> list[np.ndarray]:
    """Linear-interpolated quantiles ``qs`` (0–1) of each row's values where ``mask``;
    rows ``(N, P)``; 0 for an empty row."""
    s = np.sort(np.where(mask, values, np.inf), axis=1)  # masked-out values sort last
    k = mask.sum(axis=1)
    s[k == 0] = 0.0
    rows = np.arange(len(s))
    out = []
    for q in qs:
        pos = q * np.maximum(k - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
        v = s[rows, lo] + (pos - lo) * (s[rows, hi] - s[rows, lo])
        out.append(np.where(k > 0, v, 0.0))
    return out


def intensity_features(x: np.ndarray, masks: np.ndarray, channels: Sequence[str]
                       ) -> dict[str, np.ndarray]:
    """``Intensity_*`` of crops ``x`` ``(N, C, H, W)`` float: in the nucleus ``masks`` and,
    suffixed ``Crop``, over the whole crop."""
    n = len(x)
    flat = x.reshape(n, x.shape[1], -1)
    m = masks.reshape(n, -1)
    area = m.sum(axis=1)
    safe = np.maximum(area, 1)
    out: dict[str, np.ndarray] = {}
    for k, ch in enumerate(channels):
        v = flat[:, k]
        total = np.where(m, v, 0).sum(axis=1)
        mean = total / safe
        std = np.sqrt(np.where(m, (v - mean[:, None]) ** 2, 0).sum(axis=1) / safe)
        q0, q25, q50, q75, q100 = _masked_quantiles(v, m, (0, 0.25, 0.5, 0.75, 1))
        (mad,) = _masked_quantiles(np.abs(v - q50[:, None]), m, (0.5,))
        out.update({
            f"Intensity_IntegratedIntensity_{ch}": total,
            f"Intensity_MeanIntensity_{ch}": mean,
            f"Intensity_StdIntensity_{ch}": np.where(area > 0, std, 0.0),
            f"Intensity_MinIntensity_{ch}": q0,
            f"Intensity_MaxIntensity_{ch}": q100,
            f"Intensity_LowerQuartileIntensity_{ch}": q25,
            f"Intensity_MedianIntensity_{ch}": q50,
            f"Intensity_UpperQuartileIntensity_{ch}": q75,
            f"Intensity_MADIntensity_{ch}": mad,
            f"Intensity_MeanIntensityCrop_{ch}": v.mean(axis=1),
            f"Intensity_StdIntensityCrop_{ch}": v.std(axis=1),
        })
        pct = np.percentile(v, CROP_PERCENTILES, axis=1)
        out.update({f"Intensity_Percentile{p:02d}Crop_{ch}": pct[i]
                    for i, p in enumerate(CROP_PERCENTILES)})
    return out


def quantize(x: np.ndarray, levels: int = TEXTURE_LEVELS) -> np.ndarray:
    """``(N, H, W)`` non-negative images -> integer levels ``0..levels-1`` of ``x / max(x)``
    (a blank image is all level 0)."""
    peak = x.max(axis=(1, 2), keepdims=True)
    scaled = np.divide(x, peak, out=np.zeros_like(x, dtype=np.float64), where=peak > 0)
    return np.clip((scaled * levels).astype(np.int64), 0, levels - 1)


def cooccurrence(q: np.ndarray, offset: tuple[int, int], levels: int) -> np.ndarray:
    """Symmetric normalised GLCMs ``(N, L, L)`` of level images ``q`` ``(N, H, W)`` for
    pixel pairs ``(r, c)``, ``(r + dr, c + dc)``."""
    n, h, w = q.shape
    dr, dc = offset
    c0, c1 = max(0, -dc), w - max(0, dc)
    a = q[:, :h - dr, c0:c1]
    b = q[:, dr:, c0 + dc:c1 + dc]
    idx = (np.arange(n)[:, None, None] * levels + a) * levels + b
    p = np.bincount(idx.ravel(), minlength=n * levels * levels).reshape(n, levels, levels)
    p = (p + p.transpose(0, 2, 1)).astype(np.float64)
    return p / np.maximum(p.sum(axis=(1, 2), keepdims=True), 1)


def glcm_properties(p: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`TEXTURE_NAMES` of normalised GLCMs ``(N, L, L)``, as ``graycoprops`` defines them."""
    levels = p.shape[1]
    i, j = np.ogrid[0:levels, 0:levels]
    d2 = (i - j) ** 2
    mu_i = (p * i).sum(axis=(1, 2))
    mu_j = (p * j).sum(axis=(1, 2))
    di = i[None] - mu_i[:, None, None]
    dj = j[None] - mu_j[:, None, None]
    sd_i = np.sqrt((p * di ** 2).sum(axis=(1, 2)))
    sd_j = np.sqrt((p * dj ** 2).sum(axis=(1, 2)))
    cov = (p * di * dj).sum(axis=(1, 2))
    flat = (sd_i < 1e-15) | (sd_j < 1e-15)
    logp = np.log(p, where=p > 0, out=np.zeros_like(p))
    return {
        "Contrast": (p * d2).sum(axis=(1, 2)),
        "Dissimilarity": (p * np.sqrt(d2)).sum(axis=(1, 2)),
        "Homogeneity": (p / (1.0 + d2)).sum(axis=(1, 2)),
        "Energy": np.sqrt((p ** 2).sum(axis=(1, 2))),
        "Correlation": np.where(flat, 1.0, cov / np.where(flat, 1.0, sd_i * sd_j)),
        "Entropy": -(p * logp).sum(axis=(1, 2)),
    }


def texture_features(x: np.ndarray, channels: Sequence[str], levels: int = TEXTURE_LEVELS,
                     scale: int = TEXTURE_SCALE) -> dict[str, np.ndarray]:
    """``Texture_<name>_<channel>`` of crops ``x`` ``(N, C, H, W)``, mean over the 4 angles."""
    offsets = [(int(round(np.sin(a) * scale)), int(round(np.cos(a) * scale)))
               for a in TEXTURE_ANGLES]
    out: dict[str, np.ndarray] = {}
    for k, ch in enumerate(channels):
        q = quantize(x[:, k], levels)
        per_angle = [glcm_properties(cooccurrence(q, o, levels)) for o in offsets]
        for name in TEXTURE_NAMES:
            out[f"Texture_{name}_{ch}"] = np.mean([pa[name] for pa in per_angle], axis=0)
    return out


def correlation_features(x: np.ndarray, channels: Sequence[str]) -> dict[str, np.ndarray]:
    """``Correlation_Correlation_<a>_<b>``: Pearson correlation of two channels over the
    crop's pixels (0 when either is constant)."""
    flat = x.reshape(len(x), x.shape[1], -1)
    z = flat - flat.mean(axis=2, keepdims=True)
    norm = np.sqrt((z ** 2).sum(axis=2))
    out = {}
    for a, b in combinations(range(len(channels)), 2):
        den = norm[:, a] * norm[:, b]
        out[f"Correlation_Correlation_{channels[a]}_{channels[b]}"] = np.divide(
            (z[:, a] * z[:, b]).sum(axis=1), den, out=np.zeros(len(x)), where=den > 0)
    return out


def classical_features(crops: np.ndarray, channels: Sequence[str], batch: int = 512,
                       segment: SegmentConfig = SegmentConfig(),
                       thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Hand-crafted features of every crop, named CellProfiler-style.

    Parameters
    ----------
    crops : (N, C, H, W) array
        Single-cell crops, centred on the nucleus, any real dtype (raw intensities); the
        first channel is the DNA stain the nucleus is segmented on.
    channels : sequence of str
        The C channel names, used in the feature names.
    batch : int
        Crops measured at once (memory ~ ``batch * C * H * W * 40`` bytes).
    segment : SegmentConfig
        How the nucleus is found (:func:`nucleus_masks`): the smoothing, and the splitting of
        touching nuclei, of the ``crop --segment`` run that cut the crops.
    thresholds : (N,) float array, optional
        The level each crop's field was segmented at (the store's ``Threshold_Nuclei_<ch>``);
        NaN, or None for all, thresholds a crop at its own Otsu level.

    Returns
    -------
    DataFrame
        One row per crop (same order), float64 columns ``AreaShape_*``,
        ``Intensity_*_<channel>``, ``Texture_*_<channel>``, ``Correlation_*``; no NaN.

    Examples
    --------
    A sharp disc of radius 8 px (208 pixels, pi r^2 = 201) in a 40 px crop; the smoothing
    before thresholding adds part of its rim:

    >>> yy, xx = np.mgrid[:40, :40]
    >>> disc = ((yy - 19.5) ** 2 + (xx - 19.5) ** 2 <= 64).astype(np.uint16) * 1000
    >>> f = classical_features(disc[None, None], ["DNA"])
    >>> int(f.loc[0, "AreaShape_Area"]), round(float(f.loc[0, "AreaShape_Eccentricity"]), 2)
    (216, 0.0)
    """
    crops = np.asarray(crops)
    if crops.ndim != 4:
        raise ValueError(f"crops must be (N, C, H, W), got shape {crops.shape}")
    if crops.dtype.kind not in "uif" and crops.dtype.kind != "b":
        raise ValueError(f"crops must be numeric, got dtype {crops.dtype}")
    if len(channels) != crops.shape[1]:
        raise ValueError(f"{len(channels)} channel names for {crops.shape[1]} channels")
    if min(crops.shape[2:]) <= 2 * TEXTURE_SCALE:
        raise ValueError(f"crops must be larger than {2 * TEXTURE_SCALE} px a side, "
                         f"got {crops.shape[2:]}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if thresholds is not None:
        thresholds = np.asarray(thresholds, np.float64)
        if thresholds.shape != (len(crops),):
            raise ValueError(f"{thresholds.shape} thresholds for {len(crops)} crops")
    parts = []
    for lo in range(0, len(crops), batch):
        x = crops[lo:lo + batch].astype(np.float64)
        levels = None if thresholds is None else thresholds[lo:lo + batch]
        masks = nucleus_masks(x[:, 0], segment=segment, thresholds=levels)
        feats = {**shape_features(masks), **intensity_features(x, masks, channels),
                 **texture_features(x, channels), **correlation_features(x, channels)}
        parts.append(pd.DataFrame(feats))
    if not parts:
        return pd.DataFrame(columns=list(classical_features(
            np.zeros((1, *crops.shape[1:])), channels).columns), dtype=np.float64)
    return pd.concat(parts, ignore_index=True)
