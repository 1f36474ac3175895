"""`cellprof embed --tta`: a cell's profile averaged over its turned and mirrored views.

What a user checks: a cell turned or mirrored gets the same profile (dihedral), or the same
under a mirror (flips); the profile is the mean of the views' posterior means as the model
gives them one by one; a run resumes only under the same --tta; the CLI takes the choice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import Stop, stop_after
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.formats.profiles import profile_attrs, read_profiles
from cellprof.learn.config import TTAS
from cellprof.learn.data import percentile_scale, scale_crops
from cellprof.learn.embed import VIEWS, EmbedConfig, embed, encode_views, load_encoder

CPU = torch.device("cpu")


def _turn(raw: np.ndarray, k: int, mirror: bool = False) -> np.ndarray:
    """Crops turned ``k`` quarter turns, then mirrored left-right: numpy's own, not
    cellprof's gather."""
    out = np.rot90(raw, k, axes=(2, 3))
    return np.ascontiguousarray(out[..., ::-1] if mirror else out)


HAND_VIEWS = {"flips": [(0, False), (0, True)],
              "dihedral": [(k, m) for k in range(4) for m in (False, True)]}


@pytest.fixture(scope="module")
def model_and_crops(tiny_model: tuple[Path, Path]):
    ckpt, crops = tiny_model
    model, _ = load_encoder(ckpt, CPU)
    return model, store.read_crops(crops, slice(0, 16)), ckpt, crops


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_views_are_the_choices() -> None:
    assert tuple(VIEWS) == TTAS
    assert [len(VIEWS[t]) for t in TTAS] == [1, 2, 8]


