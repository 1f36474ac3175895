"""cellprof combine: profiles of the same cells joined on cell identity into blocks that
match weighs equally (each block's total variance across the treatments made 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats.profiles import ProfileWriter, profile_blocks, read_profiles
from cellprof.profile.blocks import block_weights, check_blocks, weigh_blocks
from cellprof.profile.combine import combine_profiles, join_profiles
from cellprof.profile.match import MatchConfig, prepare, run_match, summary_rows

MOAS = {"A": "X", "B": "X", "C": "Y", "D": "Y", "E": "Z", "F": "Z"}
LEARNED = ["VAE_000", "VAE_001", "VAE_002"]
CLASSIC = ["AreaShape_Area", "Intensity_Mean_DNA", "Texture_Contrast_DNA", "VAE_000"]


# --- the maths, by hand -------------------------------------------------------------------

def frame() -> pd.DataFrame:
    """a: variance 1; b1: mean 1, variance (1+1+1+9)/4 = 3; b2: variance 4."""
    return pd.DataFrame({"a": [1.0, -1.0, 1.0, -1.0], "b1": [0.0, 0.0, 0.0, 4.0],
                         "b2": [2.0, 2.0, -2.0, -2.0]})


def test_two_blocks_of_different_widths_get_equal_total_variance() -> None:
    blocks = {"one": ["a"], "two": ["b1", "b2"]}
    weights = block_weights(frame(), blocks)
    assert weights == pytest.approx({"one": 1.0, "two": 1 / np.sqrt(7)})
    weighted, info = weigh_blocks(frame(), blocks)
    assert weighted["a"].var(ddof=0) == pytest.approx(1)
    assert weighted[["b1", "b2"]].var(ddof=0).sum() == pytest.approx(1)
    assert weighted["b2"].tolist() == pytest.approx([2 / np.sqrt(7)] * 2 + [-2 / np.sqrt(7)] * 2)
    assert [(b["name"], b["width"]) for b in info] == [("one", 1), ("two", 2)]
    assert [b["total_variance"] for b in info] == pytest.approx([1, 7])


def test_a_block_scaled_by_100_gets_a_hundredth_of_the_weight() -> None:
    blocks = {"one": ["a"], "two": ["b1", "b2"]}
    scaled = frame().assign(b1=lambda f: 100 * f["b1"], b2=lambda f: 100 * f["b2"])
    assert block_weights(scaled, blocks)["two"] == pytest.approx(
        block_weights(frame(), blocks)["two"] / 100, rel=1e-12)
    np.testing.assert_allclose(weigh_blocks(scaled, blocks)[0].to_numpy(),
                               weigh_blocks(frame(), blocks)[0].to_numpy(), rtol=1e-12)


def test_a_constant_feature_changes_nothing_and_a_constant_block_is_refused() -> None:
    with_constant = frame().assign(c=5.0)
    blocks = {"one": ["a", "c"], "two": ["b1", "b2"]}
    assert block_weights(with_constant, blocks) == pytest.approx({"one": 1, "two": 7 ** -0.5})
    weighted, _ = weigh_blocks(with_constant, blocks)
    assert weighted["c"].nunique() == 1 and np.isfinite(weighted.to_numpy()).all()
    # 0.1 three times is not exactly constant in floating point: still no spread
    tiny = frame().assign(c=[0.1, 0.1, 0.1, 0.1 + 1e-17])
    with pytest.raises(InputError, match=r"block 'flat' does not vary across the 4 rows"):
        block_weights(tiny, {"flat": ["c"], "one": ["a"]})


def test_blocks_must_cover_the_features_once() -> None:
    check_blocks({"x": ["a"], "y": ["b1", "b2"]}, ["a", "b1", "b2"])
    with pytest.raises(InputError, match=r"1 feature\(s\) belong to no block \(e.g. 'b2'\)"):
        check_blocks({"x": ["a"], "y": ["b1"]}, ["a", "b1", "b2"])
    with pytest.raises(InputError, match=r"'a' is in blocks 'x' and 'y'"):
        check_blocks({"x": ["a"], "y": ["a", "b1", "b2"]}, ["a", "b1", "b2"])
    with pytest.raises(InputError, match=r"block 'y' names 1 column\(s\) that are not features"):
        check_blocks({"x": ["a", "b1", "b2"], "y": ["zz"]}, ["a", "b1", "b2"])


# --- a tiny screen measured twice ---------------------------------------------------------

def cells() -> pd.DataFrame:
    """2 batches x 2 plates; 3 DMSO wells and one per compound (5 cells each) per plate,
    each well one image, objects numbered 1-5 (the features are :func:`features`')."""
    rows = []
    for plate in ["Week1_1", "Week1_2", "Week2_1", "Week2_2"]:
        conc = 1.0 if plate.startswith("Week1") else 2.0
        layout = [("DMSO", 0.0)] * 3 + [(c, conc) for c in MOAS]
        for w, (compound, c) in enumerate(layout):
            for obj in range(1, 6):
                rows.append({"Metadata_Plate": plate, "Metadata_Well": f"W{w:02d}",
                             "Metadata_Site": 1, "Metadata_Compound": compound,
                             "Metadata_Concentration": c,
                             "Metadata_MOA": MOAS.get(compound, "DMSO"),
                             "ImageNumber": w + 1, "ObjectNumber": obj,
                             "Location_Center_X": 10.0 * obj, "Location_Center_Y": 5.0})
    return pd.DataFrame(rows)


def features(meta: pd.DataFrame, width: int, seed: int) -> np.ndarray:
    """(N, width) features: MOA X, Y, Z shift features 0, 1, 2 by 3, plus unit noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (len(meta), width))
    for k, moa in enumerate("XYZ"):
        x[(meta["Metadata_MOA"] == moa).to_numpy(), k % width] += 3
    return x


def write(path: Path, meta: pd.DataFrame, x: np.ndarray, names: list[str], kind: str) -> Path:
    writer = ProfileWriter(path, meta.reset_index(drop=True), names, {"profile_kind": kind},
                           logvar=False)
    writer.write(0, x.astype(np.float32))
    writer.finish()
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """learned.h5 (3 features) and classic.h5 (4, one named as a learned one) of one screen."""
    meta = cells()
    return (write(tmp_path / "learned.h5", meta, features(meta, 3, 1), LEARNED, "learned"),
            write(tmp_path / "classic.h5", meta, features(meta, 4, 2), CLASSIC, "hand-crafted"))


def test_combined_file_has_both_blocks_with_colliding_names_prefixed(
        pair: tuple[Path, Path], tmp_path: Path) -> None:
    res = combine_profiles(pair, tmp_path / "both.h5", names=["learned", "classic"])
    assert res.blocks == {"learned": 3, "classic": 4} and res.prefixed == 2
    assert res.keys == ["Metadata_Plate", "ImageNumber", "ObjectNumber"]
    meta, x, names = read_profiles(res.out)
    assert names == ["learned_VAE_000", "VAE_001", "VAE_002", "AreaShape_Area",
                     "Intensity_Mean_DNA", "Texture_Contrast_DNA", "classic_VAE_000"]
    assert profile_blocks(res.out) == {"learned": names[:3], "classic": names[3:]}
    a_meta, a, _ = read_profiles(pair[0])
    b_meta, b, _ = read_profiles(pair[1])
    np.testing.assert_array_equal(x, np.hstack([a, b]))
    pd.testing.assert_frame_equal(meta, a_meta)
    # without names, the files' profile kinds name the blocks
    res = combine_profiles(pair, tmp_path / "kinds.h5")
    assert list(res.blocks) == ["learned", "hand-crafted"]
    # a combined file is not a block: its own blocks would be weighed as one
    with pytest.raises(InputError, match=r"kinds.h5: combined already"):
        combine_profiles([res.out, pair[1]], tmp_path / "again.h5", names=["a", "b"])


def test_rows_shuffled_in_one_file_join_to_the_same_profile(pair: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    meta, x, names = read_profiles(pair[1])
    order = np.random.default_rng(3).permutation(len(meta))
    shuffled = write(tmp_path / "shuffled.h5", meta.iloc[order], x[order], names,
                     "hand-crafted")
    plain = combine_profiles(pair, tmp_path / "plain.h5")
    mixed = combine_profiles([pair[0], shuffled], tmp_path / "mixed.h5",
                             names=list(plain.blocks))
    for got, want in zip(read_profiles(mixed.out), read_profiles(plain.out)):
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want)
        else:
            np.testing.assert_array_equal(got, want)
    config = MatchConfig(permutations=0)
    first = run_match(plain.out, tmp_path / "r1", config).metrics
    second = run_match(mixed.out, tmp_path / "r2", config).metrics
    assert (first["nsc"], first["map"], first["blocks"]) == \
        (second["nsc"], second["map"], second["blocks"])


def test_files_of_different_cells_are_refused_with_the_counts(pair: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    meta, x, names = read_profiles(pair[1])
    keep = np.ones(len(meta), bool)
    keep[[0, 1]] = False  # Week1_1 image 1, objects 1 and 2: only in learned.h5
    other = meta[keep].copy()
    other.iloc[-1, other.columns.get_loc("ObjectNumber")] = 99  # one cell only in B
    b = write(tmp_path / "b.h5", other, x[keep], names, "hand-crafted")
    with pytest.raises(InputError) as err:
        combine_profiles([pair[0], b], tmp_path / "no.h5")
    message = str(err.value)
    assert "\n" not in message
    assert f"b.h5: not the same cells as {pair[0]}: 3 only in {pair[0]}, 1 only in {b}, " \
           f"{len(meta) - 3} in both (e.g. plate Week1_1 image 1 object 1, only in " in message
    assert not (tmp_path / "no.h5").exists()


def test_a_cell_twice_in_one_file_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    meta, x, names = read_profiles(pair[1])
    meta.loc[7, "ObjectNumber"] = meta.loc[6, "ObjectNumber"]
    b = write(tmp_path / "b.h5", meta, x, names, "hand-crafted")
    with pytest.raises(InputError, match=r"b.h5: 2 rows share their cell key with another "
                                         r"\(e.g. plate Week1_1 image 2 object 2\)"):
        combine_profiles([pair[0], b], tmp_path / "no.h5")


def test_metadata_that_differs_for_a_cell_is_refused(pair: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    meta, x, names = read_profiles(pair[1])
    meta.loc[meta["Metadata_Compound"] == "A", "Metadata_Compound"] = "B"
    b = write(tmp_path / "b.h5", meta, x, names, "hand-crafted")
    with pytest.raises(InputError, match=r"b.h5: Metadata_Compound differs from .*learned.h5's "
                                         r"for 20 of 180 cells \(e.g. plate Week1_1 image 4 "
                                         r"object 1: 'B' there, 'A' in"):
        combine_profiles([pair[0], b], tmp_path / "no.h5")


def test_tables_join_too_and_their_blocks_go_to_run_match(pair: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """A notebook joins DataFrames (exported tables name the keys Metadata_ImageNumber …)
    and hands run_match the blocks; the result is the combined file's."""
    tables = {}
    for name, path in zip(("learned", "classic"), pair):
        meta, x, names = read_profiles(path)
        meta = meta.rename(columns={"ImageNumber": "Metadata_ImageNumber",
                                    "ObjectNumber": "Metadata_ObjectNumber"})
        tables[name] = pd.concat([meta, pd.DataFrame(x, columns=names)], axis=1)
    table, blocks = join_profiles(tables)
    assert {k: len(v) for k, v in blocks.items()} == {"learned": 3, "classic": 4}
    config = MatchConfig(permutations=0)
    from_table = run_match(table, tmp_path / "t", config, blocks=blocks).metrics["blocks"]
    combined = combine_profiles(pair, tmp_path / "both.h5", names=["learned", "classic"])
    from_file = run_match(combined.out, tmp_path / "f", config).metrics["blocks"]
    assert [b["weight"] for b in from_table] == pytest.approx([b["weight"] for b in from_file])


# --- match weighs the blocks --------------------------------------------------------------

def test_match_weighs_each_block_to_equal_total_variance_over_the_treatments(
        pair: tuple[Path, Path], tmp_path: Path) -> None:
    combined = combine_profiles(pair, tmp_path / "both.h5", names=["learned", "classic"])
    blocks = profile_blocks(combined.out)
    result = run_match(combined.out, tmp_path / "report", MatchConfig(permutations=0))
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [(b["name"], b["width"], b["input_width"]) for b in metrics["blocks"]] == \
        [("learned", 3, 3), ("classic", 4, 4)]
    # by hand: the unweighted treatment profiles' total variance per block (ddof 0)
    from cellprof.profile.match import load_profiles
    plain, _ = prepare(load_profiles(combined.out), MatchConfig())
    for entry in metrics["blocks"]:
        total = plain[blocks[entry["name"]]].to_numpy().var(axis=0).sum()
        assert entry["total_variance"] == pytest.approx(total)
        assert entry["weight"] == pytest.approx(total ** -0.5)
    treat = pd.read_parquet(tmp_path / "report" / "treatment_profiles.parquet")
    for feats in blocks.values():
        assert treat[feats].to_numpy().var(axis=0).sum() == pytest.approx(1)
    rows = dict(summary_rows(result))
    learned, classic = metrics["blocks"]
    assert rows["feature blocks (width × weight)"] == \
        f"learned 3 × {learned['weight']:.3g}, classic 4 × {classic['weight']:.3g}"


def test_a_block_in_other_units_does_not_dominate(pair: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """Without normalisation a block measured x100 would decide every distance; weighted,
    the treatment profiles are those of the unscaled block."""
    meta, x, names = read_profiles(pair[1])
    big = write(tmp_path / "big.h5", meta, 100 * x.astype(np.float64), names, "hand-crafted")
    config = MatchConfig(normalize="none", permutations=0)
    runs = {}
    for label, classic in (("plain", pair[1]), ("big", big)):
        combined = combine_profiles([pair[0], classic], tmp_path / f"{label}_both.h5",
                                    names=["learned", "classic"])
        run_match(combined.out, tmp_path / label, config)
        runs[label] = pd.read_parquet(tmp_path / label / "treatment_profiles.parquet")
    feats = [c for c in runs["plain"].columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(runs["big"][feats].to_numpy(), runs["plain"][feats].to_numpy(),
                               rtol=1e-5, atol=1e-6)


def test_shards_of_combined_profiles_match_as_one_file(pair: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """Several files are still rows of more plates; combined shards carry the same blocks,
    and a combined shard beside a plain one is refused."""
    shards = []
    for batch in ("Week1", "Week2"):
        parts = []
        for path in pair:
            meta, x, names = read_profiles(path)
            rows = meta["Metadata_Plate"].str.startswith(batch).to_numpy()
            parts.append(write(tmp_path / f"{batch}_{path.name}", meta[rows], x[rows], names,
                               "learned"))
        shards.append(combine_profiles(parts, tmp_path / f"{batch}.h5",
                                       names=["learned", "classic"]).out)
    whole = combine_profiles(pair, tmp_path / "whole.h5", names=["learned", "classic"]).out
    config = MatchConfig(permutations=0)
    split = run_match(shards, tmp_path / "split", config).metrics
    one = run_match(whole, tmp_path / "one", config).metrics
    assert split["n_input_rows"] == one["n_input_rows"] == 180
    assert [b["weight"] for b in split["blocks"]] == pytest.approx(
        [b["weight"] for b in one["blocks"]], rel=1e-6)
    with pytest.raises(InputError, match=r"learned.h5: no blocks, but .*Week1.h5: blocks "
                                         r"learned \(3\), classic \(4\)"):
        run_match([shards[0], pair[0]], tmp_path / "mixed", config)


# --- the command line ----------------------------------------------------------------------

def test_combine_then_match_on_the_command_line(pair: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "both.h5"
    res = runner.invoke(app, ["combine", str(pair[0]), str(pair[1]), "-o", str(out),
                              "--names", "learned,classic"])
    assert res.exit_code == 0, res.output
    assert "learned (3), classic (4)" in res.output and "180" in res.output
    res = runner.invoke(app, ["match", str(out), "-o", str(tmp_path / "report"),
                              "--permutations", "0"])
    assert res.exit_code == 0, res.output
    assert "feature blocks (width × weight)" in res.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [b["name"] for b in metrics["blocks"]] == ["learned", "classic"]
    assert metrics["nsc"] == 1.0
    # an existing output, a file of other cells: one line each, status 1
    res = runner.invoke(app, ["combine", str(pair[0]), str(pair[1]), "-o", str(out)])
    assert res.exit_code == 1 and "exists; pass --overwrite" in res.output
    meta, x, names = read_profiles(pair[1])
    half = write(tmp_path / "half.h5", meta.iloc[:90], x[:90], names, "hand-crafted")
    res = runner.invoke(app, ["combine", str(pair[0]), str(half), "-o",
                              str(tmp_path / "no.h5")])
    assert res.exit_code == 1 and "90 only in" in res.output and "0 only in" in res.output
    res = runner.invoke(app, ["combine", str(pair[0]), str(pair[1]), "-o",
                              str(tmp_path / "n.h5"), "--names", "only-one"])
    assert res.exit_code == 1 and "--names gives 1 name(s) for 2 profiles files" in res.output
