"""HDF5 chunks of the crop store encoded and decoded outside HDF5, so many cores share it.

``/crops`` is stored in chunks of 64 cells, each passed through HDF5's byte-shuffle filter and
then deflate (gzip) at level 1. HDF5 runs those filters in the calling thread while holding
h5py's global lock, so reading or writing through h5py uses one core however many threads
ask. Here the same two filters are applied with numpy and ISA-L (or :mod:`zlib`), which
release the GIL, and the bytes pass through ``read_direct_chunk`` / ``write_direct_chunk``:
the file is byte-for-byte what HDF5's own filters would give a reader, so any HDF5 tool
reads it.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

try:  # Intel ISA-L's deflate: the same zlib streams, ~10x zlib's speed to write at level 1
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    _deflate = zlib

LEVEL = 1
"""Deflate level of the store's crops (``compression_opts=1``)."""


def direct_ok(ds: h5py.Dataset) -> bool:
    """True when ``ds`` uses exactly shuffle + gzip, the pipeline these functions implement."""
    return (ds.chunks is not None and ds.compression == "gzip" and bool(ds.shuffle)
            and not ds.fletcher32 and ds.scaleoffset is None)


def encode(chunk: np.ndarray, level: int = LEVEL) -> bytes:
    """A full chunk's bytes as HDF5 stores them: byte-shuffled, then zlib-deflated.

    The deflate stream comes from ISA-L when installed (``isal``): any zlib inflater, HDF5's
    gzip filter included, reads it, and at level 1 it costs a tenth of zlib's time on
    crops, which made compression, not reading images, what ``crop`` spent most on."""
    a = np.ascontiguousarray(chunk)
    size = a.dtype.itemsize
    shuffled = a.view(np.uint8).reshape(-1, size).T.tobytes() if size > 1 else a.tobytes()
    return _deflate.compress(shuffled, level)


