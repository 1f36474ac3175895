"""find_nuclei on synthetic fields: discs (isolated, touching pairs, on the border) on noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellprof.prepare.segment import COLUMNS, SegmentConfig, find_nuclei

H, W = 160, 200
RADIUS = 7

# (row, col) of every disc: isolated ones, two touching pairs whose centres are 13 px
# apart (a 1 px neck at radius 7), and discs cut by each border and by a corner.
ISOLATED = [(40.0, 50.0), (45.3, 120.6), (110.0, 60.0), (100.7, 150.2)]
PAIRS = [(80.0, 90.0), (80.0, 103.0), (125.0, 118.0), (135.0, 127.5)]
BORDER = [(2.0, 170.0), (60.0, 3.0), (157.5, 30.0), (95.0, 197.0), (1.0, 1.0)]
DISCS = ISOLATED + PAIRS + BORDER

# dtype -> (background, disc brightness, noise sd); the float field has a negative
# background to show the threshold does not assume a dark-at-zero image.
LEVELS = {
    np.uint16: (1500.0, 3000.0, 80.0),
    np.uint8: (40.0, 110.0, 8.0),
    np.float32: (-0.2, 1.0, 0.05),
}


def disc_masks(discs: list[tuple[float, float]]) -> list[np.ndarray]:
    rows, cols = np.ogrid[:H, :W]
    return [(rows - r) ** 2 + (cols - c) ** 2 <= RADIUS**2 for r, c in discs]


def expected_centres(discs: list[tuple[float, float]]) -> np.ndarray:
    """(N, 2) X, Y centroid of each disc's visible pixels (a border disc is cut by the edge)."""
    centres = []
    for mask in disc_masks(discs):
        ys, xs = np.nonzero(mask)
        centres.append((xs.mean(), ys.mean()))
    return np.array(centres)


def draw(dtype: type, seed: int = 0, discs: list[tuple[float, float]] = DISCS) -> np.ndarray:
    background, amplitude, noise = LEVELS[dtype]
    rng = np.random.default_rng(seed)
    image = np.full((H, W), background) + rng.normal(0.0, noise, (H, W))
    for mask in disc_masks(discs):
        image[mask] = background + amplitude + rng.normal(0.0, noise, mask.sum())
    if np.issubdtype(dtype, np.integer):
        image = np.clip(np.round(image), 0, np.iinfo(dtype).max)
    return image.astype(dtype)


def matches(found: pd.DataFrame, centres: np.ndarray, tol: float = 1.5) -> np.ndarray:
    """For each expected centre, how many found nuclei lie within ``tol`` px."""
    xy = found[["Location_Center_X", "Location_Center_Y"]].to_numpy()
    distance = np.linalg.norm(centres[:, None, :] - xy[None, :, :], axis=2)
    return (distance <= tol).sum(axis=1)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
@pytest.mark.parametrize("threshold", ["otsu", "li"])
def test_every_disc_found_once_at_its_centre(dtype: type, threshold: str) -> None:
    found = find_nuclei(draw(dtype), SegmentConfig(threshold=threshold))

    assert list(found.columns) == COLUMNS
    assert len(found) == len(DISCS)
    np.testing.assert_array_equal(matches(found, expected_centres(DISCS)), 1)
    assert found["ObjectNumber"].tolist() == list(range(1, len(DISCS) + 1))


def test_touching_pair_is_split_in_two() -> None:
    pair = PAIRS[:2]
    found = find_nuclei(draw(np.uint16, discs=pair))

    assert len(found) == 2
    np.testing.assert_array_equal(matches(found, expected_centres(pair)), 1)
    # Split at the neck: the two halves have about the same area.
    assert abs(found["AreaShape_Area"].iloc[0] - found["AreaShape_Area"].iloc[1]) <= 10


def test_without_splitting_a_touching_pair_is_one_object() -> None:
    # The control for the test above: the pair really does touch after thresholding.
    found = find_nuclei(draw(np.uint16, discs=PAIRS[:2]), SegmentConfig(split_touching=False))

    assert len(found) == 1
    assert found["Location_Center_X"].iloc[0] == pytest.approx(96.5, abs=0.5)


def test_border_discs_are_kept() -> None:
    found = find_nuclei(draw(np.uint16, discs=BORDER))

    assert len(found) == len(BORDER)
    np.testing.assert_array_equal(matches(found, expected_centres(BORDER)), 1)
    corner = found.loc[(found["Location_Center_X"] < 5) & (found["Location_Center_Y"] < 5)]
    assert len(corner) == 1


def test_centres_are_x_column_y_row() -> None:
    image = np.zeros((60, 90), np.uint16)
    rows, cols = np.ogrid[:60, :90]
    image[(rows - 15) ** 2 + (cols - 70) ** 2 <= 36] = 1000

    found = find_nuclei(image)

    assert found[["Location_Center_X", "Location_Center_Y"]].to_numpy().tolist() == [[70.0, 15.0]]
    assert found["AreaShape_Area"].iloc[0] == np.count_nonzero(image)


def test_area_limits_drop_debris_and_unsplit_clumps() -> None:
    debris = (20.0, 20.0)
    image = draw(np.uint16, discs=[ISOLATED[0], *PAIRS[:2]])
    rows, cols = np.ogrid[:H, :W]
    image[(rows - debris[0]) ** 2 + (cols - debris[1]) ** 2 <= 4] = 4500  # 13 px

    kept = find_nuclei(image, SegmentConfig(min_area=1))
    assert len(kept) == 4
    assert len(find_nuclei(image)) == 3

    single_area = np.count_nonzero(disc_masks([ISOLATED[0]])[0])
    unsplit = find_nuclei(image, SegmentConfig(split_touching=False, max_area=single_area + 30))
    assert len(unsplit) == 1
    np.testing.assert_array_equal(matches(unsplit, expected_centres([ISOLATED[0]])), 1)


@pytest.mark.parametrize(
    "image",
    [np.zeros((H, W), np.uint16), np.full((H, W), 500, np.uint16), np.full((H, W), 0.3)],
    ids=["zeros", "constant-uint16", "constant-float"],
)
def test_blank_image_gives_empty_frame_with_columns(image: np.ndarray) -> None:
    found = find_nuclei(image)

    assert found.empty
    assert list(found.columns) == COLUMNS


@pytest.mark.parametrize("shape", [(3, H, W), (H,), (1, H, W)])
def test_non_2d_image_is_rejected_with_expected_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"2-D .*\(H, W\).*got shape"):
        find_nuclei(np.zeros(shape, np.uint16))


def test_bad_settings_and_values_are_rejected() -> None:
    image = draw(np.uint16)
    with pytest.raises(ValueError, match="otsu"):
        find_nuclei(image, SegmentConfig(threshold="triangle"))
    with pytest.raises(ValueError, match="finite"):
        find_nuclei(np.where(image > 0, np.nan, 0.0))
