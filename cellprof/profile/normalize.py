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

Where the control statistics come from is the *scope*: the controls of each plate (the
default, and the BBBC021 convention), of each batch (plates sharing a name prefix, see
:func:`cellprof.prepare.tables.batch_of`), or of the whole screen. A plate-wide shift is removed
only at plate scope; wider scopes exist for screens that hold too few controls per plate
to estimate a spread (a sample of single cells may leave most plates with one DMSO cell
or none), where pooling is the only estimate there is.

A feature whose control spread is zero (or numerically zero) in any scope group cannot be
scaled; it is dropped and named in the returned list rather than producing ``inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.schema import PLATE
from cellprof.prepare.tables import batch_of

METHODS = ("none", "zscore", "robust", "sphere")
ALIASES = {"standardize": "zscore", "mad_robustize": "robust", "spherize": "sphere"}
"""pycytominer's names for the same methods. Note ``robust`` is ``mad_robustize``
(median and 1.4826 MAD), not pycytominer's ``robustize`` (median and interquartile range)."""
SCOPES = ("plate", "batch", "screen")
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


def method_name(method: str) -> str:
    """The cellprof name of a normalisation method given in cellprof's or pycytominer's
    naming (``standardize`` -> ``zscore``); unknown names raise :class:`InputError`."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise InputError(f"--normalize must be one of {', '.join(METHODS)} (or pycytominer's "
                         f"{', '.join(ALIASES)}), got {method!r}")
    return name


def scope_groups(plates: pd.Series | np.ndarray, scope: str) -> np.ndarray:
    """The group each row's control statistics come from: its plate, its batch (plate-name
    prefix) or one group for the whole screen.

    >>> scope_groups(np.array(["Week1_a", "Week1_b", "Week2_a"]), "batch").tolist()
    ['Week1', 'Week1', 'Week2']
    """
    plates = np.asarray(plates).astype(str)
    if scope == "plate":
        return plates
    if scope == "batch":
        return np.array([batch_of(p) for p in plates], dtype=object).astype(str)
    if scope == "screen":
        return np.full(len(plates), "screen")
    raise InputError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def _too_few(scope: str, group: str, plates: np.ndarray, n: int, minimum: int, method: str,
             unit: str) -> InputError:
    """The error for a scope group with fewer controls than ``method`` needs: which group,
    how many it has and needs, and the wider scope that would pool more controls."""
    wider = {"plate": "use --scope batch or --scope screen to pool the controls of the "
                      "plate's batch or of the whole screen",
             "batch": "use --scope screen to pool the controls of the whole screen",
             "screen": "check --control"}[scope]
    where = {"plate": f"plate {group}",
             "batch": f"batch {group} ({len(plates)} plate(s): "
                      f"{', '.join(plates[:3])}{' …' if len(plates) > 3 else ''})",
             "screen": "the screen"}[scope]
    return InputError(f"{where} has {n} control {unit}(s); {method} normalisation needs at "
                      f"least {minimum} per {scope}: {wider}, or --normalize none")


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
              controls: np.ndarray, strata: str = PLATE, scope: str = "plate",
              eps: float = SPHERE_EPS, unit: str = "well") -> tuple[pd.DataFrame, list[str]]:
    """Normalise ``features`` of ``table`` per scope group against the rows ``controls``.

    Parameters
    ----------
    table : DataFrame
        Well- (or site-) level profiles, one row each.
    features : sequence of str
        Feature columns to normalise; other columns pass through.
    method : {"none", "zscore", "robust", "sphere"}
        Or pycytominer's names for them (:data:`ALIASES`).
    controls : (N,) bool array
        Which rows are negative-control wells.
    strata : str
        The plate column.
    scope : {"plate", "batch", "screen"}
        Whose controls give a row its statistics: its plate's, its batch's (plates with the
        same name prefix) or the whole screen's.
    eps : float
        Sphering ridge, see :data:`SPHERE_EPS`.
    unit : str
        What a row is ("well", "site"), for error messages.

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
    method = method_name(method)
    features = list(features)
    if method == "none":
        return table, []
    controls = np.asarray(controls, dtype=bool)
    x = table[features].to_numpy(np.float64)
    plate_of = table[strata].to_numpy().astype(str)
    groups = scope_groups(plate_of, scope)
    out = np.empty_like(x)
    zero = np.zeros(len(features), bool)
    minimum = 1 if method == "sphere" else 2
    for group in pd.unique(groups):
        rows = groups == group
        ctrl = x[rows & controls]
        if len(ctrl) < minimum:
            raise _too_few(scope, group, pd.unique(plate_of[rows]), len(ctrl), minimum,
                           method, unit)
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
        dof = len(ctrl) - len(pd.unique(groups[controls]))
        if dof < 1:
            raise InputError(f"sphere normalisation needs more control {unit}s than "
                             f"{scope}s (has {len(ctrl)} in {len(ctrl) - dof} {scope}(s))"
                             + ("; use a wider --scope" if scope != "screen" else ""))
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