def test_dihedral_profile_is_the_same_for_a_turned_or_mirrored_cell(model_and_crops) -> None:
    model, raw, _, _ = model_and_crops
    moved = [_turn(raw, 1), _turn(raw, 2), _turn(raw, 3), _turn(raw, 0, True),
             _turn(raw, 1, True)]
    mu, logvar = encode_views(model.encoder, raw, "dihedral")
    for other in moved:
        mu2, logvar2 = encode_views(model.encoder, other, "dihedral")
        np.testing.assert_allclose(mu2, mu, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(logvar2, logvar, rtol=1e-4, atol=1e-5)
    plain = encode_views(model.encoder, raw, "none")[0]
    assert _gap(plain, encode_views(model.encoder, _turn(raw, 1), "none")[0]) > 1e-3
    assert _gap(plain, encode_views(model.encoder, _turn(raw, 0, True), "none")[0]) > 1e-3


def test_flips_profile_is_the_same_for_a_mirrored_cell(model_and_crops) -> None:
    model, raw, _, _ = model_and_crops
    mu = encode_views(model.encoder, raw, "flips")[0]
    np.testing.assert_allclose(encode_views(model.encoder, _turn(raw, 0, True), "flips")[0],
                               mu, rtol=1e-4, atol=1e-5)
    # two views are not all eight: a quarter turn still changes the profile
    assert _gap(mu, encode_views(model.encoder, _turn(raw, 1), "flips")[0]) > 1e-3


def _by_hand(model, raw: np.ndarray, tta: str, plates=None, pct=None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Each view through the model on its own; the mean of the means, and the log of the
    views' mixture variance (mean variance + variance of the means)."""
    method = "max" if pct is None else "percentile"
    mus, lvs = [], []
    with torch.no_grad():
        for k, m in HAND_VIEWS[tta]:
            x = scale_crops(_turn(raw, k, m), method, plates, pct)
            mu, lv = model.encode(torch.from_numpy(x))
            mus.append(mu.numpy().astype(np.float64))
            lvs.append(lv.numpy().astype(np.float64))
    mus, lvs = np.stack(mus), np.stack(lvs)
    mean = mus.mean(0)
    return mean, np.log(np.exp(lvs).mean(0) + ((mus - mean) ** 2).mean(0))


@pytest.mark.parametrize("tta", ["flips", "dihedral"])
def test_profile_is_the_mean_of_the_views_posterior_means(model_and_crops, tta: str,
                                                          tmp_path: Path) -> None:
    model, _, ckpt, crops = model_and_crops
    res = embed(ckpt, crops, tmp_path / "p.h5",
                config=EmbedConfig(batch_size=64, tta=tta, logvar=True, precision="fp32"))
    feats = read_profiles(res.out)[1]
    with h5py.File(res.out) as f:
        logvar = f["logvar"][()]
    rows = slice(60, 70)  # across the first two blocks of 64 cells
    mean, pooled = _by_hand(model, store.read_crops(crops, rows), tta)
    np.testing.assert_allclose(feats[rows], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logvar[rows], pooled, rtol=1e-4, atol=1e-5)
    attrs = profile_attrs(res.out)
    assert attrs["tta"] == tta and int(attrs["n_views"]) == len(HAND_VIEWS[tta])


def test_percentile_scaling_and_forward_chunks(model_and_crops) -> None:
    """Each view keeps its cell's plate scaling, and splitting the views x cells into
    passes of a few crops (across views) changes nothing."""
    model, raw, _, _ = model_and_crops
    plates = np.array(["a", "b"] * 8)
    pct = {"a": np.array([[5, 5, 5], [900, 1200, 1500]], np.float32),
           "b": np.array([[0, 10, 0], [3000, 2500, 2000]], np.float32)}
    scale = percentile_scale(plates, pct)
    whole = encode_views(model.encoder, raw, "dihedral", scale=scale)
    mean, pooled = _by_hand(model, raw, "dihedral", plates, pct)
    np.testing.assert_allclose(whole[0], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(whole[1], pooled, rtol=1e-4, atol=1e-5)
    parts = encode_views(model.encoder, raw, "dihedral", scale=scale, batch_size=7)
    for a, b in zip(parts, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="none, flips, dihedral"):
        encode_views(model.encoder, raw, "rot")


def test_resume_needs_the_same_tta(model_and_crops, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """The writer's convention: a partial file of other settings is started over (with the
    reason logged), never continued; one of the same --tta is continued."""
    _, _, ckpt, crops = model_and_crops
    dihedral = EmbedConfig(batch_size=64, tta="dihedral")
    whole = read_profiles(embed(ckpt, crops, tmp_path / "whole.h5", config=dihedral).out)[1]

    out = tmp_path / "same.h5"
    with pytest.raises(Stop):
        embed(ckpt, crops, out, config=dihedral, progress=stop_after(64))
    res = embed(ckpt, crops, out, config=dihedral)
    assert res.resumed_from == 64
    np.testing.assert_array_equal(read_profiles(out)[1], whole)

    out = tmp_path / "other.h5"
    with pytest.raises(Stop):
        embed(ckpt, crops, out, config=EmbedConfig(batch_size=64, tta="none"),
              progress=stop_after(64))
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        res = embed(ckpt, crops, out, config=dihedral)
    assert res.resumed_from == 0
    assert "starting over: it was written with other settings" in caplog.text
    np.testing.assert_array_equal(read_profiles(out)[1], whole)
    with pytest.raises(InputError, match="--tta must be one of none, flips, dihedral"):
        embed(ckpt, crops, tmp_path / "x.h5", config=EmbedConfig(tta="rot"))


def test_cli_embed_tta(model_and_crops, tmp_path: Path) -> None:
    _, _, ckpt, crops = model_and_crops
    out = tmp_path / "p.h5"
    res = CliRunner().invoke(app, ["embed", str(ckpt), str(crops), "--out", str(out),
                                   "--tta", "dihedral"])
    assert res.exit_code == 0, res.output
    assert profile_attrs(out)["tta"] == "dihedral"
    res = CliRunner().invoke(app, ["embed", str(ckpt), str(crops), "--out",
                                   str(tmp_path / "q.h5"), "--tta", "rot"])
    assert res.exit_code == 2 and "'rot' is not one of" in res.output, res.output
    assert all(f"'{choice}'" in res.output for choice in TTAS), res.output
    assert not (tmp_path / "q.h5").exists()
