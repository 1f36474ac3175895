"""Blocks of features weighed equally: a combined profile is not dominated by its widest part.

A combined profile (``cellprof combine``) joins blocks of features measured on the same
cells — 256 learned latents beside 80 hand-crafted measurements, say. Normalised against the
controls, every feature is in units of control spread, so left alone the block with more
(or more varied) features would decide most of every distance between treatments. Here
each block is multiplied by one weight so that every block has the same *total variance*
(the sum over its features of the variance across the rows being matched): 1.

Why total variance: the mean squared Euclidean distance between two rows is twice the
summed variance of the columns, so a block's total variance is its share of the distances
the matching compares (of the angles too, for cosine on control-centred profiles). A block
scaled by 100 has 10⁴ times the total variance and gets exactly 1/100 of the weight; a
constant feature adds nothing to its block's total and changes nothing. The variance is the
population variance (``ddof=0``) across the rows given: :func:`cellprof.profile.match.prepare`
gives the treatment profiles it matches, after normalisation, so the weights equalise what
the matching sees (weighting wells instead would give the same profiles up to one factor
per block, since means and medians commute with scaling, but weigh by replicate noise too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import InputError

Blocks = Mapping[str, Sequence[str]]
"""Block name -> its feature columns, in block order."""

_NO_SPREAD = 1e-12
"""A block's total variance at or below this fraction of its mean square is no spread (a
constant block's variance is rounding error, whose inverse would blow it up)."""


def check_blocks(blocks: Blocks, features: Sequence[str], source: str = "profiles") -> None:
    """Raise :class:`InputError` unless every feature is in exactly one block and every
    block's features are features of the table."""
    where: dict[str, str] = {}
    for name, feats in blocks.items():
        if not feats:
            raise InputError(f"{source}: feature block {name!r} has no features")
        for f in feats:
            if f in where:
                raise InputError(f"{source}: feature {f!r} is in blocks {where[f]!r} and "
                                 f"{name!r}: each feature belongs to one block")
            where[f] = name
    known = set(features)
    if missing := [f for f in where if f not in known]:
        raise InputError(f"{source}: block {where[missing[0]]!r} names {len(missing)} "
                         f"column(s) that are not features of the table (e.g. "
                         f"{missing[0]!r})")
    if loose := [f for f in features if f not in where]:
        raise InputError(f"{source}: {len(loose)} feature(s) belong to no block (e.g. "
                         f"{loose[0]!r}): a combined profile assigns every feature a block")


def total_variance(frame: pd.DataFrame, features: Sequence[str]) -> float:
    """Sum over ``features`` of their population variance across the rows of ``frame``."""
    return float(frame[list(features)].to_numpy(np.float64).var(axis=0).sum())


def block_weights(frame: pd.DataFrame, blocks: Blocks) -> dict[str, float]:
    """The factor each block's features are multiplied by so that every block's total
    variance across the rows of ``frame`` is 1: ``1 / sqrt(total variance)``.

    >>> frame = pd.DataFrame({"a": [0.0, 2.0], "b": [0.0, 200.0], "c": [5.0, 5.0]})
    >>> block_weights(frame, {"small": ["a"], "big": ["b", "c"]})
    {'small': 1.0, 'big': 0.01}
    """
    weights = {}
    for name, feats in blocks.items():
        x = frame[list(feats)].to_numpy(np.float64)
        total = float(x.var(axis=0).sum())
        if not np.isfinite(total) or total <= _NO_SPREAD * float(np.mean(x ** 2)):
            raise InputError(f"feature block {name!r} does not vary across the {len(frame)} "
                             f"rows matched (total variance {total:.3g}): it cannot be "
                             "weighed; drop it from the combined profile")
        weights[name] = 1.0 / float(np.sqrt(total))
    return weights


def weigh_blocks(frame: pd.DataFrame, blocks: Blocks
                 ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """``frame`` with each block's features multiplied by its weight
    (:func:`block_weights`), and per block its name, width, total variance before weighting
    and weight, in block order."""
    weights = block_weights(frame, blocks)
    out = frame.copy()
    info = []
    for name, feats in blocks.items():
        info.append({"name": name, "width": len(feats),
                     "total_variance": total_variance(frame, feats),
                     "weight": weights[name]})
        out[list(feats)] = frame[list(feats)].to_numpy(np.float64) * weights[name]
    return out, info
