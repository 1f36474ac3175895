"""``cellprof combine``: profiles of the same cells joined into one profile of several blocks.

Learned features (``cellprof embed``) and hand-crafted ones (``cellprof measure``) of one
crop store describe the same cells; together they may match mechanisms better than either.
This joins them, block by block, into one profiles file (:mod:`cellprof.formats.profiles`)
that records each feature's block, so ``cellprof match`` weighs the blocks equally
(:mod:`cellprof.profile.blocks`) instead of letting the widest one decide.

Cells are joined on their identity, never on row order: ``Metadata_Plate``, ``ImageNumber``
and ``ObjectNumber`` (and ``TableNumber`` where every input has one; exported tables'
``Metadata_ImageNumber`` … count too). The output keeps the first file's rows in its order.
Files that hold different cells, or a key twice, are refused, and so are ``Metadata_``
columns that say different things of one cell (compound, well …: the files would not
describe the same cells); other columns (``Location_Center_X`` …) are taken from the first
file that has them. A feature name in more than one block (or taken by a metadata column)
gets its block's name as prefix: ``learned_VAE_000``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.profiles import ProfileWriter, is_hdf5, profile_attrs
from cellprof.formats.safeio import fingerprint, refuse_inputs, refuse_repeats
from cellprof.formats.schema import IMAGE_NUMBER, OBJECT_NUMBER, PLATE, TABLE_NUMBER
from cellprof.prepare.tables import whole_numbers
from cellprof.profile.match import feature_names, load_profiles

PROFILE_KIND = "combined"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*$")
_SAY = {PLATE: "plate", TABLE_NUMBER: "table", IMAGE_NUMBER: "image", OBJECT_NUMBER: "object"}
_ROWS = 65536  # rows written per commit


class _Part(NamedTuple):
    """One input: its block name, where it came from, its cells' other columns, features."""

    name: str
    source: str
    cells: pd.DataFrame
    features: pd.DataFrame


@dataclass(frozen=True)
class CombineResult:
    """What :func:`combine_profiles` wrote."""

    out: Path
    n_cells: int
    blocks: dict[str, int]
    """Block name -> its width (features), in file order."""
    keys: list[str]
    """The columns the cells were joined on."""
    prefixed: int
    """Features renamed ``<block>_<name>`` because their name was taken."""


def block_names(paths: Sequence[Path], kinds: Sequence[str | None],
                names: Sequence[str] | None = None) -> list[str]:
    """The block name of each input: ``names`` if given, else the files' profile kinds
    (``learned``, ``hand-crafted``) when they differ, else their file names before the
    first dot (``classic.h5`` -> ``classic``)."""
    if names is None:
        stems = [p.name.split(".")[0] for p in paths]
        names = kinds if None not in kinds and len(set(kinds)) == len(kinds) else stems
        if len(set(names)) < len(names):
            raise InputError(f"combine: inputs {', '.join(map(str, paths))} have no distinct "
                             "names: give each block one with --names (e.g. learned,classic)")
    names = [str(n).strip() for n in names]
    if len(names) != len(paths):
        raise InputError(f"--names gives {len(names)} name(s) for {len(paths)} profiles "
                         "files: one per file, in order")
    if bad := [n for n in names if not _NAME.match(n)]:
        raise InputError(f"--names: {bad[0]!r} is not a block name (letters, digits, '.', "
                         "'_', '-'; it prefixes feature names)")
    if len(set(names)) < len(names):
        raise InputError(f"--names: {', '.join(names)} names a block twice")
    return names


def _part(table: pd.DataFrame, name: str, source: str) -> _Part:
    """A table split into its cells' columns and its features (as ``match`` tells them)."""
    bare = {f"Metadata_{k}": k for k in (TABLE_NUMBER, IMAGE_NUMBER, OBJECT_NUMBER)
            if f"Metadata_{k}" in table.columns and k not in table.columns}
    table = table.rename(columns=bare).reset_index(drop=True)
    features = feature_names(table)
    if not features:
        raise InputError(f"{source}: no feature columns to combine")
    return _Part(name, source, table.drop(columns=features), table[features])


def _key_columns(parts: Sequence[_Part]) -> list[str]:
    """The columns that name a cell: plate, image and object number, and table number
    where every input has one."""
    for part in parts:
        if missing := [k for k in (PLATE, IMAGE_NUMBER, OBJECT_NUMBER)
                       if k not in part.cells.columns]:
            raise InputError(f"{part.source}: no {', '.join(missing)} column to join cells on "
                             f"(a cell is known by {PLATE}, {IMAGE_NUMBER} and {OBJECT_NUMBER}"
                             f", and {TABLE_NUMBER} where present)")
    table = all(TABLE_NUMBER in p.cells.columns for p in parts)
    return [PLATE] + ([TABLE_NUMBER] if table else []) + [IMAGE_NUMBER, OBJECT_NUMBER]


