"""Hand-crafted features: what a scientist would check on crops whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_or_skip
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops

from cellprof.prepare.segment import SegmentConfig
from cellprof.profile.classic import (
    TEXTURE_ANGLES,
    TEXTURE_LEVELS,
    TEXTURE_NAMES,
    TEXTURE_SCALE,
    classical_features,
    nucleus_masks,
    quantize,
)

S = 68
CH = ["DNA", "Tubulin", "Actin"]
YY, XX = np.mgrid[0:S, 0:S]


def disc(r: float, value: float = 1000.0, cy: float = 33.5, cx: float = 33.5,
         background: float = 100.0) -> np.ndarray:
    """(S, S) background with a disc of radius ``r`` px."""
    return np.where((YY - cy) ** 2 + (XX - cx) ** 2 <= r * r, value, background)


def crop(dna: np.ndarray, other: float = 500.0) -> np.ndarray:
    """(3, S, S): the DNA plane and two flat cytoskeletal planes."""
    return np.stack([dna, np.full((S, S), other), np.full((S, S), other)])


@pytest.mark.parametrize("r", [6.0, 10.0, 15.0])
def test_disc_area_is_pi_r_squared(r: float) -> None:
    f = classical_features(crop(disc(r))[None], CH)
    assert f.loc[0, "AreaShape_Area"] == pytest.approx(np.pi * r * r, rel=0.1)
    assert f.loc[0, "AreaShape_Perimeter"] == pytest.approx(2 * np.pi * r, rel=0.15)
    assert f.loc[0, "AreaShape_Eccentricity"] < 0.2
    assert f.loc[0, "AreaShape_Solidity"] > 0.95


def test_shape_matches_regionprops_on_an_ellipse() -> None:
    dna = np.where(((YY - 33.5) / 8) ** 2 + ((XX - 33.5) / 16) ** 2 <= 1, 900.0, 50.0)
    # Unsplit: the watershed of crop --segment cuts a perfect 2:1 ellipse at its flat
    # distance ridge, as find_nuclei does; the shape formulas are what is checked here.
    whole = SegmentConfig(split_touching=False)
    f = classical_features(crop(dna)[None], CH, segment=whole)
    mask = nucleus_masks(dna[None], segment=whole)[0]
    r = regionprops(mask.astype(np.uint8))[0]
    for name, prop in [("Area", "area"), ("Perimeter", "perimeter"),
                       ("Eccentricity", "eccentricity"), ("Solidity", "solidity"),
                       ("MajorAxisLength", "axis_major_length"),
                       ("MinorAxisLength", "axis_minor_length"), ("Extent", "extent")]:
        assert f.loc[0, f"AreaShape_{name}"] == pytest.approx(getattr(r, prop), rel=1e-9)
    assert f.loc[0, "AreaShape_Eccentricity"] == pytest.approx(np.sqrt(1 - (8 / 16) ** 2), abs=0.03)


def test_the_central_nucleus_is_measured_not_its_neighbour() -> None:
    dna = np.maximum(disc(8), disc(12, cy=10, cx=10))  # a bigger neighbour in the corner
    f = classical_features(crop(dna)[None], CH)
    assert f.loc[0, "AreaShape_Area"] == pytest.approx(np.pi * 64, rel=0.1)


def test_a_dim_nucleus_beside_a_bright_one_is_still_found() -> None:
    """Otsu on the crop puts the threshold above the dim centre; the log fallback finds it.
    (Intensities as in real BBBC021 crops where this happens: background ~900, dim
    nucleus ~4,000, bright neighbour ~16,000.)"""
    dna = np.maximum(disc(9, 4000, background=900), disc(12, 16_000, cy=8, cx=8))
    f = classical_features(crop(dna)[None], CH)
    assert f.loc[0, "AreaShape_Area"] == pytest.approx(np.pi * 81, rel=0.15)
    assert f.loc[0, "Intensity_MeanIntensity_DNA"] == pytest.approx(4000, rel=0.05)


def test_brighter_crop_has_larger_intensities() -> None:
    dim, bright = crop(disc(10, 1000), 300), crop(disc(10, 3000), 900)
    f = classical_features(np.stack([dim, bright]), CH)
    for ch in CH:
        for name in ("MeanIntensity", "IntegratedIntensity", "MeanIntensityCrop",
                     "Percentile95Crop"):
            assert f.loc[1, f"Intensity_{name}_{ch}"] > f.loc[0, f"Intensity_{name}_{ch}"]
    assert f.loc[0, "Intensity_MeanIntensity_DNA"] == pytest.approx(1000, rel=0.05)
    # the same nucleus, three times brighter: same mask, three times the integrated intensity
    assert f.loc[1, "Intensity_IntegratedIntensity_DNA"] == pytest.approx(
        3 * f.loc[0, "Intensity_IntegratedIntensity_DNA"])
    assert f.loc[0, "AreaShape_Area"] == f.loc[1, "AreaShape_Area"]


def test_textured_crop_has_more_contrast_than_a_flat_one() -> None:
    rng = np.random.default_rng(0)
    flat = crop(disc(10))
    textured = flat.copy()
    textured[1] = rng.uniform(0, 1000, (S, S))        # speckled tubulin
    textured[2] = np.where((XX // 2) % 2, 1000.0, 0)  # striped actin
    f = classical_features(np.stack([flat, textured]), CH)
    for ch in ("Tubulin", "Actin"):
        assert f.loc[0, f"Texture_Contrast_{ch}"] == 0
        assert f.loc[1, f"Texture_Contrast_{ch}"] > 1
        assert f.loc[1, f"Texture_Homogeneity_{ch}"] < f.loc[0, f"Texture_Homogeneity_{ch}"]
        assert f.loc[1, f"Texture_Entropy_{ch}"] > f.loc[0, f"Texture_Entropy_{ch}"]


def test_texture_equals_skimage_graycoprops() -> None:
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 300.0, (2, 1, S, S)) + disc(10, 2000)[None, None]
    f = classical_features(x, ["DNA"])
    for i in range(2):
        q = quantize(x[i, :1].astype(np.float64), TEXTURE_LEVELS)[0].astype(np.uint8)
        p = graycomatrix(q, [TEXTURE_SCALE], list(TEXTURE_ANGLES), levels=TEXTURE_LEVELS,
                         symmetric=True, normed=True)
        for name in TEXTURE_NAMES:
            expected = graycoprops(p, name.lower()).mean()
            assert f.loc[i, f"Texture_{name}_DNA"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_channel_correlation() -> None:
    ramp = XX.astype(np.float64)
    x = np.stack([disc(10), ramp, ramp.max() - ramp])[None]
    f = classical_features(x, CH)
    assert f.loc[0, "Correlation_Correlation_Tubulin_Actin"] == pytest.approx(-1.0)


def test_blank_crop_gives_zeros_not_nan() -> None:
    x = np.zeros((2, 3, S, S), np.uint16)
    x[1] = crop(disc(10)).astype(np.uint16)
    f = classical_features(x, CH)
    assert np.isfinite(f.to_numpy()).all()
    assert f.loc[0, "AreaShape_Area"] == 0 and f.loc[0, "Intensity_MeanIntensity_DNA"] == 0
    assert f.loc[1, "AreaShape_Area"] > 0  # a blank neighbour does not disturb the batch


def test_batches_do_not_change_the_result() -> None:
    rng = np.random.default_rng(2)
    x = np.stack([crop(disc(r, v)) + rng.uniform(0, 50, (3, S, S))
                  for r, v in [(6, 800), (9, 1200), (12, 500), (7, 3000), (11, 900)]])
    pd.testing.assert_frame_equal(classical_features(x, CH, batch=2), classical_features(x, CH))


def test_names_follow_cellprofiler() -> None:
    f = classical_features(crop(disc(10))[None].astype(np.uint16), CH)
    for name in ("Intensity_MeanIntensity_DNA", "AreaShape_Area", "Texture_Contrast_Actin",
                 "Intensity_MeanIntensityCrop_Tubulin", "Correlation_Correlation_DNA_Actin"):
        assert name in f.columns
    assert all(f.dtypes == np.float64)
    empty = classical_features(np.zeros((0, 3, S, S)), CH)
    assert len(empty) == 0 and list(empty.columns) == list(f.columns)


@pytest.mark.parametrize("shape, channels, match", [
    ((3, S, S), CH, r"\(N, C, H, W\)"),
    ((1, 3, S, S), ["DNA"], "1 channel names for 3 channels"),
    ((1, 3, 5, 5), CH, "larger than"),
])
def test_bad_input_says_what_was_expected(shape: tuple[int, ...], channels: list[str],
                                          match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classical_features(np.zeros(shape), channels)


@pytest.mark.realdata
def test_bbbc021_crops_have_a_central_nucleus() -> None:
    """On real crops cut around CellProfiler's nuclei, a nucleus of plausible size is found
    in every crop and no feature is undefined."""
    root = shared_or_skip("bbbc021", "singlecell")
    meta = pd.read_csv(root / "metadata.csv").iloc[::50]
    x = np.stack([np.moveaxis(np.load(root / p), -1, 0) for p in meta["crop_path"]])
    f = classical_features(x, CH)
    assert np.isfinite(f.to_numpy()).all()
    assert (f["AreaShape_Area"] > 100).mean() > 0.95
    assert 500 < f["AreaShape_Area"].median() < 2000   # nuclei ~25-50 px across
    assert (f["Intensity_MeanIntensity_DNA"].median()
            > 2 * f["Intensity_Percentile05Crop_DNA"].median())
