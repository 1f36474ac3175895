"""The input pipeline: batches prepared a step ahead on a thread by the one crop transform
(torch, on the device), equal bit for bit to a plain numpy reference written here."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cellprof.formats import chunks, store
from cellprof.learn.data import CropData, DataConfig, RawBatch, as_tensor, model_input
from cellprof.learn.loader import Loader

CPU = torch.device("cpu")
CONFIGS = {
    "memory": DataConfig(),
    "percentile": DataConfig(crop_scaling="percentile"),
    "no-augment": DataConfig(augment=False),
    "streamed": DataConfig(memory_limit_gb=1e-6, group_blocks=1),
}


def numpy_input(raw: np.ndarray, scale: np.ndarray | None = None,
                turns: np.ndarray | None = None, flips: np.ndarray | None = None) -> np.ndarray:
    """Model input the plain numpy way, one crop at a time: scale it (by its own per-channel
    maximum, or ``(x - offset) / divisor`` clipped at 0), then turn and mirror it."""
    out = np.empty(raw.shape, np.float32)
    for i, crop in enumerate(raw.astype(np.float32)):
        if scale is None:
            crop = crop / np.maximum(crop.max(axis=(1, 2), keepdims=True), 1e-12)
        else:
            crop = np.maximum((crop - scale[0, i][:, None, None]) / scale[1, i][:, None, None], 0)
        if turns is not None:
            crop = np.rot90(crop, turns[i], axes=(1, 2))
            crop = crop[..., ::-1] if flips[i] else crop
        out[i] = crop
    return out


def plate_scale(plates: np.ndarray, pct: dict[str, np.ndarray]) -> np.ndarray:
    """(2, N, C): each crop's plate p1, and p99 - p1 (at least 1e-6)."""
    lo = np.stack([pct[str(p)][0] for p in plates])
    hi = np.stack([pct[str(p)][1] for p in plates])
    return np.stack([lo, np.maximum(hi - lo, 1e-6)])


def reference(data: CropData, step: int, batch: int) -> np.ndarray:
    """Step ``step``'s batch (its cells and orientations drawn by ``data``), made by
    :func:`numpy_input`."""
    b = data.raw_batch(step, batch)
    scale = None if data.percentiles is None else plate_scale(data.plates[b.cells],
                                                              data.percentiles)
    return numpy_input(b.crops, scale, b.turns, b.flips)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefetched_batches_equal_the_numpy_reference(synthetic_store: Path, name: str) -> None:
    """Thread-prepared batches, from crops gathered on the host or from a store held on the
    device, are the plain numpy reference's numbers, exactly, as are
    `train_batch`/`disc_batch`; made on the calling thread (ahead=0) they are the same
    again, and a fresh CropData (a resumed run) makes them again."""
    data = CropData(synthetic_store, CONFIGS[name])
    seen = {}
    for ahead, resident in ((1, None), (0, None), (2, True)):  # True: gathered "on device"
        with Loader(data, 8, range(2, 9), CPU, disc=True, ahead=ahead,
                    resident=resident) as batches:
            assert (batches.resident is not None) == (bool(resident) and name != "streamed")
            got = [(s, x.numpy().copy(), xr.numpy().copy()) for s, x, xr in batches]
        assert [s for s, _, _ in got] == list(range(2, 9))
        seen[(ahead, resident)] = got
    fresh = CropData(synthetic_store, CONFIGS[name])  # a new process's view: resume
    for (s, x, xr), (_, x0, xr0), (_, x1, xr1) in zip(*seen.values()):
        np.testing.assert_array_equal(x, reference(fresh, s, 8))
        np.testing.assert_array_equal(xr, reference(fresh, fresh.disc_step(s, 8), 8))
        np.testing.assert_array_equal(x, fresh.train_batch(s, 8))
        np.testing.assert_array_equal(xr, fresh.disc_batch(s, 8))
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(xr, xr0)
        np.testing.assert_array_equal(x, x1)
        np.testing.assert_array_equal(xr, xr1)
        assert x.dtype == np.float32 and x.shape == (8, 3, 36, 36)


