"""Illumination correction on synthetic plates: fields = cells on background x known vignetting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellprof.prepare import illumination
from cellprof.prepare.illumination import (
    IlluminationAccumulator,
    correct,
    default_sigma,
    illumination_function,
)

C, H, W = 2, 128, 160
N_FIELDS = 96


def vignetting() -> np.ndarray:
    """(C, H, W) smooth falloff, brightest off-centre and different per channel, 1 at its peak."""
    rows, cols = np.mgrid[:H, :W].astype(float)
    first = np.exp(-((rows - 0.4 * H) ** 2 + (cols - 0.6 * W) ** 2) / (2 * (0.55 * W) ** 2))
    second = 1.0 - 0.45 * ((rows / H - 0.5) ** 2 + (cols / W - 0.35) ** 2) / 0.5
    return np.stack([first, second])


def texture(rng: np.random.Generator) -> np.ndarray:
    """(C, H, W) what the sample emits: background 200, ~200 cells 800-2000 brighter, noise.

    Cells are 5 px discs (~1/30 of the field, as 40 px cells on a 1280x1024 field) and
    also sit across the border, as in a real field cut out of a well.
    """
    disc = (np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) <= 5).astype(float)
    n = 200 * (H + 4) * (W + 4) // (H * W)
    image = np.empty((C, H, W))
    for c in range(C):
        centres = np.zeros((H + 4, W + 4))
        where = (rng.integers(0, H + 4, n), rng.integers(0, W + 4, n))
        np.add.at(centres, where, rng.uniform(800, 2000, n))
        image[c] = 200.0 + ndi.convolve(centres, disc, mode="constant")[2:-2, 2:-2]
    return image + rng.normal(0.0, 15.0, image.shape)


@pytest.fixture(scope="module")
def plate() -> np.ndarray:
    """(N, C, H, W) uint16 fields of one plate."""
    rng = np.random.default_rng(7)
    fields = [np.round(texture(rng) * vignetting()) for _ in range(N_FIELDS)]
    return np.clip(fields, 0, 65535).astype(np.uint16)


def accumulate(fields: np.ndarray) -> IlluminationAccumulator:
    acc = IlluminationAccumulator(fields.shape[1:])
    for field in fields:
        acc.add(field)
    return acc


def background_ratio(field: np.ndarray) -> float:
    """Mean background of the four 16x16 corners over that at the centre (1 = flat).

    The background of a block is its 20th percentile, below the cells.
    """
    corners = [field[:16, :16], field[:16, -16:], field[-16:, :16], field[-16:, -16:]]
    centre = field[H // 2 - 8 : H // 2 + 8, W // 2 - 8 : W // 2 + 8]
    return float(np.mean([np.percentile(b, 20) for b in corners]) / np.percentile(centre, 20))


def test_function_follows_the_known_vignetting(plate: np.ndarray) -> None:
    illum = accumulate(plate).result()
    truth = vignetting()

    for c in range(C):
        r = np.corrcoef(illum[c].ravel(), truth[c].ravel())[0, 1]
        assert r > 0.95, f"channel {c}: correlation {r:.3f}"
        # Beyond correlation: the shape, not only the trend, after normalising both
        # (measured ~2 % RMS; the residual is cell texture 96 fields do not average out).
        ratio = (illum[c] / truth[c]) / np.median(illum[c] / truth[c])
        rms = np.sqrt(np.mean((ratio - 1) ** 2))
        assert rms < 0.04, f"channel {c}: RMS error {rms:.3f}"


def test_correction_flattens_the_background(plate: np.ndarray) -> None:
    illum = accumulate(plate).result()

    for c in range(C):
        raw = background_ratio(plate[:, c].mean(axis=0))
        assert raw < 0.75, "the synthetic vignetting is too weak to test anything"
        flat = [background_ratio(correct(field, illum)[c]) for field in plate[:4]]
        np.testing.assert_allclose(flat, 1.0, atol=0.06, err_msg=f"channel {c}")


def test_function_is_robust_minimum_rescaled(plate: np.ndarray) -> None:
    illum = accumulate(plate).result()

    assert illum.dtype == np.float32
    assert illum.shape == (C, H, W)
    for c in range(C):
        assert np.percentile(illum[c], 2) == pytest.approx(1.0, abs=1e-6)
        # So correction dims the bright centre to the corners' level instead of lifting the
        # corners: 98 % of the pixels end no brighter than the camera recorded them.
        dimmed = correct(plate[0], illum)[c] <= plate[0, c] + 1e-3
        assert dimmed.mean() >= 0.97


def test_accumulator_mean_equals_numpy_mean(plate: np.ndarray) -> None:
    acc = accumulate(plate)

    assert acc.count == N_FIELDS
    expected = plate.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(acc.mean(), expected, rtol=1e-12)
    np.testing.assert_allclose(acc.result(8.0), illumination_function(expected, 8.0), rtol=1e-6)


def test_accumulator_takes_any_numeric_dtype() -> None:
    acc = IlluminationAccumulator((1, 4, 5))
    acc.add(np.full((1, 4, 5), 10, np.uint8))
    acc.add(np.full((1, 4, 5), 1000, np.uint16))
    acc.add(np.full((1, 4, 5), 0.5, np.float32))

    np.testing.assert_allclose(acc.mean(), np.full((1, 4, 5), 1010.5 / 3))


@pytest.mark.parametrize("shape", [(C, H, W + 1), (H, W), (1, C, H, W), (C + 1, H, W)])
def test_wrong_field_shape_names_the_expected_shape(shape: tuple[int, ...]) -> None:
    acc = IlluminationAccumulator((C, H, W))

    with pytest.raises(ValueError, match=rf"\({C}, {H}, {W}\).*got shape"):
        acc.add(np.zeros(shape, np.uint16))
    assert acc.count == 0


def test_result_needs_at_least_one_field() -> None:
    acc = IlluminationAccumulator((C, H, W))

    with pytest.raises(ValueError, match="at least 1 field"):
        acc.result()


def test_downsampled_smoothing_matches_full_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    # The speed trick (fit on block means, interpolate back) must not change the answer:
    # compare with the same fit on every pixel.
    rng = np.random.default_rng(3)
    mean_image = 1000 * vignetting() + rng.normal(0.0, 30.0, (C, H, W))
    sigma = 24.0

    fast = illumination_function(mean_image, sigma)
    monkeypatch.setattr(illumination, "_SMALL_SIGMA", np.inf)  # one pixel per block
    slow = illumination_function(mean_image, sigma)

    np.testing.assert_allclose(fast, slow, rtol=0.005)


def test_edges_are_not_biased_towards_the_interior() -> None:
    # A plain Gaussian blur pulls the corners towards the brighter centre; the function
    # here must follow a noise-free vignetting into the corners.
    truth = vignetting()

    illum = illumination_function(1000 * truth)

    ratio = illum / truth / np.median(illum / truth, axis=(1, 2), keepdims=True)
    corners = np.concatenate(
        [ratio[:, :16, :16], ratio[:, :16, -16:], ratio[:, -16:, :16], ratio[:, -16:, -16:]],
        axis=1,
    )
    # Measured 1-2 % RMS, 4 % at worst; a plain normalised Gaussian gives ~12 % RMS here.
    assert np.sqrt(np.mean((corners - 1) ** 2)) < 0.03
    np.testing.assert_allclose(ratio, 1.0, atol=0.06)


def test_default_sigma_is_a_tenth_of_the_short_side() -> None:
    assert default_sigma((3, 1024, 1280)) == pytest.approx(102.4)


def test_two_d_input_and_no_smoothing() -> None:
    plane = np.arange(1.0, 101.0).reshape(10, 10)

    illum = illumination_function(plane, smoothing_sigma=0)

    assert illum.shape == (10, 10)
    np.testing.assert_allclose(illum, plane / np.percentile(plane, 2), rtol=1e-6)


def test_zeros_never_give_inf_or_nan() -> None:
    # An empty channel (all zero) and a function with holes and negative values.
    field = np.full((2, 8, 8), 65535, np.uint16)
    field[0, 0, 0] = 0
    mean_image = np.zeros((2, 8, 8))
    mean_image[1] = 100.0

    illum = illumination_function(mean_image, smoothing_sigma=2.0)
    np.testing.assert_array_equal(illum[0], 1.0)  # nothing to correct by
    assert np.isfinite(correct(field, illum)).all()

    holes = np.ones((2, 8, 8), np.float32)
    holes[0, :2] = 0.0
    holes[1, :2] = -3.0
    out = correct(field, holes)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert (out >= 0).all()
    np.testing.assert_array_equal(out[:, 2:], field[:, 2:].astype(np.float32))


def test_black_frame_does_not_drive_the_function_to_zero() -> None:
    # A steep edge (the black frame of a stitched or cropped field) must not be
    # extrapolated below zero: that would turn into a huge or negative correction.
    mean_image = np.full((1, H, W), 1000.0)
    mean_image[:, :, :12] = 0.0
    mean_image[:, :, 12:24] = 150.0

    illum = illumination_function(mean_image)

    assert (illum > 0.1).all()
    assert np.isfinite(correct(mean_image, illum)).all()


def test_correct_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*got shape \(2, 8, 9\)"):
        correct(np.zeros((2, 8, 8)), np.ones((2, 8, 9)))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        IlluminationAccumulator((H, W))
    with pytest.raises(ValueError, match="smoothing_sigma"):
        illumination_function(np.ones((H, W)), smoothing_sigma=-1.0)
    with pytest.raises(ValueError, match="finite"):
        IlluminationAccumulator((1, 2, 2)).add(np.full((1, 2, 2), np.nan))
