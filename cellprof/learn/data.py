"""Training data from a crop store: split by field, scale, augment, batch.

Two properties drive the design:

- **Bounded memory.** A store that fits in ``memory_limit_gb`` is read once into memory;
  a larger one is streamed in groups of whole HDF5 chunks (reading a single cell from a
  gzip chunk decompresses all 64 of its neighbours, so random single-cell access would
  be ~64x slower than reading chunks).
- **Exact resume.** The cells of step ``s`` are a pure function of ``(seed, s)``: epoch
  ``e`` shuffles chunk-aligned blocks of training cells with ``(seed, e)``, groups them,
  and shuffles within each group with ``(seed, e, group)``; flips and rotations come from
  ``(seed, s, rank)``. A resumed run needs only the step number to continue with exactly
  the batches the uninterrupted run would have seen. In memory there is one group per
  epoch, i.e. a full shuffle.

Under DDP every rank walks the same stream, and rank ``r`` takes its own slice of each
global batch, so the ranks together see each cell once per epoch.

:meth:`CropData.raw_batch` is a step's raw crops with their scaling and orientations;
:meth:`CropData.train_batch` finishes it in numpy, the reference definition. Training
finishes it in torch on its device instead (:mod:`cellprof.learn.loader`), to the same bits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import InitVar, dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cellprof.formats import chunks, store
from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats.schema import IMAGE_NUMBER, PLATE, TABLE_NUMBER

CROP_SCALINGS = ("max", "percentile")


@dataclass(frozen=True)
class DataConfig:
    """How crops become training tensors."""

    crop_scaling: str = "max"
    """How raw intensities become model input. ``max``: each crop divided by its own
    per-channel maximum (the paper's); ``percentile``: per-plate per-channel
    (x - p1) / (p99 - p1) from field statistics. Not called normalisation: that word is
    ``cellprof match``'s, for profiles against control wells."""
    augment: bool = True
    """Random flips and 90-degree rotations (cells have no preferred orientation)."""
    val_fraction: float = 0.1
    """Share of *fields* held out for validation (cells of one field are correlated)."""
    val_max_cells: int = 1024
    """Cap on validation cells, evenly spaced over the held-out fields, to keep checks quick."""
    memory_limit_gb: float = 4.0
    """Load the whole store when its raw crops fit in this much memory; stream otherwise."""
    group_blocks: int = 32
    """Streaming: chunks (of 64 cells) shuffled together; larger = better mixed, more memory."""
    normalization: InitVar[str | None] = None
    """Deprecated name of ``crop_scaling`` (one release): accepted with a warning."""

    def __post_init__(self, normalization: str | None) -> None:
        if normalization is not None:
            warnings.warn("DataConfig(normalization=...) is deprecated: use crop_scaling",
                          DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "crop_scaling", normalization)
        if self.crop_scaling not in CROP_SCALINGS:
            raise InputError(f"--crop-scaling must be one of {', '.join(CROP_SCALINGS)}, "
                             f"got {self.crop_scaling!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """A saved data config (checkpoint, config.json), including those saved before
        ``normalization`` was renamed ``crop_scaling``; unknown fields are refused."""
        d = dict(d)
        if "normalization" in d:  # the old name, in files written before the rename
            d.setdefault("crop_scaling", d.pop("normalization"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"data config has unknown field(s) {unknown}; "
                                  f"expected only {sorted(known)}")
        return cls(**d)


def field_ids(cells: pd.DataFrame) -> np.ndarray:
    """One id per field: plate, table and image number (the CellProfiler keys)."""
    parts = [cells[c].astype(str) for c in (PLATE, TABLE_NUMBER, IMAGE_NUMBER)
             if c in cells.columns]
    key = parts[0]
    for p in parts[1:]:
        key = key + "|" + p
    return key.to_numpy()


def split_by_field(cells: pd.DataFrame, val_fraction: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation cell indices, whole fields on each side."""
    ids = field_ids(cells)
    fields = np.unique(ids)
    n_val = int(np.ceil(val_fraction * len(fields))) if val_fraction > 0 else 0
    if n_val and len(fields) - n_val < 1:
        raise InputError(f"only {len(fields)} field(s): too few to hold some out; "
                         "use --val-fraction 0")
    order = np.random.default_rng([seed, 7919]).permutation(len(fields))
    val_fields = set(fields[order[:n_val]])
    is_val = np.fromiter((i in val_fields for i in ids), dtype=bool, count=len(ids))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def plate_percentiles(path: str | Path, channels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per plate: ``(2, C)`` median over its fields of the 1st and 99th percentiles."""
    fields = store.read_fields(path)
    out = {}
    for plate, g in fields[fields["Status"] == "ok"].groupby(PLATE):
        lo = [g[f"Intensity_Percentile01_{c}"].median() for c in channels]
        hi = [g[f"Intensity_Percentile99_{c}"].median() for c in channels]
        out[str(plate)] = np.array([lo, hi], dtype=np.float32)
    return out


def scale_crops(crops: np.ndarray, method: str, plates: np.ndarray | None = None,
                percentiles: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``(N, C, H, W)`` raw crops -> float32 model input, by ``method``
    (:attr:`DataConfig.crop_scaling`: ``max`` or ``percentile``)."""
    x = crops.astype(np.float32, copy=True)
    if method == "max":
        peak = x.max(axis=(2, 3), keepdims=True)
        x /= np.maximum(peak, 1e-12)
        return x
    if plates is None or percentiles is None:
        raise ValueError("percentile scaling needs each crop's plate and the plate table")
    for plate in np.unique(plates):
        lo, hi = percentiles[str(plate)]
        sel = plates == plate
        x[sel] = (x[sel] - lo[None, :, None, None]) / np.maximum(hi - lo, 1e-6)[None, :, None, None]
    return np.maximum(x, 0.0, out=x)


def percentile_scale(plates: np.ndarray, percentiles: dict[str, np.ndarray]) -> np.ndarray:
    """(2, N, C) float32: each crop's offset (its plate's p1) and divisor (p99 - p1, at
    least 1e-6), the numbers :func:`scale_crops` uses for ``percentile``."""
    lohi = np.stack([percentiles[str(p)] for p in plates], axis=1)
    return np.stack([lohi[0], np.maximum(lohi[1] - lohi[0], 1e-6)])


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip and quarter turn per crop (the 8 symmetries of a square)."""
    turns, flips = draw_orientations(rng, len(x))
    return orient(x, turns, flips)


def draw_orientations(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Quarter turns (0-3) and flips of ``n`` crops, drawn in this order from ``rng``."""
    turns = rng.integers(0, 4, size=n)
    flips = rng.integers(0, 2, size=n).astype(bool)
    return turns, flips


def orient(x: np.ndarray, turns: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Crop i turned ``turns[i]`` quarter turns (axis 2 towards 3), then mirrored left-right
    when ``flips[i]``."""
    out = np.empty_like(x)
    for kk in range(4):
        for ff in (False, True):
            sel = (turns == kk) & (flips == ff)
            if sel.any():
                y = np.rot90(x[sel], kk, axes=(2, 3))
                out[sel] = y[..., ::-1] if ff else y
    return out


@dataclass(frozen=True)
class RawBatch:
    """One step's crops before they become model input: what the loader hands to the device,
    which scales and orients them there (:func:`cellprof.learn.loader.model_input`)."""

    cells: np.ndarray
    """(N,) store rows."""
    crops: np.ndarray | None
    """(N, C, H, W) raw crops in the store's dtype; None when the caller gathers them
    itself (a store held in device memory)."""
    scale: np.ndarray | None
    """(2, N, C) float32 offset and divisor per crop and channel (percentile scaling);
    None for per-crop max scaling."""
    turns: np.ndarray | None
    """(N,) quarter turns, None without augmentation."""
    flips: np.ndarray | None
    """(N,) mirror flags, None without augmentation."""

    def model_input(self, out: np.ndarray | None = None,
                    source: np.ndarray | None = None) -> np.ndarray:
        """The batch as float32 model input on the CPU, in one pass over its pixels (into
        ``out``, a float32 array of the crops' shape, when given).

        The same numbers as :func:`scale_crops` then :func:`orient` (and as the device path,
        :func:`cellprof.learn.loader.model_input`), about 2x faster: each crop is turned while it is
        cast to float32 (a quarter turn is a strided view), and the per-crop maximum, which
        no turn changes, is taken after (float32 holds every uint16 exactly). A batch drawn
        without its crops takes them from ``source``, the whole store in memory, in that same
        pass: gathering them into an array first cost another third.
        """
        raw = self.crops
        if raw is None and source is None:
            raise ValueError("this batch was drawn without its crops (gather=False): "
                             "give the store as source")

        def rows(sel: np.ndarray | slice) -> np.ndarray:
            return raw[sel] if raw is not None else source[self.cells[sel]]

        shape = (len(self.cells),) + (raw if raw is not None else source).shape[1:]
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
        if self.turns is None or self.flips is None:
            out[...] = rows(slice(None))
        else:
            for k in range(4):
                for f in (False, True):
                    idx = np.flatnonzero((self.turns == k) & (self.flips == f))
                    if len(idx):
                        y = np.rot90(rows(idx), k, axes=(2, 3))
                        out[idx] = y[..., ::-1] if f else y
        if self.scale is None:
            out /= np.maximum(out.max(axis=(2, 3), keepdims=True), 1e-12)
            return out
        out -= self.scale[0][:, :, None, None]
        out /= self.scale[1][:, :, None, None]
        return np.maximum(out, 0.0, out=out)


class CropData:
    """Training and validation batches from one crop store (see module docstring).

    Parameters
    ----------
    path
        A complete crop store.
    config
        :class:`DataConfig`.
    seed
        Seeds the split, the order and the augmentation.
    rank, world
        This process's rank and the number of processes (DDP); 0 and 1 otherwise.
    """

    def __init__(self, path: str | Path, config: DataConfig = DataConfig(), *, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.path, self.config, self.seed, self.rank, self.world = Path(path), config, seed, rank, world
        self.info = store.read_info(path)
        self.cells = store.read_cells(path)
        if self.info.n_cells < 2:
            raise StoreError(f"{path}: holds {self.info.n_cells} cell(s); training needs more")
        self.train_idx, self.val_idx = split_by_field(self.cells, config.val_fraction, seed)
        if len(self.train_idx) < 2:
            raise StoreError(f"{path}: only {len(self.train_idx)} training cell(s) after "
                             "holding out validation fields")
        self.plates = self.cells[PLATE].astype(str).to_numpy()
        self.percentiles = plate_percentiles(path, self.info.channels) \
            if config.crop_scaling == "percentile" else None
        shape = (self.info.n_cells, len(self.info.channels), self.info.crop_size,
                 self.info.crop_size)
        nbytes = int(np.prod(shape)) * self.info.dtype.itemsize
        self.in_memory = nbytes <= config.memory_limit_gb * 2**30
        self._all = store.read_crops(path) if self.in_memory else None
        # Each step reads two places of the stream (its batch, and the discriminator's half
        # an epoch ahead), so the caches hold two entries: one would be evicted every call.
        self._epoch_cache: dict[int, list[np.ndarray]] = {}
        self._group_cache: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        blocks = self.train_idx // store.CHUNK_CELLS
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        self._blocks = np.split(self.train_idx, starts[1:])  # train cells of each chunk

    @property
    def channels(self) -> tuple[str, ...]:
        return self.info.channels

    def describe(self) -> dict[str, object]:
        """Plain-JSON description for the run's config (what the model was trained on)."""
        return {"store": str(self.path.resolve()), "channels": list(self.channels),
                "crop_size": self.info.crop_size, "n_cells": self.info.n_cells,
                "n_train": len(self.train_idx), "n_val": len(self.val_idx),
                "in_memory": self.in_memory,
                "plate_percentiles": {k: v.tolist() for k, v in (self.percentiles or {}).items()}}

    # --- the deterministic stream -------------------------------------------------------
    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._epoch_cache:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self._blocks))
            per = len(order) if self.in_memory else max(1, self.config.group_blocks)
            _remember(self._epoch_cache, epoch, [
                np.concatenate([self._blocks[b] for b in order[i:i + per]])
                for i in range(0, len(order), per)])
        return self._epoch_cache[epoch]

    def _group(self, epoch: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Group g of an epoch: its cells in shuffled order, an array holding their crops,
        and each cell's position in that array (the whole store in memory, else the
        group's chunks just read)."""
        if (epoch, g) in self._group_cache:
            return self._group_cache[(epoch, g)]
        cells = self._epoch_groups(epoch)[g]
        cells = cells[np.random.default_rng([self.seed, epoch, g]).permutation(len(cells))]
        if self._all is not None:
            group = (cells, self._all, cells)
        else:
            want = np.sort(cells)
            group = (cells, self._read_sorted(want), np.searchsorted(want, cells))
        _remember(self._group_cache, (epoch, g), group)
        return group

    def _read_sorted(self, idx: np.ndarray) -> np.ndarray:
        """Crops of the sorted cells ``idx``, read by whole chunks, decompressed in
        parallel (:mod:`cellprof.formats.chunks`)."""
        with h5py.File(self.path, "r") as f:
            ds = f[store.CROPS]
            out = np.empty((len(idx),) + ds.shape[1:], dtype=ds.dtype)
            blocks = idx // store.CHUNK_CELLS
            wanted = np.unique(blocks)
            for b, chunk in zip(wanted, chunks.read_chunks(
                    ds, (int(b) * store.CHUNK_CELLS for b in wanted))):
                sel = blocks == b
                out[sel] = chunk[idx[sel] - int(b) * store.CHUNK_CELLS]
        return out

    def crop_shape(self, n: int) -> tuple[int, int, int, int]:
        """Shape of ``n`` crops of this store."""
        return n, len(self.channels), self.info.crop_size, self.info.crop_size

    def _stream(self, start: int, count: int, gather: bool = True,
                out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Cells at stream positions [start, start + count): indices and raw crops (None
        when ``gather`` is off and the store is in memory: the caller indexes it),
        gathered into ``out`` when given."""
        n = len(self.train_idx)
        gather = gather or self._all is None
        raw = None
        if gather:
            raw = np.empty(self.crop_shape(count), self.info.dtype) if out is None else out
            if raw.shape != self.crop_shape(count) or raw.dtype != self.info.dtype:
                raise ValueError(f"out must be {self.info.dtype} {self.crop_shape(count)}, "
                                 f"got {raw.dtype} {raw.shape}")
        idx_parts = []
        pos, done = start, 0
        while done < count:
            epoch, offset = divmod(pos, n)
            groups = self._epoch_groups(epoch)
            sizes = np.cumsum([0] + [len(g) for g in groups])
            g = int(np.searchsorted(sizes, offset, side="right") - 1)
            cells, source, where = self._group(epoch, g)
            lo = int(offset - sizes[g])
            take = min(count - done, len(cells) - lo)
            idx_parts.append(cells[lo:lo + take])
            if raw is not None:  # gathered straight into the batch: one copy, not two
                np.take(source, where[lo:lo + take], axis=0, out=raw[done:done + take])
            pos += take
            done += take
        return np.concatenate(idx_parts), raw

    def raw_batch(self, step: int, batch_size: int, gather: bool = True,
                  out: np.ndarray | None = None) -> RawBatch:
        """This rank's cells of step ``step``, raw, with what turns them into model input
        (the crops gathered into ``out`` when given).

        ``train_batch`` is this batch scaled and oriented on the CPU; the training loop
        does the same on its device (:mod:`cellprof.learn.loader`), with the same result.
        """
        start = (step * self.world + self.rank) * batch_size
        idx, raw = self._stream(start, batch_size, gather, out)
        turns = flips = None
        if self.config.augment:
            turns, flips = draw_orientations(
                np.random.default_rng([self.seed, step, self.rank, 1]), len(idx))
        return RawBatch(idx, raw, self.scale(idx), turns, flips)

    def scale(self, idx: np.ndarray) -> np.ndarray | None:
        """(2, N, C) percentile offset and divisor of cells ``idx``; None for ``max``."""
        if self.percentiles is None:
            return None
        return percentile_scale(self.plates[idx], self.percentiles)

    def train_batch(self, step: int, batch_size: int) -> np.ndarray:
        """This rank's ``(batch_size, C, H, W)`` float32 batch of step ``step``."""
        return self.raw_batch(step, batch_size).model_input()

    def disc_step(self, step: int, batch_size: int) -> int:
        """The stream step whose batch is the discriminator's real crops at ``step``."""
        return step + max(1, len(self.train_idx) // (2 * batch_size * self.world))

    def disc_batch(self, step: int, batch_size: int) -> np.ndarray:
        """An independent batch of real crops for the discriminator (the reference draws a
        second batch each step); taken from the stream half an epoch ahead."""
        return self.train_batch(self.disc_step(step, batch_size), batch_size)

    def scaled(self, idx: np.ndarray) -> np.ndarray:
        """Model input for the cells ``idx`` (sorted), without augmentation."""
        raw = self._all[idx] if self._all is not None else self._read_sorted(idx)
        return scale_crops(raw, self.config.crop_scaling, self.plates[idx], self.percentiles)

    def val_indices(self) -> np.ndarray:
        idx = self.val_idx
        if len(idx) > self.config.val_max_cells:
            idx = idx[np.linspace(0, len(idx) - 1, self.config.val_max_cells).astype(int)]
        return idx

    def val_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Validation crops, scaled, not augmented, in store order."""
        idx = self.val_indices()
        for i in range(0, len(idx), batch_size):
            yield self.scaled(idx[i:i + batch_size])


def _remember(cache: dict, key: object, value: object, size: int = 2) -> None:
    """Insert into a small cache, dropping the oldest entries beyond ``size``."""
    cache[key] = value
    while len(cache) > size:
        del cache[next(iter(cache))]