def test_the_crop_transform_equals_the_numpy_reference_on_full_range_uint16() -> None:
    """Values above 32,767 survive the int16 transport; max and percentile scaling and all
    eight orientations match the numpy reference to the bit, whether a batch brings its
    crops or takes them from a store held as a tensor, for every store type."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, size=(40, 3, 9, 9)).astype(np.uint16)
    raw[0, 0] = 65535
    turns, flips = rng.integers(0, 4, 40), rng.integers(0, 2, 40).astype(bool)
    assert len(set(zip(turns, flips, strict=True))) == 8  # every symmetry is checked
    t, f = torch.from_numpy(turns), torch.from_numpy(flips)
    want = numpy_input(raw, None, turns, flips)
    np.testing.assert_array_equal(model_input(as_tensor(raw), None, t, f).numpy(), want)
    np.testing.assert_array_equal(model_input(as_tensor(raw)).numpy(), numpy_input(raw))
    np.testing.assert_array_equal(RawBatch(np.arange(40), raw, None, turns, flips)
                                  .model_input().numpy(), want)
    # crops gathered from the whole store, held as one tensor: the same numbers
    store_rows = rng.permutation(60)[:40]
    held = np.zeros((60, 3, 9, 9), np.uint16)
    held[store_rows] = raw
    from_store = RawBatch(store_rows, None, None, turns, flips).model_input(
        source=as_tensor(held))
    np.testing.assert_array_equal(from_store.numpy(), want)
    with pytest.raises(ValueError, match="give the store as source"):
        RawBatch(store_rows, None, None, turns, flips).model_input()
    plates = np.array(["a", "b"] * 20)
    pct = {"a": np.array([[100, 200, 300], [60000, 50000, 40000]], np.float32),
           "b": np.array([[0, 0, 0], [65535, 1000, 1000]], np.float32)}
    scale = plate_scale(plates, pct)
    got = model_input(as_tensor(raw), torch.from_numpy(scale), t, f)
    np.testing.assert_array_equal(got.numpy(), numpy_input(raw, scale, turns, flips))
    for dtype in (np.uint8, np.float32):  # stores of other types take the same path
        small = (raw // 257).astype(dtype)
        np.testing.assert_array_equal(model_input(as_tensor(small), None, t, f).numpy(),
                                      numpy_input(small, None, turns, flips))
    np.testing.assert_array_equal(raw, held[store_rows])  # the input was left as it was
    with pytest.raises(ValueError, match="only square crops"):
        model_input(as_tensor(raw[:, :, :, :5]), None, t, f)


def test_a_loader_error_reaches_the_loop_and_an_early_exit_stops_the_thread(
        synthetic_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = CropData(synthetic_store, DataConfig())
    real = data.raw_batch

    def broken(step: int, batch_size: int, gather: bool = True):
        if step == 4:
            raise OSError("disk gone")
        return real(step, batch_size, gather)

    monkeypatch.setattr(data, "raw_batch", broken)
    batches = Loader(data, 8, range(0, 10), CPU, disc=False)
    with pytest.raises(OSError, match="disk gone"), batches:
        for _ in batches:
            pass
    early = Loader(data, 8, range(0, 1000), CPU, disc=False, ahead=2)
    with early:
        for step, _, _ in early:
            if step == 1:
                break
    assert early._thread is None  # joined, not left running
    assert not [t for t in threading.enumerate() if t.name == "cellprof-loader"]


def test_parallel_chunk_reads_equal_hdf5s_and_files_stay_standard(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 65536, size=(150, 2, 6, 6)).astype(np.uint16)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("crops", data=crops, chunks=(64, 2, 6, 6), compression="gzip",
                              compression_opts=1, shuffle=True)
        got = list(chunks.read_chunks(ds, [128, 0, 64]))
        assert [len(c) for c in got] == [22, 64, 64]  # the last chunk cut at the end
        np.testing.assert_array_equal(np.concatenate([got[1], got[2], got[0]]), crops)
        # our encoding holds the bytes HDF5's own filters wrote, in a standard zlib stream
        ours, hdf5s = chunks.encode(crops[:64]), ds.id.read_direct_chunk((0, 0, 0, 0))[1]
        assert zlib.decompress(ours) == zlib.decompress(hdf5s)


@pytest.mark.parametrize("n", [0, 1, 64, 150])
def test_reading_a_whole_store_in_parallel_equals_hdf5s_read(tmp_path: Path, n: int) -> None:
    """``read_crops`` of a whole store (training's in-memory load) inflates the chunks on
    every core, a few windows at a time: what HDF5 reads, for any length, gzip or none."""
    crops = np.random.default_rng(4).integers(0, 65536, size=(n, 2, 6, 6)).astype(np.uint16)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        gz = f.create_dataset("gzip", data=crops, maxshape=(None, 2, 6, 6), chunks=(64, 2, 6, 6),
                              compression="gzip", compression_opts=1, shuffle=True)
        raw = f.create_dataset("none", data=crops, maxshape=(None, 2, 6, 6),
                               chunks=(64, 2, 6, 6))
        for ds in (gz, raw):
            got = chunks.read_all(ds, window=1)
            assert got.shape == crops.shape and got.dtype == crops.dtype
            np.testing.assert_array_equal(got, ds[()])


def test_streamed_store_reads_through_parallel_chunks(synthetic_store: Path) -> None:
    data = CropData(synthetic_store, DataConfig(memory_limit_gb=1e-6))
    every = store.read_crops(synthetic_store)
    n = data.info.n_cells
    scattered = np.sort(np.random.default_rng(0).choice(n, 70, replace=False))
    whole_and_parts = np.concatenate([np.arange(0, 64), np.arange(70, 120, 3),
                                      np.arange(128, n)])  # whole chunks, runs, a gappy one
    assert n > 128
    for idx in (scattered, whole_and_parts, np.arange(n), np.arange(0)):
        np.testing.assert_array_equal(data._read_sorted(idx), every[idx])


def test_crops_written_by_parallel_chunks_read_as_hdf5_wrote_them(tmp_path: Path) -> None:
    """The crop store's writer compresses every chunk on every core; the file reads as the
    one HDF5 alone would write: same crops, and every chunk inflates to the same bytes
    (edge chunk included, padded as HDF5 pads it)."""
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 4000, size=(400, 3, 8, 8)).astype(np.uint16)
    commits = [10, 100, 70, 3, 64, 128, 25]  # fields arrive in runs of any length
    files = {}
    for how in ("hdf5", "parallel"):
        path = tmp_path / f"{how}.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("crops", shape=(0, 3, 8, 8), maxshape=(None, 3, 8, 8),
                                  dtype=np.uint16, chunks=(64, 3, 8, 8), compression="gzip",
                                  compression_opts=1, shuffle=True)
            n0 = 0
            for n in commits:
                ds.resize((n0 + n, 3, 8, 8))
                if how == "hdf5":
                    ds[n0:n0 + n] = crops[n0:n0 + n]
                else:
                    store.write_crops(ds, n0, crops[n0:n0 + n])
                n0 += n
        files[how] = path
    with h5py.File(files["hdf5"], "r") as a, h5py.File(files["parallel"], "r") as b:
        np.testing.assert_array_equal(a["crops"][:], b["crops"][:])
        np.testing.assert_array_equal(b["crops"][:], crops[:sum(commits)])
        for lo in range(0, sum(commits), 64):
            key = (lo, 0, 0, 0)
            mask_a, raw_a = a["crops"].id.read_direct_chunk(key)
            mask_b, raw_b = b["crops"].id.read_direct_chunk(key)
            assert mask_a == mask_b == 0
            assert zlib.decompress(raw_a) == zlib.decompress(raw_b)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_chunk_decoding_reads_what_hdf5s_filters_wrote_for_every_type(
        tmp_path: Path, dtype: type) -> None:
    values = np.random.default_rng(3).integers(0, 250, size=(64, 2, 5, 5)).astype(dtype)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        ds = f.create_dataset("crops", data=values, chunks=values.shape, compression="gzip",
                              compression_opts=1, shuffle=True)
        _, raw = ds.id.read_direct_chunk((0, 0, 0, 0))
        np.testing.assert_array_equal(chunks.decode(raw, values.shape, ds.dtype), values)


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_every_batch_stays_as_it_was_yielded(synthetic_store: Path, ahead: int) -> None:
    """Each batch is new tensors: a user who keeps every one (no copies) finds them all, at
    the end, equal to batches made afresh, and none shares memory with another."""
    data = CropData(synthetic_store, DataConfig())
    with Loader(data, 8, range(0, 12), CPU, disc=True, ahead=ahead) as batches:
        held = list(batches)
    assert [s for s, _, _ in held] == list(range(12))
    fresh = CropData(synthetic_store, DataConfig())
    for step, x, xr in held:
        np.testing.assert_array_equal(x.numpy(), reference(fresh, step, 8))
        np.testing.assert_array_equal(xr.numpy(), reference(fresh, fresh.disc_step(step, 8), 8))
    pointers = {t.data_ptr() for _, x, xr in held for t in (x, xr)}
    assert len(pointers) == 2 * len(held)


def test_batches_are_made_ahead_on_a_gpu_and_on_the_loop_thread_on_the_cpu(
        synthetic_store: Path) -> None:
    """On the CPU a second thread's OpenMP team slowed the plain VAE's steps by a quarter on
    2 cores for batches that take a millisecond; on a GPU the host would idle without it."""
    from cellprof.learn.loader import CPU_AHEAD

    data = CropData(synthetic_store, DataConfig())
    assert Loader(data, 8, range(0, 2), CPU, disc=False).ahead == CPU_AHEAD == 0
    gpu = Loader(data, 8, range(0, 2), torch.device("cuda"), disc=False, resident=False)
    assert gpu.ahead == 1