def decode(raw: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`encode`: a ``shape`` array of ``dtype``.

    Inflated by ISA-L when installed: any zlib stream (HDF5's own gzip filter's too), at
    2.3x zlib's speed on real crops here (258 against 131 MB/s), which is most of what
    reading a compressed store costs."""
    data = np.frombuffer(_deflate.decompress(raw), dtype=np.uint8)
    size = np.dtype(dtype).itemsize
    if size == 1:
        return data.view(dtype).reshape(shape)
    # Un-shuffle: byte j of every value sits in the j-th plane. One strided write per plane
    # is ~5x faster than numpy's transposed copy of the (size, n) array.
    planes = data.reshape(size, -1)
    out = np.empty(planes.shape[1], dtype=dtype)
    values = out.view(np.uint8).reshape(-1, size)
    for j in range(size):
        values[:, j] = planes[j]
    return out.reshape(shape)


def workers() -> int:
    """Threads to spread chunk (de)compression over: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """One shared thread pool (created on first use; threads idle cost nothing)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="cellprof-chunks")
    return _POOL


def read_chunks(ds: h5py.Dataset, first_cells: Iterable[int]) -> Iterator[np.ndarray]:
    """The chunks starting at cells ``first_cells`` (multiples of the chunk length), each
    cut to the dataset's end, decompressed in parallel; in the order asked."""
    starts = list(first_cells)
    rows = ds.chunks[0]
    if not direct_ok(ds):
        for lo in starts:
            yield ds[lo:lo + rows]
        return
    raws = []
    for lo in starts:
        mask, raw = ds.id.read_direct_chunk((lo,) + (0,) * (ds.ndim - 1))
        raws.append((lo, mask, raw))
    shape, dtype, n = ds.chunks, ds.dtype, ds.shape[0]

    def one(item: tuple[int, int, bytes]) -> np.ndarray:
        # No h5py call on a pool thread: h5py's lock may be held by the caller (iterating
        # a group holds it), and the pool would wait for it forever.
        lo, mask, raw = item
        if mask:  # HDF5 skipped a filter for this chunk: let it decode the chunk itself
            return ds[lo:lo + rows]
        return decode(raw, shape, dtype)[:max(0, min(rows, n - lo))]

    if any(mask for _, mask, _ in raws):
        yield from map(one, raws)  # h5py itself is not to be called from pool threads here
    else:
        yield from pool().map(one, raws)


def read_all(ds: h5py.Dataset, window: int = 64) -> np.ndarray:
    """The whole dataset, its chunks decompressed in parallel ``window`` at a time (so at
    most that many compressed chunks are held besides the result). Reading the store
    into memory through h5py inflates on one core with zlib: 3x slower here."""
    if not direct_ok(ds):
        return ds[()]
    out = np.empty(ds.shape, dtype=ds.dtype)
    rows = ds.chunks[0]
    starts = range(0, ds.shape[0], rows)
    for i in range(0, len(starts), window):
        for lo, chunk in zip(starts[i:i + window], read_chunks(ds, starts[i:i + window]),
                             strict=True):
            out[lo:lo + len(chunk)] = chunk
    return out


def read_rows(ds: h5py.Dataset, rows: slice | np.ndarray | None = None,
              window: int = 64) -> np.ndarray:
    """Rows of a dataset chunked along axis 0 (the crop store's ``/crops``): every reader
    of a store's rows goes through here, so the chunk arithmetic is written once.

    Parameters
    ----------
    ds
        The dataset, e.g. ``/crops`` ``(N, C, H, W)``.
    rows
        None for every row (:func:`read_all`), a slice (step 1: a streamed block), or
        indices in increasing order, repeats allowed (a training group, validation cells),
        or a boolean mask.
    window
        Chunks decompressed at once; at most that many compressed chunks are held besides
        the result.

    Returns
    -------
    numpy.ndarray
        ``(n,) + ds.shape[1:]`` of ``ds.dtype``, equal to ``ds[rows]``.

    Each chunk holding a wanted row is read once, whole, and the chunks are decompressed in
    parallel (:func:`read_chunks`): HDF5 would decompress a chunk for every hyperslab that
    touches it, on one core. An uncompressed block is one plain read.
    """
    n = ds.shape[0]
    if rows is None:
        return read_all(ds, window)
    if isinstance(rows, slice):
        lo, hi, step = rows.indices(n)
        if step == 1 and (not direct_ok(ds) or hi <= lo):
            return ds[lo:max(lo, hi)]
        idx = np.arange(lo, hi, step)
    else:
        idx = np.asarray(rows)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64, copy=False)
    if idx.ndim != 1 or (len(idx) and (idx[0] < 0 or idx[-1] >= n)) \
            or np.any(np.diff(idx) < 0):
        raise ValueError(f"rows must be increasing indices in [0, {n}) of {ds.name}")
    if ds.chunks is None:
        return ds[()][idx]
    out = np.empty((len(idx),) + ds.shape[1:], dtype=ds.dtype)
    if not len(idx):
        return out
    size = ds.chunks[0]
    firsts = np.unique(idx // size) * size
    bounds = np.searchsorted(idx, np.r_[firsts, firsts[-1] + size])  # idx of each chunk
    for w in range(0, len(firsts), window):
        for k, chunk in enumerate(read_chunks(ds, firsts[w:w + window].tolist()), start=w):
            a, b = int(bounds[k]), int(bounds[k + 1])
            start = int(idx[a] - firsts[k])
            if idx[b - 1] - idx[a] == b - a - 1:  # a run of rows: a plain copy
                out[a:b] = chunk[start:start + b - a]
            else:
                out[a:b] = chunk[idx[a:b] - firsts[k]]
    return out


def copy_rows(src: h5py.Dataset, dst: h5py.Dataset, n: int) -> None:
    """``dst[:n] = src[:n]`` for two datasets of one layout (chunks, filters, dtype), whole
    chunks copied as stored (no decompressing and compressing again), the rest through
    :func:`read_rows`. Variable-length values (text) are copied as values: their stored
    bytes point into the source file's heap."""
    size = src.chunks[0] if src.chunks else 0
    raw = (size and src.chunks == dst.chunks and src.chunks[1:] == src.shape[1:]
           and src.dtype.kind != "O")
    whole = n // size * size if raw else 0
    for lo in range(0, whole, size):
        offset = (lo,) + (0,) * (src.ndim - 1)
        mask, data = src.id.read_direct_chunk(offset)
        dst.id.write_direct_chunk(offset, data, mask)
    if n > whole:
        dst[whole:n] = read_rows(src, slice(whole, n)) if src.dtype.kind != "O" \
            else src[whole:n]


def write_chunks(ds: h5py.Dataset, first_cell: int, data: np.ndarray) -> None:
    """Write ``data`` from ``first_cell`` (chunk-aligned, the dataset already resized to hold
    it) with the chunks compressed in parallel. Its length is a whole number of chunks,
    unless it ends at the dataset's end: HDF5 stores that edge chunk at full size, so it is
    padded with zeros, which no reader sees."""
    rows = ds.chunks[0]
    end = first_cell + len(data)
    if first_cell % rows or (len(data) % rows and end != ds.shape[0]):
        raise ValueError(f"write_chunks needs whole chunks of {rows} cells at a chunk "
                         f"boundary (or a last one at the dataset's end), got {len(data)} "
                         f"cells at {first_cell} of {ds.shape[0]}")
    if not direct_ok(ds):
        ds[first_cell:end] = data
        return
    level = ds.compression_opts if ds.compression_opts is not None else LEVEL
    pieces = [data[i:i + rows] for i in range(0, len(data), rows)]
    if pieces and len(pieces[-1]) < rows:
        edge = np.zeros((rows,) + data.shape[1:], dtype=data.dtype)
        edge[:len(pieces[-1])] = pieces[-1]
        pieces[-1] = edge
    for i, raw in enumerate(pool().map(lambda c: encode(c, level), pieces)):
        ds.id.write_direct_chunk((first_cell + i * rows,) + (0,) * (ds.ndim - 1), raw)
