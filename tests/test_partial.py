"""The house's on-disk machinery: one resumable partial-file writer, one reader of a store's
rows, durable renames.

A crop store and a profiles file are both written as ``<out>.partial`` by
:class:`cellprof.formats.partial.PartialFile`; a torn or half-written partial file of either
is rebuilt or started over, and the finished file equals an uninterrupted run's. Every read
of ``/crops`` rows is :func:`cellprof.formats.chunks.read_rows`. Finished files are synced
before their rename and their folder after it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import Stop, TinyScreen, stop_after

from cellprof.formats import chunks, store
from cellprof.formats.partial import PartialFile
from cellprof.formats.profiles import ProfileWriter, profile_attrs, read_profiles
from cellprof.formats.safeio import atomic_path, partial_path, write_json
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.merge import merge_stores
from cellprof.profile.measure import MeasureConfig, measure

# --- one reader of a store's rows ----------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_read_rows_equals_hdf5s_read(tmp_path: Path, compression: str) -> None:
    """Any slice, index run, scattered or repeated indices, mask or the whole: what HDF5
    reads, from a compressed or an uncompressed store."""
    crops = np.random.default_rng(5).integers(0, 65536, (150, 2, 5, 5)).astype(np.uint16)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("crops", data=crops, maxshape=(None, 2, 5, 5),
                              chunks=(64, 2, 5, 5), **store.COMPRESSIONS[compression])
        for rows in (slice(0, 64), slice(5, 9), slice(60, 150), slice(140, 999),
                     slice(10, 10), slice(0, 150, 7), slice(None)):
            np.testing.assert_array_equal(chunks.read_rows(ds, rows), crops[rows])
        for idx in (np.arange(150), np.array([0, 3, 3, 63, 64, 65, 149]), np.arange(0),
                    np.r_[np.arange(64, 128), 140]):
            np.testing.assert_array_equal(chunks.read_rows(ds, idx), crops[idx])
        mask = np.arange(150) % 3 == 0
        np.testing.assert_array_equal(chunks.read_rows(ds, mask), crops[mask])
        np.testing.assert_array_equal(chunks.read_rows(ds), crops)
        np.testing.assert_array_equal(chunks.read_rows(ds, np.arange(150), window=1), crops)
        for bad in (np.array([5, 2]), np.array([150]), np.array([-1, 0])):
            with pytest.raises(ValueError, match="increasing indices in"):
                chunks.read_rows(ds, bad)


def test_store_readers_share_the_one_reader(synthetic_store: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """read_crops, training's streamed groups, embed's blocks and measure's blocks all read
    through ``chunks.read_rows``."""
    from cellprof.learn.data import CropData, DataConfig
    from cellprof.learn.embed import _read_block

    calls: list[object] = []
    real = chunks.read_rows

    def spy(ds: h5py.Dataset, rows: object = None, window: int = 64) -> np.ndarray:
        calls.append(rows)
        return real(ds, rows, window)

    monkeypatch.setattr(chunks, "read_rows", spy)
    every = store.read_crops(synthetic_store)
    assert calls == [None]
    data = CropData(synthetic_store, DataConfig(memory_limit_gb=1e-6))
    np.testing.assert_array_equal(data._read_sorted(np.array([1, 70, 71])), every[[1, 70, 71]])
    with store.open_store(synthetic_store) as f:
        np.testing.assert_array_equal(_read_block(f[store.CROPS], 60, 130), every[60:130])
    assert len(calls) == 3
    measure(synthetic_store, tmp_path / "spy.h5", config=MeasureConfig(batch_size=64))
    assert len(calls) > 3 and all(isinstance(c, slice) for c in calls[3:])


# --- one partial-file writer -----------------------------------------------------------------

NAMES = ["f0", "f1", "f2"]


def _cells(n: int) -> pd.DataFrame:
    return pd.DataFrame({"Metadata_Plate": ["P1"] * n, "ObjectNumber": np.arange(n)})


def _features(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, len(NAMES))).astype(np.float32)


def _write_profiles(path: Path, n: int, stop: int | None = None) -> int:
    """Write ``n`` rows in blocks of 40 (resuming from what a partial file holds), stopping
    without finishing once ``stop`` rows are committed; the row it resumed from."""
    feats = _features(n)
    writer = ProfileWriter(path, _cells(n), NAMES, {"store": "s.h5"}, logvar=True,
                           inputs={"store": {"hash": "abc"}})
    start = writer.n_done
    try:
        for lo in range(start, n, 40):
            if stop is not None and lo >= stop:
                return start
            writer.write(lo, feats[lo:lo + 40], -feats[lo:lo + 40])
        writer.finish()
    finally:
        writer.close()
    return start


def _tear(path: Path, how: str) -> None:
    """Damage a partial profiles file as a kill can: rows written past ``n_done`` and never
    committed, the file cut short, or its heap and chunk index overwritten."""
    if how == "rows past n_done":
        with h5py.File(path, "a") as f:
            f["features"][80:200] = 999.0
            f["logvar"][80:120] = -999.0
        return
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[:len(data) * 2 // 3]))
    else:
        data[2048:len(data) // 2] = b"\xff" * (len(data) // 2 - 2048)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["rows past n_done", "truncated", "torn heap"])
def test_torn_profiles_partial_resumes_to_the_uninterrupted_result(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    whole = tmp_path / "whole.h5"
    _write_profiles(whole, 300)
    out = tmp_path / "p.h5"
    assert _write_profiles(out, 300, stop=80) == 0
    _tear(partial_path(out), how)
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        resumed_from = _write_profiles(out, 300)
    if how == "rows past n_done":  # the committed rows are kept, the rest redone
        assert resumed_from == 80 and "starting over" not in caplog.text
    else:
        assert resumed_from == 0 and "starting over: the partial file is damaged" in caplog.text
    meta, feats, names = read_profiles(out)
    ref_meta, ref_feats, _ = read_profiles(whole)
    np.testing.assert_array_equal(feats, ref_feats)
    pd.testing.assert_frame_equal(meta, ref_meta)
    with h5py.File(out) as f, h5py.File(whole) as g:
        np.testing.assert_array_equal(f["logvar"][:], g["logvar"][:])
    assert names == NAMES and not partial_path(out).exists()


def test_profiles_resume_needs_the_same_settings(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The key a resume matches is named ``config`` in both formats, and holds every setting
    of the layout: a run without --logvar is not continued with it."""
    out = tmp_path / "p.h5"
    _write_profiles(out, 300, stop=80)
    with h5py.File(partial_path(out)) as f:
        assert "config" in f.attrs and "inputs" in f.attrs and "run_key" not in f.attrs
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        writer = ProfileWriter(out, _cells(300), NAMES, {"store": "s.h5"}, logvar=False,
                               inputs={"store": {"hash": "abc"}})
    try:
        assert writer.n_done == 0
    finally:
        writer.close()
    assert "starting over: it was written with other settings" in caplog.text


