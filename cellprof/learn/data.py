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
:func:`model_input`, in torch on any device, makes them model input: the one crop transform,
which training runs on its device (:mod:`cellprof.learn.loader`), and validation, ``embed``
and ``show`` run too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cellprof.errors import InputError, StoreError
from cellprof.formats import chunks, store
from cellprof.formats.schema import IMAGE_NUMBER, PLATE, TABLE_NUMBER
from cellprof.learn.balance import BalancedStream, balance_columns, group_codes, remember
from cellprof.learn.config import DataConfig
from cellprof.learn.device import to_device


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


CPU = torch.device("cpu")


def as_tensor(crops: np.ndarray) -> Tensor:
    """Raw crops as a tensor sharing their memory: uint16 travels as int16 bits (every
    torch >= 2.2 copies int16 to a device; :func:`model_input` reads them back as unsigned)."""
    if crops.dtype == np.uint16:
        return torch.from_numpy(crops.view(np.int16))
    return torch.from_numpy(crops)


@functools.lru_cache(maxsize=8)
def _dihedral(size: int, device: torch.device) -> Tensor:
    """(4, 2, size * size) int64: after ``k`` quarter turns, then a mirror when ``f``, the
    source pixel of each pixel of a ``size`` x ``size`` crop. The 8 symmetries of a square
    as 8 permutations, so one gather orients a whole batch, whatever each crop's symmetry."""
    grid = torch.arange(size * size).view(size, size)
    turned = [torch.rot90(grid, k, dims=(0, 1)) for k in range(4)]
    return torch.stack([torch.stack([t, t.flip(-1)]) for t in turned]).flatten(2).to(device)


def model_input(raw: Tensor, scale: Tensor | None = None, turns: Tensor | None = None,
                flips: Tensor | None = None) -> Tensor:
    """``(N, C, H, W)`` raw crops (:func:`as_tensor`) -> float32 model input on their device:
    the one crop transform of training, validation, ``embed`` and ``show``.

    ``scale`` None: each crop and channel divided by its own maximum (``max`` scaling);
    else the ``(2, N, C)`` offset and divisor of :func:`percentile_scale`,
    ``(x - scale[0]) / scale[1]`` clipped at 0 (``percentile``). With ``turns`` and
    ``flips`` (both ``(N,)``), crop i is turned ``turns[i]`` quarter turns (axis 2 towards
    3), then mirrored left-right when ``flips[i]``. Turning only moves pixels and neither
    scaling depends on where they are, so it is done first, on the narrower raw type. No
    value is read back to the host, so on a GPU the CPU never waits for it. The input is
    never changed; the result is always a new tensor.

    Examples
    --------
    >>> raw = as_tensor(np.array([[[[1, 2], [3, 4]]]], np.uint16))
    >>> model_input(raw, turns=torch.tensor([1]), flips=torch.tensor([False]))[0, 0].tolist()
    [[0.5, 1.0], [0.25, 0.75]]
    """
    n, c, h, w = raw.shape
    if turns is not None and flips is not None:
        if h != w:
            raise ValueError(f"only square crops can be turned, got {h} x {w}")
        where = _dihedral(h, raw.device)[turns, flips.long()]  # (N, H * W)
        raw = raw.reshape(n, c, h * w).gather(2, where[:, None].expand(n, c, h * w))
        raw = raw.view(n, c, h, w)
    if raw.dtype == torch.int16:  # uint16 bits (as_tensor): widen, then read as unsigned
        x = raw.to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
    else:
        x = raw.to(torch.float32)
    if scale is None:
        return x / x.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    x = (x - scale[0][:, :, None, None]) / scale[1][:, :, None, None]
    return x.clamp_min_(0.0)


def scale_crops(crops: np.ndarray, method: str, plates: np.ndarray | None = None,
                percentiles: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``(N, C, H, W)`` raw crops -> float32 model input on the CPU, by ``method``
    (:attr:`DataConfig.crop_scaling`: ``max``, or ``percentile`` with each crop's plate and
    :func:`plate_percentiles`): :func:`model_input` for numpy callers, not augmented."""
    if method not in ("max", "percentile"):
        raise ValueError(f"method must be max or percentile, got {method!r}")
    scale = None
    if method == "percentile":
        if plates is None or percentiles is None:
            raise ValueError("percentile scaling needs each crop's plate and the plate table")
        scale = torch.from_numpy(percentile_scale(plates, percentiles))
    return model_input(as_tensor(crops), scale).numpy()


def percentile_scale(plates: np.ndarray, percentiles: dict[str, np.ndarray]) -> np.ndarray:
    """(2, N, C) float32: each crop's offset (its plate's p1) and divisor (p99 - p1, at
    least 1e-6), the numbers :func:`model_input` takes for ``percentile``."""
    lohi = np.stack([percentiles[str(p)] for p in plates], axis=1)
    return np.stack([lohi[0], np.maximum(lohi[1] - lohi[0], 1e-6)])


def draw_orientations(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Quarter turns (0-3) and flips of ``n`` crops, drawn in this order from ``rng``."""
    turns = rng.integers(0, 4, size=n)
    flips = rng.integers(0, 2, size=n).astype(bool)
    return turns, flips