def _say(key: tuple[Any, ...], keys: Sequence[str]) -> str:
    return " ".join(f"{_SAY[k]} {v}" for k, v in zip(keys, key))


def _index(part: _Part, keys: Sequence[str]) -> pd.MultiIndex:
    """Each cell's key, checked: a plate, whole numbers, no key twice."""
    cells = part.cells
    if cells[PLATE].isna().any():
        raise InputError(f"{part.source}, row {int(np.flatnonzero(cells[PLATE].isna())[0]) + 2}"
                         f": {PLATE} is empty")
    columns = {PLATE: cells[PLATE].astype(str)}
    columns.update({k: whole_numbers(cells[k], k, part.source) for k in keys[1:]})
    index = pd.MultiIndex.from_frame(pd.DataFrame(columns))
    if (dup := index.duplicated(keep=False)).any():
        raise InputError(f"{part.source}: {int(dup.sum())} rows share their cell key with "
                         f"another (e.g. {_say(index[dup][0], keys)}): each cell must be one "
                         f"row ({', '.join(keys)}) to be joined")
    return index


def _positions(first: pd.MultiIndex, other: pd.MultiIndex, a: str, b: str,
               keys: Sequence[str]) -> np.ndarray:
    """Where each cell of ``first`` is in ``other``; the files must hold the same cells."""
    pos = other.get_indexer(first)
    lost = pos < 0
    both = int((~lost).sum())
    if lost.any() or both < len(other):
        extra = ~other.isin(first)
        example = f"{_say(first[lost][0], keys)}, only in {a}" if lost.any() else \
            f"{_say(other[extra][0], keys)}, only in {b}"
        raise InputError(f"{b}: not the same cells as {a}: {int(lost.sum())} only in {a}, "
                         f"{len(other) - both} only in {b}, {both} in both (e.g. {example}); "
                         "combine profiles of the same cells (one crop store)")
    return pos


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Whether two columns agree row by row: numbers to 6 digits (float32 beside float64),
    anything else as text, missing values equal to each other and to empty text."""
    numeric = all(pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
                  for s in (a, b))
    if numeric:
        return np.isclose(a.to_numpy(np.float64), b.to_numpy(np.float64), rtol=1e-6, atol=0,
                          equal_nan=True)
    x, y = (s.astype("string").str.strip().fillna("") for s in (a, b))
    return (x == y).to_numpy(bool)


def _agree(cells: pd.DataFrame, other: pd.DataFrame, index: pd.MultiIndex, keys: Sequence[str],
           a: str, b: str) -> None:
    """Refuse metadata that says different things of one cell in two files."""
    for col in other.columns:
        if not str(col).startswith("Metadata_") or col not in cells.columns or col in keys:
            continue
        same = _same(cells[col], other[col])
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise InputError(f"{b}: {col} differs from {a}'s for {int((~same).sum())} of "
                             f"{len(same)} cells (e.g. {_say(index[i], keys)}: "
                             f"{other[col].iloc[i]!r} there, {cells[col].iloc[i]!r} in {a}): "
                             "the files do not describe these cells alike")


def _named(parts: Sequence[_Part], features: Sequence[pd.DataFrame], taken: set[str]
           ) -> tuple[pd.DataFrame, dict[str, list[str]], int]:
    """The blocks' features side by side; a name in several blocks (or a metadata
    column's) prefixed with its block's name. Also how many were prefixed."""
    seen = Counter(str(f) for frame in features for f in frame.columns)
    blocks: dict[str, list[str]] = {}
    for part, frame in zip(parts, features):
        blocks[part.name] = [f"{part.name}_{f}" if seen[str(f)] > 1 or f in taken else str(f)
                             for f in frame.columns]
    names = [f for block in blocks.values() for f in block]
    if clash := [f for f, n in Counter(names).items() if n > 1 or f in taken]:
        raise InputError(f"combine: feature name {clash[0]!r} is still taken after prefixing "
                         "block names: rename the blocks (--names)")
    renamed = sum(f != str(g) for frame, part in zip(features, parts)
                  for f, g in zip(blocks[part.name], frame.columns))
    table = pd.concat([frame.set_axis(blocks[part.name], axis=1)
                       for part, frame in zip(parts, features)], axis=1)
    return table, blocks, renamed


def _join(parts: Sequence[_Part]) -> tuple[pd.DataFrame, dict[str, list[str]], list[str], int]:
    """The parts joined on cell identity, in the first part's row order: (table, blocks,
    key columns, features prefixed)."""
    if len(parts) < 2:
        raise InputError("combine: give two or more profiles of the same cells")
    keys = _key_columns(parts)
    first = parts[0]
    index = _index(first, keys)
    cells, features = first.cells, [first.features]
    for part in parts[1:]:
        pos = _positions(index, _index(part, keys), first.source, part.source, keys)
        other = part.cells.iloc[pos].reset_index(drop=True)
        _agree(cells, other, index, keys, first.source, part.source)
        cells = pd.concat([cells, other[[c for c in other.columns if c not in cells.columns]]],
                          axis=1)
        features.append(part.features.iloc[pos].reset_index(drop=True))
    table, blocks, renamed = _named(parts, features, set(map(str, cells.columns)))
    return pd.concat([cells, table], axis=1), blocks, keys, renamed


def join_profiles(tables: Mapping[str, pd.DataFrame]
                  ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Tables of the same cells (block name -> table, in order) joined on cell identity.

    Returns one table — the first table's rows in its order, every table's non-feature
    columns, then each block's features — and the blocks (name -> its feature columns), to
    pass to :func:`cellprof.profile.match.run_match` (``blocks=``). Refusals as for
    :func:`combine_profiles`.
    """
    table, blocks, _, _ = _join([_part(t, name, f"block {name!r}")
                                 for name, t in tables.items()])
    return table, blocks


