"""Mechanism-of-action retrieval on treatment profiles: NSC, NSCB and mAP.

All three rank, for one query treatment, the treatments of *other compounds* by similarity
(another concentration of the same compound would be a trivial match: the vignette of the
0.82 baseline calls not excluding them "cheating"). The similarity matrix is computed in
row blocks of at most ``BLOCK`` entries, so 10,000 treatments need ~70 MB, not 800.

Inputs are treatment tables as :func:`cellprof.profile.match.prepare` makes them: columns
``Metadata_Treatment``, ``Metadata_Compound``, ``Metadata_MOA``, optionally
``Metadata_Batches`` (``;``-joined, needed by NSCB) and ``Metadata_Query`` (False: a
candidate only), and the features (every numeric non-``Metadata_`` column).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.profiles import feature_columns
from cellprof.prepare.tables import COMPOUND, CONCENTRATION, MOA

TREATMENT, BATCHES, QUERY = "Metadata_Treatment", "Metadata_Batches", "Metadata_Query"
BLOCK = 2 ** 23  # similarity entries per block (64 MB of float64)


def _unit(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows scaled so that a dot product is the similarity (cosine / correlation)."""
    if metric == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def similarity_blocks(x: np.ndarray, metric: str) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, S[rows])`` of the ``(N, N)`` similarity matrix of profiles ``x``.

    ``cosine``: ``x_i . x_j / (|x_i| |x_j|)`` (a zero profile is 0-similar to all);
    ``correlation``: Pearson correlation across features, i.e. cosine of row-centred
    profiles; ``euclidean``: minus the squared distance (ranks as the distance does).
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    step = max(1, BLOCK // max(n, 1))
    if metric in ("cosine", "correlation"):
        u = _unit(x, metric)
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            yield rows, u[rows] @ u.T
    elif metric == "euclidean":
        sq = np.einsum("ij,ij->i", x, x)
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            yield rows, 2 * x[rows] @ x.T - sq[rows, None] - sq[None, :]
    else:
        raise InputError(f"--metric must be cosine, correlation or euclidean, got {metric!r}")


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of ranking ``scores`` (higher first) for the items flagged ``positives``.

    ``AP = (1/P) sum over positives p of precision at p``, where precision at p =
    (positives scoring >= s_p) / (items scoring >= s_p). Tied items count as ranked
    together, so the value does not depend on their order; it equals scikit-learn's
    ``average_precision_score(positives, scores)``, and without ties the copairs value.
    NaN when there is no positive.

    >>> average_precision(np.array([0.9, 0.8, 0.7]), np.array([False, True, True]))
    0.5833333333333333
    """
    p = np.sort(scores[positives])
    if p.size == 0:
        return float("nan")
    below = np.searchsorted(p, scores, side="right")  # positives scoring <= each item
    ge_all = np.cumsum(np.bincount(below, minlength=p.size + 1)[::-1])[::-1][1:]
    ge_pos = p.size - np.searchsorted(p, p, side="left")
    return float(np.mean(ge_pos / ge_all))


def single_batch_moas(treatments: pd.DataFrame) -> list[str]:
    """MOAs all of whose treatments lie in one and the same batch (NSCB cannot score them:
    every same-MOA candidate is excluded as same-batch). On BBBC021: Cholesterol-lowering
    (Week9) and Kinase inhibitors (Week7)."""
    if BATCHES not in treatments.columns:
        raise InputError(f"NSCB needs {BATCHES} (plate-name prefixes of each treatment's wells)")
    sets = treatments[BATCHES].astype(str).str.split(";").map(set)
    union = sets.groupby(treatments[MOA].to_numpy()).agg(lambda s: set().union(*s))
    return sorted(m for m, b in union.items() if len(b) == 1)


def retrieve(treatments: pd.DataFrame, metric: str = "cosine", *, nsc: bool = True,
             nscb: bool = True, ap: bool = True) -> pd.DataFrame:
    """One pass over the similarity matrix: NSC and NSCB neighbours and AP per treatment.

    Returns one row per treatment: ``treatment``, compound, concentration, MOA,
    ``batches``, ``n_wells``, ``query``, then as asked ``nsc_neighbour``,
    ``nsc_neighbour_moa``, ``nsc_correct``, ``nscb_excluded`` (MOA in a single batch),
    ``nscb_neighbour``, ``nscb_neighbour_moa``, ``nscb_correct``, ``ap``. Correctness is
    NA (and AP NaN) for non-queries and for queries without an eligible candidate
    (positive). Ties for the nearest neighbour go to the first in table order.
    """
    feats = feature_columns(treatments)
    if not feats:
        raise InputError("treatment profiles have no feature columns")
    n = len(treatments)
    labels = treatments[TREATMENT].to_numpy(object)
    moas = treatments[MOA].to_numpy(object)
    comp = pd.factorize(treatments[COMPOUND])[0]
    moa = pd.factorize(treatments[MOA])[0]
    query = (treatments[QUERY].to_numpy(bool) if QUERY in treatments.columns
             else np.ones(n, bool))
    best = {k: np.full(n, -1) for k in ("nsc", "nscb")}
    aps = np.full(n, np.nan)
    if nscb:
        excluded = treatments[MOA].isin(single_batch_moas(treatments)).to_numpy()
        sets = treatments[BATCHES].astype(str).str.split(";")
        codes = {b: i for i, b in enumerate(sorted(set().union(*sets)))}
        member = np.zeros((n, len(codes)), np.float32)
        for i, s in enumerate(sets):
            member[i, [codes[b] for b in s]] = 1
    for rows, sim in similarity_blocks(treatments[feats].to_numpy(np.float64), metric):
        other = comp[rows, None] != comp[None, :]
        masks = {"nsc": other} if nsc else {}
        if nscb:
            masks["nscb"] = other & ((member[rows] @ member.T) == 0) & ~excluded[None, :]
            masks["nscb"][excluded[rows]] = False
        for key, elig in masks.items():
            j = np.where(elig, sim, -np.inf).argmax(axis=1)
            best[key][rows] = np.where(elig.any(axis=1), j, -1)
        if ap:
            pos = other & (moa[rows, None] == moa[None, :])
            for i in np.flatnonzero(query[rows]):
                aps[rows.start + i] = average_precision(sim[i][other[i]], pos[i][other[i]])
    out = pd.DataFrame({
        "treatment": labels, COMPOUND: treatments[COMPOUND].to_numpy(),
        CONCENTRATION: treatments[CONCENTRATION].to_numpy(), MOA: moas,
        "batches": treatments[BATCHES].to_numpy() if BATCHES in treatments.columns else None,
        "n_wells": treatments["Metadata_Count"].to_numpy()
        if "Metadata_Count" in treatments.columns else 1,
        "query": query})
    for key in [k for k, on in (("nsc", nsc), ("nscb", nscb)) if on]:
        j = best[key]
        found = (j >= 0) & query
        if key == "nscb":
            out["nscb_excluded"] = excluded
        out[f"{key}_neighbour"] = pd.Series(np.where(found, labels[j], None), dtype=object)
        out[f"{key}_neighbour_moa"] = pd.Series(np.where(found, moas[j], None), dtype=object)
        out[f"{key}_correct"] = pd.array(np.where(found, moas[j] == moas, None),
                                         dtype="boolean")
    if ap:
        out["ap"] = aps
    return out


def accuracy(per_treatment: pd.DataFrame, column: str = "nsc_correct") -> tuple[float, float]:
    """Share correct per treatment, and per compound (mean over compounds of the mean
    correctness of its treatments), over rows where ``column`` is not NA."""
    asked = per_treatment[per_treatment[column].notna()]
    if asked.empty:
        return float("nan"), float("nan")
    right = asked[column].astype(float)
    return float(right.mean()), float(right.groupby(asked[COMPOUND]).mean().mean())


def nsc(treatments: pd.DataFrame, metric: str = "cosine") -> pd.DataFrame:
    """Not-same-compound 1-NN: for each query treatment its most similar treatment of
    another compound; ``nsc_correct`` when it has the same MOA (see :func:`retrieve`)."""
    return retrieve(treatments, metric, nscb=False, ap=False)


def nscb(treatments: pd.DataFrame, metric: str = "cosine") -> pd.DataFrame:
    """Not-same-compound-or-batch 1-NN: as :func:`nsc`, also excluding candidates that
    share any batch with the query (batches = plate prefixes of a treatment's wells), and
    without the MOAs of :func:`single_batch_moas` (neither queries nor candidates)."""
    return retrieve(treatments, metric, nsc=False, ap=False)


def mean_average_precision(treatments: pd.DataFrame, metric: str = "cosine"
                           ) -> tuple[float, pd.DataFrame]:
    """mAP of retrieving same-MOA treatments, copairs-style.

    For each query treatment, every treatment of another compound is ranked by similarity;
    positives are those of the query's MOA; AP as in :func:`average_precision` (ties
    ranked together). mAP is the mean AP over queries with at least one positive
    (queries without one are NaN in the returned table, not zeros).
    """
    per = retrieve(treatments, metric, nsc=False, nscb=False)
    value = per.loc[per["query"], "ap"].mean()
    return float(value) if np.isfinite(value) else float("nan"), per


PERMUTATION_WORK = 5 * 10 ** 8
"""Most (labelling x query x candidate) entries the per-MOA permutation test may touch
(about 10 ns each on a busy core, so at most ~5 s); beyond it fewer permutations are drawn:
all 1,000 up to ~700 treatments, 54 at 3,000, 4 at 10,000."""


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """False-discovery-rate q-values of ``p`` (NaN stays NaN)."""
    q = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok])]
        ranked = p[order] * ok.size / np.arange(1, ok.size + 1)
        q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def map_per_moa(treatments: pd.DataFrame, metric: str = "cosine", permutations: int = 1000,
                seed: int = 0) -> tuple[pd.DataFrame, int]:
    """mAP of each MOA with a permutation p-value, in the spirit of copairs.

    An MOA's mAP is the mean AP (as in :func:`mean_average_precision`) of its query
    treatments. Its p-value asks how often a labelling with no relation to the profiles
    scores as high: the MOA labels are shuffled among all treatments ``permutations`` times
    (``numpy.random.default_rng(seed)``; ranks stay, positives move), the MOA's mAP is
    recomputed over the treatments that then carry its label, and
    ``p = (1 + #{null mAP >= observed}) / (1 + permutations)``, so the smallest possible p
    is ``1 / (1 + permutations)``. ``q_value`` is the Benjamini-Hochberg FDR over MOAs.
    The work grows as permutations x treatments^2: beyond :data:`PERMUTATION_WORK` fewer
    permutations are drawn, and the number used is returned.

    Returns the table (``Metadata_MOA``, ``n_queries``, ``n_compounds``, ``map``,
    ``p_value``, ``q_value``; best mAP first) and the number of permutations drawn.
    """
    if permutations < 0:
        raise InputError(f"--permutations must be 0 or more, got {permutations}")
    feats = feature_columns(treatments)
    n = len(treatments)
    permutations = int(min(permutations, max(PERMUTATION_WORK // max(n * n, 1) - 1, 0)))
    comp = pd.factorize(treatments[COMPOUND])[0]
    moa, names = pd.factorize(treatments[MOA])
    query = (treatments[QUERY].to_numpy(bool) if QUERY in treatments.columns
             else np.ones(n, bool))
    query_moa = np.zeros(len(names), bool)
    query_moa[moa[query]] = True  # queries are the treatments of MOAs that have them
    rng = np.random.default_rng(seed)
    labels = np.stack([moa] + [rng.permutation(moa) for _ in range(permutations)]
                      ).astype(np.int16 if len(names) < 2 ** 15 else np.int64)
    sums = np.zeros((len(labels), len(names)))
    counts = np.zeros((len(labels), len(names)))
    every = np.arange(len(labels))
    for rows, sim in similarity_blocks(treatments[feats].to_numpy(np.float64), metric):
        for k, i in enumerate(range(rows.start, rows.stop)):
            cand = np.flatnonzero(comp != comp[i])
            order = np.argsort(-sim[k, cand], kind="stable")
            ranked = -sim[k, cand[order]]  # ascending
            last = np.searchsorted(ranked, ranked, side="right") - 1  # end of each tie group
            pos = labels[:, cand[order]] == labels[:, [i]]
            hits = pos.cumsum(axis=1, dtype=np.int32)  # positives ranked at or above
            if (last != np.arange(len(last))).any():
                hits = hits[:, last]  # ties: positives scoring >= each item
            n_pos = hits[:, -1] if len(last) else np.zeros(len(labels), np.int32)
            ap = np.where(pos, hits, 0) @ (1.0 / (last + 1)) / np.maximum(n_pos, 1)
            own = labels[:, i]
            asked = query_moa[own] & (n_pos > 0)
            np.add.at(sums, (every[asked], own[asked]), ap[asked])
            np.add.at(counts, (every[asked], own[asked]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    observed, null = means[0], means[1:]
    beaten = (null >= observed - 1e-12).sum(axis=0)  # NaN (no query drew the label): not
    p = np.where(np.isfinite(observed) & (permutations > 0),
                 (1 + beaten) / (1 + permutations), np.nan)
    table = pd.DataFrame({
        MOA: names, "n_queries": counts[0].astype(int),
        "n_compounds": [treatments.loc[moa == j, COMPOUND].nunique() for j in range(len(names))],
        "map": observed, "p_value": p, "q_value": _benjamini_hochberg(p)})
    table = table[query_moa].sort_values(["map", MOA], ascending=[False, True])
    return table.reset_index(drop=True), permutations
