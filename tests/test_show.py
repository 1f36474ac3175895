"""`cellprof show`: reconstructions, typical cells and a control-to-treatment interpolation."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats import store
from cellprof.formats.profiles import read_profiles
from cellprof.learn.embed import EmbedConfig, embed, load_encoder
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.report.show import (
    ShowConfig,
    choose_treatment,
    interpolate_latents,
    show,
    treatment_means,
)


@pytest.fixture(scope="module")
def trained(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, Path, Path]:
    """A tiny screen (DMSO + 16 treatments), its crops, a 3-step model and its profiles."""
    ckpt, crops = tiny_model
    # float32 posterior means, as show encodes: then means from either agree to float rounding
    profiles = embed(ckpt, crops, tmp_path_factory.mktemp("show") / "profiles.h5",
                     config=EmbedConfig(precision="fp32", tta="none")).out
    return ckpt, crops, profiles


def _looks_like_a_figure(path: Path) -> np.ndarray:
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    assert 100 <= img.shape[0] <= 2000 and 200 <= img.shape[1] <= 2000, img.shape
    rgb = img[..., :3]
    assert (rgb.min(axis=2) < 0.9).mean() > 0.05, "mostly white: no crops drawn"
    assert rgb.std() > 0.05, "flat image"
    return img


def test_three_figures_of_a_screen(trained, tmp_path: Path) -> None:
    ckpt, crops, _ = trained
    out = tmp_path / "fig"
    out.mkdir()
    (out / "reconstructions.png").write_bytes(b"left by an earlier run with few treatments")
    res = show(ckpt, crops, out, config=ShowConfig(cells_per_treatment=4))
    cells = store.read_cells(crops)
    assert res.treatments[0] == "DMSO" and len(res.treatments) == 17
    assert set(res.treatments[1:]) == {f"{c}@{x:g}" for c, x in zip(
        cells["Metadata_Compound"], cells["Metadata_Concentration"]) if c != "DMSO"}
    # 17 treatments: pages of the control plus 7 others.
    assert [p.name for p in res.reconstruction_pages] == [
        "reconstructions_01.png", "reconstructions_02.png", "reconstructions_03.png"]
    assert res.reconstructions == out / "reconstructions_01.png"
    assert not (out / "reconstructions.png").exists()  # a stale page would mislead
    for path in (*res.reconstruction_pages, res.typical_cells, res.interpolation):
        _looks_like_a_figure(path)
    # The first page holds 8 pairs of rows (cells over reconstructions); the strip one row.
    assert imread(res.reconstructions).shape[0] > 4 * imread(res.interpolation).shape[0]
    assert not list(out.glob("*.part"))


def test_few_treatments_fit_one_page(trained, tmp_path: Path) -> None:
    ckpt, crops, _ = trained
    screen = crops.parent / "screen"
    images = pd.read_csv(screen / "Image.csv")
    images[images["Metadata_Compound"].isin(["DMSO", "synthB1"])].to_csv(
        tmp_path / "Image.csv", index=False)
    small = tmp_path / "small.h5"
    crop_screen(tmp_path / "Image.csv", small, objects=screen / "Nuclei.csv",
                moa=screen / "moa.csv", config=CropConfig(size=36))
    res = show(ckpt, small, tmp_path / "fig", config=ShowConfig(treatment="synthB1", steps=5))
    assert res.treatments == ["DMSO", "synthB1@0.3", "synthB1@1"]
    assert res.reconstruction_pages == (tmp_path / "fig" / "reconstructions.png",)
    for path in (res.reconstructions, res.typical_cells, res.interpolation):
        _looks_like_a_figure(path)


def test_interpolate_latents_by_hand() -> None:
    z = interpolate_latents(np.array([0.0, 2.0]), np.array([4.0, -2.0]), 3)
    np.testing.assert_array_equal(z, [[0, 2], [2, 0], [4, -2]])
    assert z.dtype == np.float32
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_latents(np.zeros(2), np.ones(2), 1)


def test_interpolation_runs_from_control_mean_to_treatment_mean(trained) -> None:
    ckpt, crops, _ = trained
    means = treatment_means(ckpt, crops)
    target = choose_treatment(means, "DMSO", None)
    z = interpolate_latents(means["DMSO"], means[target], 8)
    np.testing.assert_array_equal(z[0], means["DMSO"])
    np.testing.assert_array_equal(z[-1], means[target])
    model, _ = load_encoder(ckpt, torch.device("cpu"))
    with torch.no_grad():
        frames = model.decode(torch.from_numpy(z)).numpy()
        ends = model.decode(torch.from_numpy(np.stack([means["DMSO"], means[target]]))).numpy()
    np.testing.assert_allclose(frames[0], ends[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frames[-1], ends[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(frames[0], frames[-1])
    # The default target is the treatment farthest from the control in latent space.
    dist = {t: np.linalg.norm(m - means["DMSO"]) for t, m in means.items()}
    assert target == max(dist, key=dist.get)


def test_means_from_profiles_equal_means_from_encoding(trained) -> None:
    ckpt, crops, profiles = trained
    encoded = treatment_means(ckpt, crops)
    read = treatment_means(ckpt, crops, profiles=profiles)
    assert list(encoded) == list(read) and list(read)[0] == "DMSO"
    for t in encoded:
        np.testing.assert_allclose(encoded[t], read[t], rtol=1e-5, atol=1e-6)
    meta, feats, _ = read_profiles(profiles)
    dmso = (meta["Metadata_Compound"] == "DMSO").to_numpy()
    np.testing.assert_allclose(read["DMSO"], feats[dmso].mean(0), rtol=1e-5, atol=1e-6)
    # A cap on the encoded cells draws a seeded sample: same seed, same means.
    capped = [treatment_means(ckpt, crops, config=ShowConfig(mean_cells=3)) for _ in range(2)]
    np.testing.assert_array_equal(capped[0]["DMSO"], capped[1]["DMSO"])
    assert not np.allclose(capped[0]["DMSO"], read["DMSO"])


def test_choose_treatment_by_name() -> None:
    means = {"DMSO": np.zeros(2), "taxol@0.3": np.array([1.0, 0.0]),
             "taxol@1": np.array([0.5, 0.0]), "nocodazole@3": np.array([0.0, 3.0])}
    assert choose_treatment(means, "DMSO", None) == "nocodazole@3"
    assert choose_treatment(means, "DMSO", "taxol") == "taxol@1"  # highest concentration
    assert choose_treatment(means, "DMSO", "taxol@0.30") == "taxol@0.3"
    with pytest.raises(InputError, match=r"'taxol@2'.*available: taxol@0.3, taxol@1"):
        choose_treatment(means, "DMSO", "taxol@2")
    with pytest.raises(InputError, match="aspirin"):
        choose_treatment(means, "DMSO", "aspirin")
    with pytest.raises(InputError, match="is the control"):
        choose_treatment(means, "DMSO", "DMSO")
    with pytest.raises(InputError, match="no treatment"):
        choose_treatment({"DMSO": np.zeros(2)}, "DMSO", None)


def test_errors_name_what_to_fix(trained, tmp_path: Path) -> None:
    ckpt, crops, profiles = trained
    screen = crops.parent / "screen"
    with pytest.raises(InputError, match=r"control 'PBS'.*--control.*DMSO"):
        show(ckpt, crops, tmp_path / "a", config=ShowConfig(control="PBS"))
    with pytest.raises(InputError, match="aspirin.*available"):
        show(ckpt, crops, tmp_path / "b", config=ShowConfig(treatment="aspirin"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    two = tmp_path / "two.h5"
    crop_screen(screen / "Image.csv", two, objects=screen / "Nuclei.csv",
                config=CropConfig(size=36, channels=("DNA", "Actin")))
    with pytest.raises(CheckpointError, match="trained on channels DNA, Tubulin, Actin"):
        show(ckpt, two, tmp_path / "c")

    images = pd.read_csv(screen / "Image.csv")
    bare = images.drop(columns=[c for c in images.columns
                                if c in ("Metadata_Compound", "Metadata_Concentration")])
    bare.to_csv(tmp_path / "Image.csv", index=False)
    nameless = tmp_path / "nameless.h5"
    crop_screen(tmp_path / "Image.csv", nameless, objects=screen / "Nuclei.csv",
                config=CropConfig(size=36))
    # without compounds show draws what needs none (tests/test_pictures.py); means need them
    with pytest.raises(InputError, match="need treatment labels.*Metadata_Compound"):
        treatment_means(ckpt, nameless)

    padded = tmp_path / "padded.h5"  # edge cells kept: another store, more cells
    crop_screen(screen / "Image.csv", padded, objects=screen / "Nuclei.csv",
                moa=screen / "moa.csv", config=CropConfig(size=36, edge="pad"))
    other = embed(ckpt, padded, tmp_path / "other.h5").out
    with pytest.raises(StoreError, match=r"made from .*padded\.h5.*not from .*crops\.h5"):
        show(ckpt, crops, tmp_path / "e", profiles=other)

    later = tmp_path / "later.h5"  # this store, but embedded at another training step
    shutil.copy(profiles, later)
    with h5py.File(later, "a") as f:
        f.attrs["checkpoint_step"] = "99"
    with pytest.raises(StoreError, match=r"step 99.*cannot be decoded"):
        show(ckpt, crops, tmp_path / "f", profiles=later)
    with pytest.raises(StoreError, match="no such crop store"):
        show(ckpt, tmp_path / "missing.h5", tmp_path / "g")


def test_controls_by_query_and_another_compound_column(trained) -> None:
    """--control-query picks the same control cells as --control; --compound-column
    regroups the cells by another column (here the MOA stands in for JUMP's pert_iname)."""
    ckpt, crops, profiles = trained
    by_name = treatment_means(ckpt, crops, profiles=profiles)
    by_query = treatment_means(ckpt, crops, profiles=profiles, config=ShowConfig(
        control_query="Metadata_Compound == 'DMSO'"))
    assert list(by_query) == list(by_name)
    for t in by_name:
        np.testing.assert_array_equal(by_query[t], by_name[t])
    meta, feats, _ = read_profiles(profiles)
    by_moa = treatment_means(ckpt, crops, profiles=profiles, config=ShowConfig(
        compound_column="Metadata_MOA", control_query="Metadata_Compound == 'DMSO'"))
    control = list(by_moa)[0]
    assert control == meta.loc[meta["Metadata_Compound"] == "DMSO", "Metadata_MOA"].iloc[0]
    moa, conc = meta["Metadata_MOA"].iloc[-1], meta["Metadata_Concentration"].iloc[-1]
    same = ((meta["Metadata_MOA"] == moa) & (meta["Metadata_Concentration"] == conc)
            & (meta["Metadata_Compound"] != "DMSO")).to_numpy()
    np.testing.assert_allclose(by_moa[f"{moa}@{conc:g}"], feats[same].mean(0), rtol=1e-5)
    with pytest.raises(InputError, match="--control and --control-query are mutually"):
        ShowConfig(control="DMSO", control_query="Metadata_Compound == 'DMSO'")
    with pytest.raises(InputError, match=r"--control-query .* selects no row"):
        treatment_means(ckpt, crops, profiles=profiles, config=ShowConfig(
            control_query="Metadata_Compound == 'PBS'"))
