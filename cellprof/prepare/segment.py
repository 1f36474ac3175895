"""Nucleus detection for users without a CellProfiler pipeline.

The cropper needs one centre per cell; CellProfiler users get it from
``IdentifyPrimaryObjects``. :func:`find_nuclei` gives everyone else the same table, in
the same column names, from the DNA channel alone: smooth, threshold (Otsu or Li),
split touching nuclei with a distance-transform watershed, drop debris and unsplit
clumps by area.

Objects touching the image border are kept on purpose: whether a cell too close to the
edge can be cropped is the cropper's decision (it knows the crop size), not the
segmenter's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_li, threshold_otsu
from skimage.segmentation import watershed

COLUMNS = ["ObjectNumber", "Location_Center_X", "Location_Center_Y", "AreaShape_Area"]
"""Output columns, named as CellProfiler's ``Nuclei`` table names them."""
THRESHOLD = "threshold"
"""Key of the output's ``attrs`` holding the threshold the nuclei were found at."""

_THRESHOLDS = {"otsu": threshold_otsu, "li": threshold_li}


@dataclass(frozen=True)
class SegmentConfig:
    """Settings of :func:`find_nuclei`; defaults suit 20x widefield nuclei (~10-30 px across)."""

    smoothing_sigma: float = 1.0
    """Gaussian sigma (px) applied before thresholding, so shot noise does not fray edges."""
    min_area: int = 30
    """Objects smaller than this (px) are dropped as debris or split fragments."""
    max_area: int | None = None
    """Objects larger than this (px) are dropped as clumps that failed to split; None keeps all."""
    split_touching: bool = True
    """Split touching nuclei with a distance-transform watershed."""
    min_distance: int = 5
    """Minimum distance (px) between two seeds; raise it if large nuclei get cut in two."""
    threshold: str = "otsu"
    """Global threshold method: ``"otsu"`` or ``"li"`` (Li keeps more of dim nuclei)."""


def _check(dna: np.ndarray, config: SegmentConfig) -> np.ndarray:
    """Validate inputs and return the image as float32 (thresholds need a real-valued image)."""
    dna = np.asarray(dna)
    if dna.ndim != 2:
        raise ValueError(
            f"find_nuclei expects one 2-D DNA image of shape (H, W); got shape {dna.shape}"
        )
    if not (np.issubdtype(dna.dtype, np.number) or dna.dtype == bool) or np.iscomplexobj(dna):
        raise ValueError(f"find_nuclei expects a real numeric image; got dtype {dna.dtype}")
    if config.threshold not in _THRESHOLDS:
        raise ValueError(
            f"threshold must be one of {sorted(_THRESHOLDS)}; got {config.threshold!r}"
        )
    if config.smoothing_sigma < 0:
        raise ValueError(f"smoothing_sigma must be >= 0 px; got {config.smoothing_sigma}")
    if config.min_distance < 1:
        raise ValueError(f"min_distance must be >= 1 px; got {config.min_distance}")
    image = dna.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise ValueError("find_nuclei expects finite pixel values; the image contains NaN or inf")
    return image


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ObjectNumber": np.zeros(0, np.int64),
            "Location_Center_X": np.zeros(0, np.float64),
            "Location_Center_Y": np.zeros(0, np.float64),
            "AreaShape_Area": np.zeros(0, np.int64),
        }
    )


def _split(mask: np.ndarray, components: np.ndarray, min_distance: int) -> np.ndarray:
    """Watershed the mask from one seed per distance-transform peak.

    Seeds are numbered in raster order so ObjectNumber is reproducible and reads
    top-to-bottom. A component whose peaks were all suppressed still gets a seed at its
    deepest point, so no foreground object silently disappears.
    """
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(
        distance,
        min_distance=min_distance,
        labels=components,
        exclude_border=False,  # border nuclei are kept; the cropper decides about edges
    )
    peaks = peaks[np.lexsort((peaks[:, 1], peaks[:, 0]))] if len(peaks) else peaks
    n_components = int(components.max())
    seeded = np.zeros(n_components + 1, bool)
    seeded[components[tuple(peaks.T)]] = True
    missing = np.flatnonzero(~seeded[1:]) + 1
    if len(missing):
        extra = np.array(ndi.maximum_position(distance, components, missing), dtype=np.intp)
        peaks = np.concatenate([peaks.reshape(-1, 2), extra.reshape(-1, 2)])
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    return watershed(-distance, markers, mask=mask)


def split_nuclei(mask: np.ndarray, min_distance: int = SegmentConfig.min_distance
                 ) -> np.ndarray:
    """Label a 2-D foreground ``mask`` with touching nuclei cut apart as :func:`find_nuclei`
    cuts them: ``(H, W)`` bool -> ``(H, W)`` int32 labels, 0 the background.

    ``cellprof measure`` splits each crop's nucleus with it, so it measures the nucleus
    the crop was cut for, not the clump of neighbours it touches.
    """
    components, n = ndi.label(mask)
    if n == 0:
        return np.zeros(mask.shape, np.int32)
    return _split(mask, components, min_distance)