@dataclass(frozen=True)
class RawBatch:
    """One step's crops before they become model input, with what makes them so: a pure
    function of seed, step and rank (:meth:`CropData.raw_batch`)."""

    cells: np.ndarray
    """(N,) store rows."""
    crops: np.ndarray | None
    """(N, C, H, W) raw crops in the store's dtype; None when drawn without them (a store
    held in device memory: the caller gathers them there)."""
    scale: np.ndarray | None
    """(2, N, C) float32 offset and divisor per crop and channel (percentile scaling);
    None for per-crop max scaling."""
    turns: np.ndarray | None
    """(N,) quarter turns, None without augmentation."""
    flips: np.ndarray | None
    """(N,) mirror flags, None without augmentation."""

    def model_input(self, device: torch.device = CPU,
                    source: Tensor | None = None) -> Tensor:
        """The batch as float32 model input on ``device`` (:func:`model_input`): its parts
        copied there (through pinned memory, without blocking, on CUDA), then scaled and
        turned there. A batch drawn without its crops gathers them from ``source``, the
        whole store as one tensor on ``device`` (:func:`as_tensor`)."""
        if self.crops is not None:
            raw = to_device(as_tensor(self.crops), device)
        elif source is not None:
            raw = source[to_device(self.cells, device)]
        else:
            raise ValueError("this batch was drawn without its crops (gather=False): "
                             "give the store as source")
        rest = [None if a is None else to_device(a, device)
                for a in (self.scale, self.turns, self.flips)]
        return model_input(raw, *rest)


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
        self.path, self.config, self.seed = Path(path), config, seed
        self.rank, self.world = rank, world
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
        self.balanced = self._balanced_stream() if config.balance_by else None

    def _balanced_stream(self) -> BalancedStream:
        """The training cells drawn evenly across ``balance_by``'s groups."""
        columns = balance_columns(self.cells, self.config.balance_by, str(self.path))
        codes, self.group_names = group_codes(self.cells.iloc[self.train_idx], columns)
        return BalancedStream(self.train_idx, codes, self.seed)

    @property
    def channels(self) -> tuple[str, ...]:
        return self.info.channels

    def describe(self) -> dict[str, object]:
        """Plain-JSON description for the run's config (what the model was trained on)."""
        return {"store": str(self.path.resolve()), "channels": list(self.channels),
                "crop_size": self.info.crop_size, "n_cells": self.info.n_cells,
                "n_train": len(self.train_idx), "n_val": len(self.val_idx),
                "in_memory": self.in_memory,
                "balance_groups": self.balanced.n_groups if self.balanced else None,
                "plate_percentiles": {k: v.tolist() for k, v in (self.percentiles or {}).items()}}

    # --- the deterministic stream -------------------------------------------------------
    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._epoch_cache:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self._blocks))
            per = len(order) if self.in_memory else max(1, self.config.group_blocks)
            remember(self._epoch_cache, epoch, [
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
        remember(self._group_cache, (epoch, g), group)
        return group

    def _read_sorted(self, idx: np.ndarray) -> np.ndarray:
        """Crops of the sorted cells ``idx``, read by whole chunks, decompressed in
        parallel (:func:`cellprof.formats.chunks.read_rows`)."""
        with h5py.File(self.path, "r") as f:
            return chunks.read_rows(f[store.CROPS], idx)

    def crop_shape(self, n: int) -> tuple[int, int, int, int]:
        """Shape of ``n`` crops of this store."""
        return n, len(self.channels), self.info.crop_size, self.info.crop_size

    def _stream(self, start: int, count: int, gather: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Cells at stream positions [start, start + count): indices and raw crops (None
        when ``gather`` is off and the store is in memory: the caller indexes it)."""
        n = len(self.train_idx)
        gather = gather or self._all is None
        if self.balanced is not None:
            return self._balanced(start, count, gather)
        raw = np.empty(self.crop_shape(count), self.info.dtype) if gather else None
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

    def _balanced(self, start: int, count: int, gather: bool
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`_stream` of a balanced run: its cells are spread over the store, so a
        streamed store reads each batch's chunks (up to one per cell: slower than the plain
        stream's groups of chunks, see docs/training.md)."""
        idx = self.balanced.cells(start, count)
        if not gather:
            return idx, None
        if self._all is not None:
            return idx, self._all[idx]
        want = np.unique(idx)
        return idx, self._read_sorted(want)[np.searchsorted(want, idx)]

    def raw_batch(self, step: int, batch_size: int, gather: bool = True) -> RawBatch:
        """This rank's cells of step ``step``, raw, with what turns them into model input
        (:meth:`RawBatch.model_input`); without their crops when not ``gather`` and the
        store is in memory (the loader then gathers them from its copy on the device)."""
        start = (step * self.world + self.rank) * batch_size
        idx, raw = self._stream(start, batch_size, gather)
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
        """This rank's ``(batch_size, C, H, W)`` float32 batch of step ``step``, as the
        loader delivers it (here as a numpy array, to look at)."""
        return self.raw_batch(step, batch_size).model_input().numpy()

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