def test_a_file_cut_off_while_laid_out_starts_over(tmp_path: Path) -> None:
    """Counts are written after the layout: a partial file without them is never continued."""
    out = tmp_path / "x.h5"

    def half(f: h5py.File) -> None:
        f.create_dataset("rows", shape=(0,), maxshape=(None,), dtype=int)
        f.flush()
        raise KeyboardInterrupt  # a kill here leaves the layout without its counts

    with pytest.raises(KeyboardInterrupt):
        PartialFile(out, format="test", config={}, inputs=None, counts={"rows": "n"},
                    create=half)
    part = PartialFile(out, format="test", config={}, inputs=None, counts={"rows": "n"},
                       create=lambda f: f.create_dataset("rows", shape=(0,), maxshape=(None,),
                                                         dtype=int))
    try:
        assert not part.resumed and "damaged (KeyError" in part.restart_reason
    finally:
        part.close()


def test_measure_resumes_past_uncommitted_rows(synthetic_store: Path, tmp_path: Path) -> None:
    whole = measure(synthetic_store, tmp_path / "whole.h5", config=MeasureConfig(batch_size=64))
    out = tmp_path / "cut.h5"
    with pytest.raises(Stop):
        measure(synthetic_store, out, config=MeasureConfig(batch_size=64),
                progress=stop_after(64))
    with h5py.File(partial_path(out), "a") as f:  # a kill while writing the next block
        f["features"][64:] = np.nan
    res = measure(synthetic_store, out, config=MeasureConfig(batch_size=64))
    assert res.resumed_from == 64
    np.testing.assert_array_equal(read_profiles(out)[1], read_profiles(whole.out)[1])
    assert profile_attrs(out)["profile_kind"] == "hand-crafted"


