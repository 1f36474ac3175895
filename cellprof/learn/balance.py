"""Treatment-balanced batches: every group of cells drawn equally often, whatever its size.

A screen's cells are far from even across treatments: in BBBC021 three quarters of the
training cells are DMSO or cycloheximide, so batches drawn uniformly over cells spend most of
the model's capacity on two treatments. The reference code's derived loaders draw one cell per
treatment group per batch instead; :class:`BalancedStream` does the same, as a pure function
of the seed and the position in the stream, so a resumed run (and every DDP rank) draws
exactly the cells the uninterrupted run would have:

- The groups are dealt in *rounds*: round ``c`` is a permutation of all ``G`` groups drawn
  from ``(seed, c)``, so stream position ``p`` falls on group ``perm_c[p % G]`` with
  ``c = p // G``. Each round draws every group exactly once, so over any stretch of the
  stream no group is drawn more than once per ``G`` draws (plus one at the edges), and a
  batch of ``B <= G`` cells holds a group at most twice (when it straddles two rounds).
- A group's ``c``-th draw is its cell ``c mod n`` of a permutation of its ``n`` cells drawn
  from ``(seed, group, c // n)``: every cell of a small group is seen before any repeats,
  and a large group's cells are all seen over enough rounds.

Groups are formed from the training cells only (held-out fields stay out), with a missing
value (NaN) as a group of its own, named ``nan``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellprof.errors import InputError

BALANCE_SALT = 104729
"""Mixed into the seeds of the balanced stream, so it shares no draws with the split or the
plain stream's shuffles."""


def balance_columns(cells: pd.DataFrame, names: tuple[str, ...], source: str) -> list[str]:
    """The store's columns for ``names`` (``Compound`` finds ``Metadata_Compound``); an
    :class:`InputError` naming the missing ones and the columns there are."""
    found, missing = [], []
    for name in names:
        for candidate in (name, f"Metadata_{name}"):
            if candidate in cells.columns:
                found.append(candidate)
                break
        else:
            missing.append(name)
    if missing:
        have = ", ".join(c for c in cells.columns if c.startswith("Metadata_")) or "none"
        raise InputError(f"{source}: --balance-by {','.join(missing)}: no such column; the "
                         f"store's metadata columns are {have}")
    return found


def group_codes(cells: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each row's group number and the group names (``value|value``), in name order."""
    key = cells[columns[0]].astype(str)
    for c in columns[1:]:
        key = key + "|" + cells[c].astype(str)
    names, codes = np.unique(key.to_numpy(), return_inverse=True)
    return codes, [str(n) for n in names]


class BalancedStream:
    """Cells drawn evenly across groups (see module docstring).

    Parameters
    ----------
    cells
        Store row of each candidate cell (the training cells), any order.
    codes
        Group number of each of ``cells`` (0..G-1; groups without cells are dropped).
    seed
        The run's seed.
    """

    def __init__(self, cells: np.ndarray, codes: np.ndarray, seed: int) -> None:
        order = np.argsort(cells, kind="stable")
        cells, codes = np.asarray(cells)[order], np.asarray(codes)[order]
        used, codes = np.unique(codes, return_inverse=True)
        self.groups = [cells[codes == g] for g in range(len(used))]
        """Sorted store rows of each group."""
        self.sizes = np.array([len(g) for g in self.groups])
        self.seed = seed
        self._rounds: dict[int, np.ndarray] = {}
        self._passes: dict[tuple[int, int], np.ndarray] = {}

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def _round(self, c: int) -> np.ndarray:
        """The order of the groups in round ``c``."""
        if c not in self._rounds:
            remember(self._rounds, c, np.random.default_rng(
                [self.seed, BALANCE_SALT, c]).permutation(self.n_groups), 4)
        return self._rounds[c]

    def _members(self, g: int, r: int) -> np.ndarray:
        """Group ``g``'s cells in the order of its ``r``-th pass over them."""
        if (g, r) not in self._passes:
            remember(self._passes, (g, r), self.groups[g][np.random.default_rng(
                [self.seed, BALANCE_SALT, g, r]).permutation(self.sizes[g])], 4096)
        return self._passes[(g, r)]

    def group_of(self, positions: np.ndarray) -> np.ndarray:
        """The group drawn at each stream position."""
        c, slot = np.divmod(np.asarray(positions, dtype=np.int64), self.n_groups)
        return np.array([self._round(int(ci))[int(si)] for ci, si in zip(c, slot)], dtype=int)

    def cells(self, start: int, count: int) -> np.ndarray:
        """Store rows at stream positions ``[start, start + count)``."""
        positions = np.arange(start, start + count, dtype=np.int64)
        groups, draws = self.group_of(positions), positions // self.n_groups
        out = np.empty(count, dtype=np.int64)
        for i, (g, k) in enumerate(zip(groups, draws)):
            r, j = divmod(int(k), int(self.sizes[g]))
            out[i] = self._members(int(g), r)[j]
        return out


def remember(cache: dict, key: object, value: object, size: int = 2) -> None:
    """Insert into a small cache, dropping the oldest entries beyond ``size`` (dicts keep
    insertion order); the training stream's caches (:mod:`cellprof.learn.data`) use it too."""
    cache[key] = value
    while len(cache) > size:
        del cache[next(iter(cache))]
