"""`cellprof measure`: the hand-crafted baseline as a profiles file that `match` takes as is."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import CHANNELS, Stop, stop_after
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError, StoreError
from cellprof.formats import store
from cellprof.formats.profiles import profile_attrs, read_profiles
from cellprof.profile.aggregate import export
from cellprof.profile.classic import classical_features
from cellprof.profile.match import MatchConfig, run_match
from cellprof.profile.measure import MeasureConfig, measure


def chance_nsc(treatments_csv: Path) -> float:
    """NSC of a random neighbour: the share of each query's other-compound candidates that
    share its MOA, averaged over queries."""
    t = pd.read_csv(treatments_csv)
    t = t[t["nsc_correct"].notna()]
    return float(np.mean([(t.loc[t["Metadata_Compound"] != q["Metadata_Compound"],
                                 "Metadata_MOA"] == q["Metadata_MOA"]).mean()
                          for _, q in t.iterrows()]))


@pytest.fixture(scope="module")
def measured(synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return measure(synthetic_store, tmp_path_factory.mktemp("measure") / "classic.h5").out


def test_profiles_are_the_classical_features_of_each_cell(measured: Path,
                                                           synthetic_store: Path) -> None:
    meta, feats, names = read_profiles(measured)
    crops = store.read_crops(synthetic_store)
    expected = classical_features(crops, list(CHANNELS))
    assert names == list(expected.columns) and "AreaShape_Area" in names
    assert "Texture_Contrast_Tubulin" in names and feats.dtype == np.float32
    np.testing.assert_allclose(feats, expected.to_numpy(np.float32), rtol=1e-6)
    pd.testing.assert_frame_equal(meta, store.read_cells(synthetic_store))
    attrs = profile_attrs(measured)
    assert attrs["profile_kind"] == "hand-crafted" and attrs["method"] == "cellprof.profile.classic"


def test_file_opens_with_h5py_and_pandas_with_feature_names(measured: Path,
                                                              tmp_path: Path) -> None:
    with h5py.File(measured) as f:
        names = json.loads(f.attrs["feature_names"])
        assert f["features"].shape == (len(f["cells/Metadata_Plate"]), len(names))
        assert f.attrs["profile_kind"] == "hand-crafted"
    cells = pd.read_parquet(export(measured, tmp_path / "cells.parquet"))
    wells = pd.read_csv(export(measured, tmp_path / "wells.csv", level="well"))
    for table in (cells, wells):
        assert list(table.columns[-len(names):]) == names  # metadata first, then features
    assert len(cells) == 134
    assert len(wells) == cells.groupby(["Metadata_Plate", "Metadata_Well"]).ngroups


def test_measure_then_match_beats_chance(measured: Path, tmp_path: Path) -> None:
    res = run_match(measured, tmp_path / "report", MatchConfig())
    chance = chance_nsc(res.paths["treatments"])
    assert res.n_treatments == 16 and res.metrics["n_features"] > 40
    assert res.nsc > chance + 0.3  # 0.62 against 0.14
    assert res.map > 0.4


def test_interrupted_measure_resumes(synthetic_store: Path, measured: Path,
                                     tmp_path: Path) -> None:
    out = tmp_path / "cut.h5"
    with pytest.raises(Stop):
        measure(synthetic_store, out, config=MeasureConfig(batch_size=64),
                progress=stop_after(64))
    assert not out.exists() and (tmp_path / "cut.h5.partial").exists()
    res = measure(synthetic_store, out, config=MeasureConfig(batch_size=64))
    assert res.resumed_from == 64 and not (tmp_path / "cut.h5.partial").exists()
    np.testing.assert_array_equal(read_profiles(out)[1], read_profiles(measured)[1])


def test_bad_store_existing_output_and_channel(synthetic_store: Path, measured: Path,
                                               tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such crop store"):
        measure(tmp_path / "missing.h5", tmp_path / "a.h5")
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(StoreError, match="notes.h5: not an HDF5 file"):
        measure(tmp_path / "notes.h5", tmp_path / "a.h5")
    with pytest.raises(StoreError, match="not a cellprof crop store"):
        measure(measured, tmp_path / "a.h5")  # a profiles file is no crop store
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        measure(synthetic_store, measured)
    with pytest.raises(InputError, match=r"--nucleus-channel 'Hoechst' .*DNA, Tubulin, Actin"):
        measure(synthetic_store, tmp_path / "a.h5", config=MeasureConfig(
            nucleus_channel="Hoechst"))
    assert not (tmp_path / "a.h5").exists()


def test_nucleus_channel_is_measured_first(synthetic_store: Path, tmp_path: Path) -> None:
    res = measure(synthetic_store, tmp_path / "actin.h5",
                  config=MeasureConfig(nucleus_channel="Actin"))
    _, feats, names = read_profiles(res.out)
    x = store.read_crops(synthetic_store, slice(0, 64))[:, [2, 0, 1]]
    expected = classical_features(x, ["Actin", "DNA", "Tubulin"])
    assert names == list(expected.columns)
    np.testing.assert_allclose(feats[:64], expected.to_numpy(np.float32), rtol=1e-6)


def test_cli_measure_then_match(synthetic_store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "classic.h5"
    res = runner.invoke(app, ["measure", str(synthetic_store), "--out", str(out),
                              "--format", "parquet", "--level", "well"])
    assert res.exit_code == 0, res.output
    assert "measured 134 cells x 80 features" in res.output
    assert "AreaShape_Area" in pd.read_parquet(tmp_path / "classic.well.parquet").columns
    res = runner.invoke(app, ["match", str(out), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["nsc"] > 0.5
    res = runner.invoke(app, ["measure", str(tmp_path / "nope.h5"), "--out",
                              str(tmp_path / "x.h5")])
    assert res.exit_code == 1 and "no such crop store" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["measure", str(synthetic_store), "--out", str(tmp_path / "x.h5"),
                              "--format", "xlsx"])
    assert res.exit_code == 2 and "--format" in res.output and "'parquet'" in res.output


def test_show_says_hand_crafted_profiles_cannot_be_decoded(tiny_model: tuple[Path, Path],
                                                           measured: Path,
                                                           tmp_path: Path) -> None:
    from cellprof.report.show import show

    ckpt, crops = tiny_model
    with pytest.raises(StoreError, match=r"hand-crafted features \(cellprof measure\), not "
                       r"latents.*cellprof embed file or leave out --profiles"):
        show(ckpt, crops, tmp_path / "figs", profiles=measured)


def test_measure_never_writes_over_its_store(synthetic_store: Path, tmp_path: Path) -> None:
    """--out naming the crop store is refused even with --overwrite (the store survives)."""
    copy = tmp_path / "crops.h5"
    copy.write_bytes(synthetic_store.read_bytes())
    with pytest.raises(InputError, match="is the input"):
        measure(copy, copy, overwrite=True)
    assert store.read_info(copy).n_cells == store.read_info(synthetic_store).n_cells
