"""`cellprof embed`: every cell's profile, aligned with the store, resumable, exportable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Stop, stop_after
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats import store
from cellprof.formats.profiles import profile_table, read_profiles
from cellprof.learn.data import scale_crops
from cellprof.learn.embed import EmbedConfig, embed, load_encoder
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.profile.aggregate import export


@pytest.fixture
def trained(tiny_model: tuple[Path, Path]) -> tuple[Path, Path]:
    return tiny_model


def test_profiles_are_posterior_means_aligned_with_the_store(trained, tmp_path: Path) -> None:
    ckpt, crops = trained
    res = embed(ckpt, crops, tmp_path / "p.h5",
                config=EmbedConfig(batch_size=64, logvar=True, precision="fp32", tta="none"))
    meta, feats, names = read_profiles(res.out)
    cells = store.read_cells(crops)
    assert feats.shape == (len(cells), 8) and feats.dtype == np.float32
    assert names[0] == "VAE_000" and len(names) == 8
    pd.testing.assert_frame_equal(meta, cells)
    model, _ = load_encoder(ckpt, torch.device("cpu"))
    x = scale_crops(store.read_crops(crops, slice(5, 9)), "max")
    with torch.no_grad():
        mu = model.encode(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(feats[5:9], mu, rtol=1e-5, atol=1e-5)


def test_interrupted_embedding_resumes(trained, tmp_path: Path) -> None:
    ckpt, crops = trained
    whole = embed(ckpt, crops, tmp_path / "whole.h5", config=EmbedConfig(batch_size=64))

    out = tmp_path / "cut.h5"
    with pytest.raises(Stop):
        embed(ckpt, crops, out, config=EmbedConfig(batch_size=64), progress=stop_after(64))
    assert not out.exists() and (tmp_path / "cut.h5.partial").exists()
    res = embed(ckpt, crops, out, config=EmbedConfig(batch_size=64))
    assert res.resumed_from == 64
    np.testing.assert_array_equal(read_profiles(out)[1], read_profiles(whole.out)[1])


def test_tables_for_pandas_and_pycytominer(trained, tmp_path: Path) -> None:
    ckpt, crops = trained
    res = embed(ckpt, crops, tmp_path / "p.h5")
    cell = pd.read_parquet(export(res.out, tmp_path / "cells.parquet"))
    well = pd.read_csv(export(res.out, tmp_path / "wells.csv", level="well"))
    for table in (cell, well):
        meta = [c for c in table.columns if c.startswith("Metadata_")]
        assert list(table.columns[:len(meta)]) == meta      # Metadata_ first, then features
        assert "VAE_007" in table.columns
    assert len(well) == store.read_cells(crops).groupby(["Metadata_Plate", "Metadata_Well"]).ngroups
    first = well.iloc[0]
    sel = profile_table(res.out)
    sel = sel[(sel["Metadata_Plate"] == first["Metadata_Plate"]) &
              (sel["Metadata_Well"] == first["Metadata_Well"])]
    assert np.isclose(sel["VAE_003"].mean(), first["VAE_003"], atol=1e-5)
    assert first["Metadata_Count"] == len(sel)


def test_wrong_store_or_checkpoint(trained, tmp_path: Path) -> None:
    ckpt, crops = trained
    screen = crops.parent / "screen"
    two = tmp_path / "two.h5"
    crop_screen(screen / "Image.csv", two, objects=screen / "Nuclei.csv",
                config=CropConfig(size=36, channels=("DNA", "Actin")))
    with pytest.raises(CheckpointError, match="trained on channels DNA, Tubulin, Actin at 36 px"):
        embed(ckpt, two, tmp_path / "x.h5")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        embed(tmp_path / "missing.pt", crops, tmp_path / "x.h5")
    with pytest.raises(StoreError):
        embed(ckpt, ckpt, tmp_path / "x.h5")
    embed(ckpt, crops, tmp_path / "y.h5")
    with pytest.raises(InputError, match="exists"):
        embed(ckpt, crops, tmp_path / "y.h5")


def test_cli_embed(trained, tmp_path: Path) -> None:
    ckpt, crops = trained
    out = tmp_path / "p.h5"
    res = CliRunner().invoke(app, ["embed", str(ckpt.parent), str(crops), "--out", str(out),
                                   "--format", "parquet", "--level", "well"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.well.parquet").exists()
    res = CliRunner().invoke(app, ["embed", str(tmp_path), str(crops), "--out",
                                   str(tmp_path / "q.h5")])
    assert res.exit_code == 1 and "model.pt" in res.output


def test_bf16_profiles_agree_with_fp32(trained, tmp_path: Path) -> None:
    """bf16 autocast changes a profile in about its third significant digit, no more: each
    cell's bf16 profile is nearer its own fp32 profile than any other cell's is."""
    ckpt, crops = trained
    exact = read_profiles(embed(ckpt, crops, tmp_path / "fp32.h5",
                                config=EmbedConfig(precision="fp32")).out)[1]
    res = embed(ckpt, crops, tmp_path / "bf16.h5", config=EmbedConfig(precision="bf16",
                                                                        batch_size=64))
    low = read_profiles(res.out)[1]
    assert low.dtype == np.float32 and np.isfinite(low).all()
    scale = np.abs(exact).max()
    assert np.abs(low - exact).max() < 0.02 * scale
    dist = ((low[:, None, :] - exact[None, :, :]) ** 2).sum(-1)
    assert (dist.argmin(1) == np.arange(len(low))).mean() > 0.95
    with pytest.raises(InputError, match="--precision"):
        embed(ckpt, crops, tmp_path / "x.h5", config=EmbedConfig(precision="half"))


def test_checkpoints_from_before_the_crop_scaling_rename_still_embed(trained,
                                                                      tmp_path: Path) -> None:
    """A checkpoint whose data config says "normalization" (the old name of crop_scaling)
    embeds as it did; new profiles record the scaling as crop_scaling."""
    from cellprof.errors import CheckpointError
    from cellprof.formats.checkpoint import load_checkpoint, save_checkpoint
    from cellprof.formats.profiles import profile_attrs
    from cellprof.learn.data import DataConfig

    ckpt, crops = trained
    old = load_checkpoint(ckpt)
    data = dict(old["data_config"])
    data["normalization"] = data.pop("crop_scaling")
    payload = {k: v for k, v in old.items() if k not in ("format", "version", "versions")}
    save_checkpoint(tmp_path / "old.pt", {**payload, "data_config": data})
    new = embed(ckpt, crops, tmp_path / "new.h5", config=EmbedConfig(precision="fp32"))
    was = embed(tmp_path / "old.pt", crops, tmp_path / "old.h5",
                config=EmbedConfig(precision="fp32"))
    np.testing.assert_array_equal(read_profiles(was.out)[1], read_profiles(new.out)[1])
    assert profile_attrs(was.out)["crop_scaling"] == "max"
    assert DataConfig.from_dict({"normalization": "percentile"}).crop_scaling == "percentile"
    with pytest.raises(CheckpointError, match=r"unknown field\(s\) \['scaling'\]"):
        DataConfig.from_dict({"scaling": "max"})


def test_a_checkpoint_without_its_data_config_is_refused_in_one_line(trained,
                                                                     tmp_path: Path) -> None:
    """Embedding reads the crop scaling from data_config: a checkpoint lacking it is damaged,
    and the user is told so by name, not with a KeyError."""
    from cellprof.formats.checkpoint import load_checkpoint, save_checkpoint

    ckpt, crops = trained
    old = load_checkpoint(ckpt)
    payload = {k: v for k, v in old.items()
               if k not in ("format", "version", "versions", "path", "data_config")}
    save_checkpoint(tmp_path / "nodata.pt", payload)
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "nodata.pt"), str(crops),
                                   "--out", str(tmp_path / "p.h5")])
    assert res.exit_code == 1 and not isinstance(res.exception, KeyError)
    assert "nodata.pt: damaged checkpoint, missing data_config" in " ".join(res.output.split())
    assert not (tmp_path / "p.h5").exists()
