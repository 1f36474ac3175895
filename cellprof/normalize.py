"""Normalising profiles against negative-control wells (pycytominer's ``normalize``).

Plate effects (stain batches, focus, cell density) shift every well of a plate alike, so
each feature is re-expressed relative to the control wells (DMSO) of the same plate:

- ``zscore``: ``(x - mean_ctrl) / std_ctrl`` (sample std, ``ddof=1``, as R's ``sd`` in
  cytominer, with which the published 0.82 NSC on BBBC021's per-well means was computed);
- ``robust``: ``(x - median_ctrl) / (1.4826 * MAD_ctrl)``; 1.4826 makes the MAD of normal
  data equal its standard deviation, so both methods share units;
- ``sphere`` ("typical variation normalisation", Ando et al. 2017): centre each plate on
  its control mean, then apply one ZCA whitening matrix fitted on all (centred) control
  wells, so directions in which controls vary a lot — technical noise — are shrunk and
  a treatment's profile measures how atypical it is for DMSO.

A feature whose control spread is zero (or numerically zero) on any plate cannot be
scaled; it is dropped and named in the returned list rather than producing ``inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.schema import PLATE

METHODS = ("none", "zscore", "robust", "sphere")
MAD_TO_SD = 1.4826
SPHERE_EPS = 1e-6
"""Ridge added to the eigenvalues of the control *correlation* matrix before whitening.

Features are first divided by their pooled control std, so eigenvalues are in units of
"one feature's worth of variance" (they sum to the number of features) and ``eps`` means
the same for any feature set (ZCA-cor, Kessy et al. 2018). 1e-6 is pycytominer's default
``spherize_epsilon``. With fewer control wells than features (BBBC021's per-well means:
330 DMSO wells on 55 plates, 502 features) the directions in which no control varies are
scaled by ``1/sqrt(eps)`` and dominate the whitened profiles, so matching then happens
in the subspace DMSO never explores; a larger ``eps`` mixes that with the explored one.
"""


def _zero_spread(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Spread indistinguishable from zero (or NaN): exact zero, or float noise around a
    constant (a mean of identical values can differ from them in the last bits)."""
    return ~(scale > 1e-10 * np.abs(center))


def zscore_params(controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (``ddof=1``) of each column of ``controls`` ``(n, D)``."""
    return controls.mean(axis=0), controls.std(axis=0, ddof=1)


def robust_params(controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and ``1.4826 * MAD`` of each column of ``controls`` ``(n, D)``."""
    med = np.median(controls, axis=0)
    return med, MAD_TO_SD * np.median(np.abs(controls - med), axis=0)


def whitening_matrix(centred: np.ndarray, dof: int, eps: float = SPHERE_EPS) -> np.ndarray:
    """ZCA matrix ``W = V diag(1/sqrt(l + eps)) V^T`` of ``C = X^T X / dof``, ``(D, D)``.

    ``centred`` ``(n, D)`` must already be centred (per plate); ``dof`` is ``n`` minus
    the number of means subtracted. ``X @ W`` then has covariance ``C W W = I`` up to
    ``eps``. ZCA (not PCA) whitening is the rotation-free one: each whitened feature
    stays closest to the original feature.
    """
    cov = centred.T @ centred / max(dof, 1)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)  # round-off can make null eigenvalues slightly negative
    return (vecs / np.sqrt(vals + eps)) @ vecs.T


def normalize(table: pd.DataFrame, features: Sequence[str], *, method: str,
              controls: np.ndarray, strata: str = PLATE,
              eps: float = SPHERE_EPS) -> tuple[pd.DataFrame, list[str]]:
    """Normalise ``features`` of ``table`` per ``strata`` against the rows ``controls``.

    Parameters
    ----------
    table : DataFrame
        Well- (or site-) level profiles, one row each.
    features : sequence of str
        Feature columns to normalise; other columns pass through.
    method : {"none", "zscore", "robust", "sphere"}
    controls : (N,) bool array
        Which rows are negative-control wells.
    strata : str
        Column grouping rows that share a control baseline (the plate).
    eps : float
        Sphering ridge, see :data:`SPHERE_EPS`.

    Returns
    -------
    (DataFrame, list of str)
        The normalised table (zero-spread features removed) and those removed features.

    Examples
    --------
    >>> t = pd.DataFrame({"Metadata_Plate": ["p"] * 3, "f": [1.0, 3.0, 5.0]})
    >>> normalize(t, ["f"], method="zscore", controls=np.array([1, 1, 0], bool))[0]["f"].tolist()
    [-0.7071067811865475, 0.7071067811865475, 2.1213203435596424]
    """
    if method not in METHODS:
        raise InputError(f"--normalize must be one of {', '.join(METHODS)}, got {method!r}")
    features = list(features)
    if method == "none":
        return table, []
    controls = np.asarray(controls, dtype=bool)
    x = table[features].to_numpy(np.float64)
    plates = table[strata].to_numpy()
    out = np.empty_like(x)
    zero = np.zeros(len(features), bool)
    minimum = 1 if method == "sphere" else 2
    for plate in pd.unique(plates):
        rows = plates == plate
        ctrl = x[rows & controls]
        if len(ctrl) < minimum:
            raise InputError(f"{strata} {plate}: {len(ctrl)} control well(s); {method} "
                             f"normalisation needs at least {minimum} per plate (check "
                             "--control, or use --normalize none)")
        if method == "robust":
            center, scale = robust_params(ctrl)
        elif method == "zscore":
            center, scale = zscore_params(ctrl)
        else:
            center, scale = ctrl.mean(axis=0), np.ones(len(features))
        zero |= _zero_spread(center, scale)
        out[rows] = (x[rows] - center) / np.where(scale > 0, scale, 1.0)
    if method == "sphere":
        ctrl = out[controls]
        dof = len(ctrl) - len(pd.unique(plates[controls]))
        if dof < 1:
            raise InputError("sphere normalisation needs more control wells than plates "
                             f"(has {len(ctrl)} on {len(ctrl) - dof} plate(s))")
        sd = np.sqrt((ctrl ** 2).sum(axis=0) / dof)
        zero |= _zero_spread(np.abs(x[controls]).max(axis=0), sd)
        keep = ~zero
        scaled = out[:, keep] / sd[keep]
        out[:, keep] = scaled @ whitening_matrix(scaled[controls], dof, eps)
    names = dict(zip(features, zero))
    kept = pd.DataFrame(out[:, ~zero], columns=[f for f, z in names.items() if not z],
                        index=table.index)
    # one concat, not column-by-column assignment: keeps the frame in one block
    result = pd.concat([table[[c for c in table.columns if c not in names]], kept], axis=1)
    return result, [f for f, z in names.items() if z]
