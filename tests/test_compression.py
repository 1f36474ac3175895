"""`crop --compression none`: an uncompressed store holds exactly the crops a gzip one does,
and everything downstream (plain h5py, training batches, merge, resume) takes it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import TinyScreen
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.learn.data import CropData, DataConfig
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.merge import merge_stores


def crop(tiny: TinyScreen, out: Path, compression: str, **kw) -> Path:
    crop_screen(tiny.image_table, out, objects=tiny.objects,
                config=CropConfig(size=16, compression=compression, **kw))
    return out


def test_uncompressed_store_holds_the_same_crops(tiny: TinyScreen, tmp_path: Path) -> None:
    gz = crop(tiny, tmp_path / "gz.h5", "gzip")
    raw = crop(tiny, tmp_path / "raw.h5", "none")
    with h5py.File(raw, "r") as f, h5py.File(gz, "r") as g:
        assert f["crops"].compression is None and not f["crops"].shuffle
        assert g["crops"].compression == "gzip" and g["crops"].shuffle
        np.testing.assert_array_equal(f["crops"][:], g["crops"][:])  # plain h5py reads it
    pd.testing.assert_frame_equal(store.read_cells(raw), store.read_cells(gz))
    assert store.read_info(raw).config["compression"] == "none"
    # training batches, in memory and streamed chunk by chunk, are the gzip store's
    for config in (DataConfig(), DataConfig(memory_limit_gb=1e-6, group_blocks=1)):
        a, b = CropData(raw, config), CropData(gz, config)
        for step in (0, 3):
            np.testing.assert_array_equal(a.train_batch(step, 4), b.train_batch(step, 4))


def test_merge_keeps_uncompressed_shards_uncompressed(tiny: TinyScreen, tmp_path: Path) -> None:
    shards = [crop(tiny, tmp_path / f"{p}.h5", "none", plates=(p,))
              for p in ("Week1_P1", "Week2_P1")]
    mixed = crop(tiny, tmp_path / "gz.h5", "gzip", plates=("Week2_P1",))
    merged = merge_stores(shards, tmp_path / "merged.h5")
    merged_mixed = merge_stores([shards[0], mixed], tmp_path / "mixed.h5")
    with h5py.File(merged, "r") as f, h5py.File(merged_mixed, "r") as g:
        assert f["crops"].compression is None
        assert g["crops"].compression == "gzip"  # one compressed shard: the default
        np.testing.assert_array_equal(f["crops"][:], g["crops"][:])


def test_resume_with_other_compression_starts_over(tiny: TinyScreen, tmp_path: Path) -> None:
    """A partial gzip store is not continued uncompressed (one file, one layout)."""
    out = tmp_path / "c.h5"

    class Stop(Exception):
        pass

    def stop_after_one(stage: str, done: int, total: int) -> None:
        if stage == "crop" and done >= 1:
            raise Stop

    with pytest.raises(Stop):
        crop_screen(tiny.image_table, out, objects=tiny.objects,
                    config=CropConfig(size=16), progress=stop_after_one)
    assert store.partial_path(out).exists()
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects,
                          config=CropConfig(size=16, compression="none"))
    assert summary.resumed_fields == 0 and summary.n_cells == 12
    with h5py.File(out, "r") as f:
        assert f["crops"].compression is None


def test_cli_compression_option(tiny: TinyScreen, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c.h5"
    args = ["crop", str(tiny.image_table), "--objects", str(tiny.objects), "--size", "16",
            "--out", str(out)]
    res = runner.invoke(app, [*args, "--compression", "none"])
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r") as f:
        assert f["crops"].compression is None
    res = runner.invoke(app, [*args, "--compression", "lz4", "--overwrite"])
    assert res.exit_code == 2 and "--compression" in res.output  # refused by the parser
    assert "'gzip'" in res.output and "'none'" in res.output
    with pytest.raises(InputError, match="--compression must be one of gzip, none, got 'zstd'"):
        CropConfig(compression="zstd")


def test_singlecell_import_uncompressed(tmp_path: Path) -> None:
    """`crop --singlecell --compression none`: pre-cut crops stored uncompressed, unchanged."""
    from cellprof.prepare.singlecell import import_singlecell

    folder = tmp_path / "cells"
    for label in ("apo", "meta"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            np.save(folder / label / f"c{i}.npy",
                    np.full((16, 16, 2), 100 * i + len(label), dtype=np.uint16))
    outs = {c: tmp_path / f"{c}.h5" for c in ("gzip", "none")}
    for compression, out in outs.items():
        import_singlecell(folder, None, out, compression=compression)
    with h5py.File(outs["none"], "r") as f, h5py.File(outs["gzip"], "r") as g:
        assert f["crops"].compression is None and g["crops"].compression == "gzip"
        assert f["crops"].shape == (6, 2, 16, 16)
        np.testing.assert_array_equal(f["crops"][:], g["crops"][:])
    with pytest.raises(InputError, match="--compression must be one of gzip, none"):
        import_singlecell(folder, None, tmp_path / "x.h5", compression="lzf")
    assert not list(tmp_path.glob("x.h5*"))  # refused before anything was written