# --- merge through the writer ----------------------------------------------------------------

def test_merge_writes_every_row_through_commit(tiny: TinyScreen, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """merge's output is its shards one after another (crops, cells, fields, issues,
    illumination) with the counts its commits recorded."""
    shards = []
    for plate in ("Week1_P1", "Week2_P1"):
        shards.append(tmp_path / f"{plate}.h5")
        crop_screen(tiny.image_table, shards[-1], objects=tiny.objects,
                    config=CropConfig(size=16, plates=(plate,), illumination=True))
    commits = []
    real = store.CropStoreWriter.commit

    def counted(self: store.CropStoreWriter) -> None:
        commits.append(sum(len(c) for c in self._queue[store.CROPS]))
        real(self)

    monkeypatch.setattr(store.CropStoreWriter, "commit", counted)
    merged = merge_stores(shards, tmp_path / "merged.h5")
    assert sum(commits) == 12
    np.testing.assert_array_equal(store.read_crops(merged),
                                  np.concatenate([store.read_crops(s) for s in shards]))
    for read in (store.read_cells, store.read_fields, store.read_issues):
        pd.testing.assert_frame_equal(
            read(merged), pd.concat([read(s) for s in shards], ignore_index=True),
            check_dtype=False)
    illum = store.read_illumination(merged)
    assert sorted(illum) == ["Week1_P1", "Week2_P1"]
    for s in shards:
        for plate, a in store.read_illumination(s).items():
            np.testing.assert_array_equal(illum[plate], a)
    with h5py.File(merged) as f:
        assert (f.attrs["n_cells"], f.attrs["n_fields"]) == (12, 4)
        assert f.attrs["n_issues"] == len(store.read_issues(merged))


# --- durable renames -------------------------------------------------------------------------

def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Record ``os.fsync`` (a file's inode, or "dir") and ``os.replace`` calls, in order."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else st.st_ino))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", Path(str(dst)).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _synced_then_renamed(events: list[tuple[str, object]], path: Path) -> bool:
    """The file ``path`` was synced before its rename, and its folder after."""
    i = events.index(("replace", path.name))
    return (("fsync", path.stat().st_ino) in events[:i]
            and ("fsync", "dir") in events[i + 1:])


def test_atomic_outputs_are_synced_before_and_after_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _record_syncs(monkeypatch)
    write_json(tmp_path / "metrics.json", {"nsc": 0.5})
    assert _synced_then_renamed(events, tmp_path / "metrics.json")
    events.clear()
    with atomic_path(tmp_path / "sub" / "t.csv") as tmp:
        tmp.write_text("a\n1\n")
    assert _synced_then_renamed(events, tmp_path / "sub" / "t.csv")
    events.clear()
    out = tmp_path / "p.h5"
    _write_profiles(out, 50)
    assert _synced_then_renamed(events, out)


def test_finished_crop_store_is_synced(tiny: TinyScreen, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events = _record_syncs(monkeypatch)
    out = tmp_path / "crops.h5"
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CropConfig(size=16))
    assert _synced_then_renamed(events, out)


def test_a_folder_that_cannot_be_synced_still_gets_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some platforms refuse to sync a folder: the rename is still done, and no error."""
    real = os.fsync

    def no_dirs(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", no_dirs)
    write_json(tmp_path / "a.json", [1])
    assert (tmp_path / "a.json").read_text() == "[\n  1\n]\n"