def find_nuclei(dna: np.ndarray, config: SegmentConfig = SegmentConfig()) -> pd.DataFrame:
    """Find nuclei in a DNA-stain image and return one row per nucleus.

    The pipeline is the classic one CellProfiler's ``IdentifyPrimaryObjects`` uses for
    well-separated to moderately clumped nuclei: Gaussian smoothing, a global threshold,
    hole filling (dark nucleoli must not punch holes in the mask), then, if asked,
    seeds at the local maxima of the distance transform and a watershed restricted to
    the mask, which cuts touching nuclei at their neck. Objects outside
    ``[min_area, max_area]`` are dropped after splitting.

    Parameters
    ----------
    dna : (H, W) ndarray
        DNA channel of one field, any real dtype (uint8, uint16, float) and any
        background level: the threshold is computed from the image itself.
    config : SegmentConfig, optional
        Smoothing, threshold method, splitting and area limits.

    Returns
    -------
    pandas.DataFrame
        One row per nucleus with ``ObjectNumber`` (int, 1-based, in raster order of the
        seeds), ``Location_Center_X`` and ``Location_Center_Y`` (float, 0-based centroid
        of the object's pixels in px; X is the column, Y the row, as in CellProfiler)
        and ``AreaShape_Area`` (int, px). A constant image, or one where nothing
        survives the area limits, gives an empty frame with these columns. Its
        ``attrs["threshold"]`` (:data:`THRESHOLD`) is the level the smoothed image was cut
        at, in the image's units, when a nucleus was found: the crop store keeps it, so
        ``cellprof measure`` finds the same nucleus edges in the crops.

    Raises
    ------
    ValueError
        If ``dna`` is not 2-D, not real-valued or not finite, or a setting is invalid.

    Notes
    -----
    The threshold is global, so an image with no nuclei at all but with noise (an
    empty well) will still be split into a foreground and a background; check the
    object count or area distribution for such wells.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((64, 64), np.uint16)
    >>> rows, cols = np.ogrid[:64, :64]
    >>> image[(rows - 20) ** 2 + (cols - 40) ** 2 <= 36] = 1000
    >>> nuclei = find_nuclei(image)
    >>> nuclei[["Location_Center_X", "Location_Center_Y"]].round(1).values.tolist()
    [[40.0, 20.0]]
    """
    labels, level = nucleus_labels(dna, config)
    if level is None:
        return _empty()
    # Sums of row and column indices per label give the unweighted centroid in one pass.
    area = np.bincount(labels.ravel())
    rows, cols = np.indices(labels.shape)
    sum_y = np.bincount(labels.ravel(), weights=rows.ravel(), minlength=len(area))
    sum_x = np.bincount(labels.ravel(), weights=cols.ravel(), minlength=len(area))
    found = pd.DataFrame(
        {
            "ObjectNumber": np.arange(1, len(area), dtype=np.int64),
            "Location_Center_X": sum_x[1:] / area[1:],
            "Location_Center_Y": sum_y[1:] / area[1:],
            "AreaShape_Area": area[1:].astype(np.int64),
        }
    )
    found.attrs[THRESHOLD] = level
    return found


def nucleus_labels(dna: np.ndarray, config: SegmentConfig = SegmentConfig()
                   ) -> tuple[np.ndarray, float | None]:
    """The label image behind :func:`find_nuclei`: ``(H, W)`` int32, nucleus ``k`` (its
    ``ObjectNumber``) labelled ``k``, 0 the background and the objects the area limits
    dropped; and the threshold it was cut at, None when no nucleus was found.

    The segmentation picture of ``cellprof crop --segment`` draws these outlines, so what
    it shows is what the crops were cut for, not a second segmentation that could differ.
    """
    image = _check(dna, config)
    nothing = np.zeros(image.shape, np.int32), None
    if image.size == 0 or image.min() == image.max():
        return nothing
    if config.smoothing_sigma > 0:
        image = ndi.gaussian_filter(image, config.smoothing_sigma)
    if image.min() == image.max():
        return nothing
    level = _THRESHOLDS[config.threshold](image)
    mask = ndi.binary_fill_holes(image > level)
    components, n = ndi.label(mask)
    if n == 0:
        return nothing
    if config.split_touching:
        labels = _split(mask, components, config.min_distance)
    else:
        labels = components
    area = np.bincount(labels.ravel())
    keep = area >= config.min_area
    if config.max_area is not None:
        keep &= area <= config.max_area
    keep[0] = False
    if not keep.any():
        return nothing
    number = np.zeros(len(area), np.int32)
    number[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return number[labels], float(level)
