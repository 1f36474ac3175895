"""A match run read back from its folder, and what the page computes from it: chance, each
treatment's nearest neighbours, a 2-D map of the treatment profiles.

The page reads the files ``cellprof match`` wrote, never numbers held in memory, so what it
shows is what ``metrics.json`` says, and a page can be written for an earlier match folder.
Everything here is plain arithmetic on tables (no torch, no figures), tested on hand-made
treatments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.profiles import feature_columns
from cellprof.prepare.tables import COMPOUND, MOA
from cellprof.profile.retrieval import TREATMENT, similarity_blocks

FILES = {"metrics": "metrics.json", "treatments": "treatments.csv",
         "per_moa": "map_per_moa.csv", "confusion": "confusion_nsc.csv",
         "profiles": "treatment_profiles.parquet"}
"""What :func:`cellprof.profile.match.run_match` writes and the page reads."""


@dataclass(frozen=True)
class MatchRun:
    """The files of one match folder, read."""

    folder: Path
    metrics: dict[str, Any]
    treatments: pd.DataFrame
    """treatments.csv: one row per treatment, its NSC and NSCB neighbours and AP."""
    per_moa: pd.DataFrame
    """map_per_moa.csv: mAP, p and q per MOA, best first."""
    confusion: pd.DataFrame
    """NSC queries by true MOA (index) and their neighbour's MOA (columns)."""
    profiles: pd.DataFrame
    """treatment_profiles.parquet: the profiles matched (normalised, blocks weighed)."""

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.metrics.get("config", {}))


def read_match(folder: str | Path) -> MatchRun:
    """The files ``cellprof match --out folder`` wrote; :class:`InputError` naming those
    missing."""
    folder = Path(folder)
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: no {', '.join(missing)}: not a folder `cellprof match` "
                         f"wrote; run `cellprof match PROFILES --out {folder}` first")
    confusion = pd.read_csv(folder / FILES["confusion"], index_col=0)
    confusion.index = confusion.index.astype(str)
    return MatchRun(folder, json.loads((folder / FILES["metrics"]).read_text()),
                    pd.read_csv(folder / FILES["treatments"], keep_default_na=False,
                                na_values=[""]),
                    pd.read_csv(folder / FILES["per_moa"]), confusion,
                    pd.read_parquet(folder / FILES["profiles"]))


def flags(column: pd.Series) -> list[bool | None]:
    """A hit/miss column as written to CSV (True, False or empty) as booleans and None."""
    def one(v: object) -> bool | None:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        return str(v).strip().lower() in ("true", "1", "1.0")
    return [one(v) for v in column]


def expected_ap(candidates: int, positives: int) -> float:
    """Mean average precision of a random ranking of ``candidates`` items of which
    ``positives`` are positive (NaN without a positive).

    With the k-th ranked item positive, the positives above it are hypergeometric, so its
    expected precision is ``(1 + (k - 1)(P - 1)/(N - 1)) / k``; averaged over k:
    ``(P - 1)/(N - 1) + H_N (N - P) / (N (N - 1))``, ``H_N`` the N-th harmonic number. About
    P/N on a large screen, above it on a small one (one positive of 3: 0.61, not 0.33).

    >>> round(expected_ap(3, 1), 4), expected_ap(4, 4)
    (0.6111, 1.0)
    """
    n, p = int(candidates), int(positives)
    if p <= 0 or n <= 0:
        return float("nan")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (p - 1) / (n - 1) + harmonic * (n - p) / (n * (n - 1))


def _shared_batches(batches: pd.Series) -> np.ndarray:
    """``(N, N)`` whether two treatments share a batch (``;``-joined batch names)."""
    sets = batches.fillna("").astype(str).str.split(";")
    codes = {b: i for i, b in enumerate(sorted(set().union(*sets)))}
    member = np.zeros((len(sets), max(len(codes), 1)), np.float32)
    for i, s in enumerate(sets):
        member[i, [codes[b] for b in s]] = 1
    return (member @ member.T) > 0


