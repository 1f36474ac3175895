"""The input pipeline: batches prepared ahead on a thread, finished in torch on the device,
equal to the reference numpy batches bit for bit."""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cellprof.formats import chunks, store
from cellprof.learn.data import CropData, DataConfig, RawBatch, orient, scale_crops
from cellprof.learn.loader import Loader, as_tensor, model_input, orientation_groups

CPU = torch.device("cpu")
CONFIGS = {
    "memory": DataConfig(),
    "percentile": DataConfig(crop_scaling="percentile"),
    "no-augment": DataConfig(augment=False),
    "streamed": DataConfig(memory_limit_gb=1e-6, group_blocks=1),
}


def reference(data: CropData, step: int, batch: int) -> np.ndarray:
    """The batch computed the plain way: normalise all crops, then orient them."""
    b = data.raw_batch(step, batch)
    x = scale_crops(b.crops, data.config.crop_scaling, data.plates[b.cells], data.percentiles)
    return x if b.turns is None else orient(x, b.turns, b.flips)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefetched_batches_equal_the_numpy_reference(synthetic_store: Path, name: str) -> None:
    """Thread-prepared batches, finished in numpy on the thread (CPU device) or in torch
    (a store held on the device), are the plain normalise-then-orient numbers, exactly, as
    are `train_batch`/`disc_batch`; drawn on the calling thread (ahead=0) they are the same
    again."""
    data = CropData(synthetic_store, CONFIGS[name])
    seen = {}
    # ahead 1 reuses its ring of 4 CPU buffers twice over the 7 steps
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


def test_device_transform_equals_numpy_on_full_range_uint16() -> None:
    """Values above 32,767 survive the int16 transport; max and percentile scaling and the
    eight orientations match numpy's to the bit, on the device path and the CPU's one-pass
    path alike."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, size=(40, 3, 9, 9)).astype(np.uint16)
    raw[0, 0] = 65535
    turns, flips = rng.integers(0, 4, 40), rng.integers(0, 2, 40).astype(bool)
    got = model_input(as_tensor(raw), None, orientation_groups(turns, flips))
    want = orient(scale_crops(raw, "max"), turns, flips)
    np.testing.assert_array_equal(got.numpy(), want)
    one_pass = RawBatch(np.arange(40), raw, None, turns, flips).model_input()
    np.testing.assert_array_equal(one_pass, want)
    # crops gathered from the store in memory while they are finished: the same numbers
    store_rows = rng.permutation(60)[:40]
    held = np.zeros((60, 3, 9, 9), np.uint16)
    held[store_rows] = raw
    from_store = RawBatch(store_rows, None, None, turns, flips).model_input(source=held)
    np.testing.assert_array_equal(from_store, want)
    with pytest.raises(ValueError, match="give the store as source"):
        RawBatch(store_rows, None, None, turns, flips).model_input()
    plates = np.array(["a", "b"] * 20)
    pct = {"a": np.array([[100, 200, 300], [60000, 50000, 40000]], np.float32),
           "b": np.array([[0, 0, 0], [65535, 1000, 1000]], np.float32)}
    lohi = np.stack([pct[p] for p in plates], axis=1)
    scale = np.stack([lohi[0], np.maximum(lohi[1] - lohi[0], 1e-6)])
    got = model_input(as_tensor(raw), torch.from_numpy(scale), None)
    np.testing.assert_array_equal(got.numpy(), scale_crops(raw, "percentile", plates, pct))
    want = orient(scale_crops(raw, "percentile", plates, pct), turns, flips)
    np.testing.assert_array_equal(RawBatch(np.arange(40), raw, scale, turns, flips)
                                  .model_input(), want)
    for dtype in (np.uint8, np.float32):  # stores of other types take the same path
        small = (raw // 257).astype(dtype)
        np.testing.assert_array_equal(RawBatch(np.arange(40), small, None, turns, flips)
                                      .model_input(), orient(scale_crops(small, "max"), turns, flips))
    assert len(orientation_groups(turns, flips)) == 8  # every symmetry was checked


def test_a_loader_error_reaches_the_loop_and_an_early_exit_stops_the_thread(
        synthetic_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = CropData(synthetic_store, DataConfig())
    real = data.raw_batch

    def broken(step: int, batch_size: int, gather: bool = True, out=None):
        if step == 4:
            raise OSError("disk gone")
        return real(step, batch_size, gather, out)

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


def test_a_cpu_batch_stays_intact_while_two_more_steps_are_taken(synthetic_store: Path) -> None:
    """CPU batches live in a ring of reused buffers; the contract (the Loader's docstring)
    is that a batch stays intact while the two steps after it are taken."""
    data = CropData(synthetic_store, DataConfig())
    ahead, held = 1, []  # the smallest ring that queues anything: 5 buffers
    with Loader(data, 8, range(0, 12), CPU, disc=True, ahead=ahead) as batches:
        for step, x, xr in batches:
            held.append((step, x, xr))  # no copies
            for s, x_old, xr_old in held[-3:]:
                np.testing.assert_array_equal(x_old.numpy(), reference(data, s, 8))
                np.testing.assert_array_equal(xr_old.numpy(),
                                              reference(data, data.disc_step(s, 8), 8))