def combine_profiles(profiles: Sequence[str | Path], out: str | Path,
                     names: Sequence[str] | None = None, overwrite: bool = False
                     ) -> CombineResult:
    """Join profiles files (or CSV / Parquet tables) of the same cells into the profiles
    file ``out``, each input a block of features (named by ``names``, see
    :func:`block_names`), which ``match`` weighs equally.

    Raises :class:`~cellprof.errors.InputError` for inputs of different cells (with the
    counts only in each and in both), a cell key twice in one input, metadata that differs
    for one cell, or an existing ``out`` (without ``overwrite``).
    """
    paths, out = [Path(p) for p in profiles], Path(out)
    refuse_repeats(paths, "combine")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"--out {out}: a profiles file is HDF5: name it *.h5")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists; pass --overwrite to replace it")
    refuse_inputs(out, paths)  # --overwrite must never replace what it reads
    attrs = [profile_attrs(p) if is_hdf5(p) else {} for p in paths]
    kinds = [a.get("profile_kind") for a in attrs]
    if PROFILE_KIND in kinds:  # its blocks would become one, weighed as one
        raise InputError(f"{paths[kinds.index(PROFILE_KIND)]}: combined already: combine the "
                         "files it was made of together with the others")
    names = block_names(paths, kinds, names)
    parts = [_part(load_profiles(p), n, str(p)) for n, p in zip(names, paths)]
    table, blocks, keys, renamed = _join(parts)
    features = [f for block in blocks.values() for f in block]
    sources = [{"block": n, "path": str(p.resolve()), "profile_kind": k or "table",
                "width": len(blocks[n])} for n, p, k in zip(names, paths, kinds)]
    meta = {"profile_kind": PROFILE_KIND, "sources": sources, "join_keys": keys}
    stores = {a.get("store") for a in attrs}
    if len(stores) == 1 and None not in stores:  # every input from one crop store
        meta["store"] = stores.pop()
    _write(out, table.drop(columns=features), table[features].to_numpy(np.float32), features,
           [n for n, block in blocks.items() for _ in block], meta,
           fingerprint({f"profiles {i}": p for i, p in enumerate(paths)}))
    return CombineResult(out, len(table), {n: len(b) for n, b in blocks.items()}, keys,
                         renamed)


def _write(out: Path, cells: pd.DataFrame, x: np.ndarray, names: list[str],
           feature_blocks: list[str], attrs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """The combined profiles file, written as ``embed`` and ``measure`` write theirs."""
    writer = ProfileWriter(out, cells, names, attrs, logvar=False, inputs=inputs,
                           resume=False, feature_blocks=feature_blocks)
    try:
        for lo in range(0, len(x), _ROWS):
            writer.write(lo, x[lo:lo + _ROWS])
        writer.finish()
    finally:
        writer.close()