def chance(treatments: pd.DataFrame) -> dict[str, float]:
    """What the headline figures would be if each query's neighbours were drawn at random,
    from the labels alone (treatments.csv): ``nsc`` the mean, over NSC queries, of the share
    of its candidates (treatments of other compounds) that share its MOA; ``nscb`` likewise
    among NSCB candidates (other compounds, no shared batch, MOAs spanning one batch left
    out); ``*_per_compound`` averaged per compound first, as the figures are; ``map`` the
    mean over AP queries of :func:`expected_ap` of its candidates. NaN where nothing was
    asked."""
    comp = treatments[COMPOUND].astype(str).to_numpy()
    moa = treatments[MOA].astype(str).to_numpy()
    asked = {k: np.array([f is not None for f in flags(treatments[f"{k}_correct"])])
             if f"{k}_correct" in treatments.columns else np.zeros(len(comp), bool)
             for k in ("nsc", "nscb")}
    ap_asked = treatments["ap"].notna().to_numpy() if "ap" in treatments.columns \
        else np.zeros(len(comp), bool)
    shared = _shared_batches(treatments["batches"]) if asked["nscb"].any() else None
    excluded = np.array([bool(f) for f in flags(treatments["nscb_excluded"])]) \
        if "nscb_excluded" in treatments.columns else np.zeros(len(comp), bool)
    share = {k: np.full(len(comp), np.nan) for k in ("nsc", "nscb", "map")}
    for i in range(len(comp)):
        other = comp != comp[i]
        same = other & (moa == moa[i])
        if asked["nsc"][i] and other.any():
            share["nsc"][i] = same.sum() / other.sum()
        if ap_asked[i]:
            share["map"][i] = expected_ap(other.sum(), same.sum())
        if asked["nscb"][i] and shared is not None:
            eligible = other & ~shared[i] & ~excluded
            if eligible.any():
                share["nscb"][i] = (eligible & (moa == moa[i])).sum() / eligible.sum()
    out: dict[str, float] = {}
    for key, values in share.items():
        ok = np.isfinite(values)
        out[key] = float(values[ok].mean()) if ok.any() else float("nan")
        per = pd.Series(values[ok]).groupby(comp[ok]).mean()
        out[f"{key}_per_compound"] = float(per.mean()) if len(per) else float("nan")
    return out


@dataclass(frozen=True)
class Neighbour:
    treatment: str
    moa: str
    similarity: float
    """The metric's similarity (cosine, correlation; minus the squared distance)."""
    hit: bool


def nearest(profiles: pd.DataFrame, metric: str, k: int) -> dict[str, list[Neighbour]]:
    """Each treatment's ``k`` most similar treatments of other compounds, most similar
    first, ties in table order (so the first is its NSC neighbour); ``hit`` when the
    neighbour shares its MOA."""
    x = profiles[feature_columns(profiles)].to_numpy(np.float64)
    labels = profiles[TREATMENT].astype(str).to_numpy()
    moas = profiles[MOA].astype(str).to_numpy()
    comp = profiles[COMPOUND].astype(str).to_numpy()
    out: dict[str, list[Neighbour]] = {}
    for rows, sim in similarity_blocks(x, metric):
        for r, i in enumerate(range(rows.start, rows.stop)):
            score = np.where(comp != comp[i], sim[r], -np.inf)
            order = [j for j in np.argsort(-score, kind="stable")[:k] if np.isfinite(score[j])]
            out[labels[i]] = [Neighbour(labels[j], moas[j], float(sim[r, j]),
                                        bool(moas[j] == moas[i])) for j in order]
    return out


def profile_map(profiles: pd.DataFrame, metric: str) -> tuple[np.ndarray, tuple[float, float]]:
    """``(N, 2)`` coordinates of the treatment profiles on their first two principal
    components, and the share of the variance each explains. For cosine and correlation the
    profiles are first scaled to unit length (centred first for correlation), as those
    metrics compare them, so dots close on the map are close to NSC."""
    x = profiles[feature_columns(profiles)].to_numpy(np.float64)
    if metric == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    x = x - x.mean(axis=0)
    if len(x) < 2 or not np.any(x):
        return np.zeros((len(x), 2)), (0.0, 0.0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pts = np.zeros((len(x), 2))
    k = min(2, len(s))
    pts[:, :k] = u[:, :k] * s[:k]
    var = s ** 2 / np.sum(s ** 2)
    return pts, (float(var[0]), float(var[1]) if len(var) > 1 else 0.0)
