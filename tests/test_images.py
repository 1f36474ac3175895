"""Reading images as microscopes and other machines write them, and finding them again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from cellprof.errors import ImageError, MissingImage
from cellprof.formats.images import intensity_stats, read_planes, resolve_image


@pytest.mark.parametrize("pathname", [r"C:\Users\me\screen\images",
                                      "file:///Users/me/screen/images",
                                      "/Users/me/screen/images"])
def test_paths_from_another_machine_resolve_under_root(tmp_path: Path, pathname: str) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"")
    found, tried = resolve_image(pathname, "a.tif", root=tmp_path, table_dir=tmp_path)
    assert found == tmp_path / "images" / "a.tif" and len(tried) > 1


def test_relative_paths_resolve_against_the_table_folder(tmp_path: Path) -> None:
    (tmp_path / "Week4" / "Week4_1").mkdir(parents=True)
    (tmp_path / "Week4" / "Week4_1" / "b.tif").write_bytes(b"")
    found, _ = resolve_image("Week4/Week4_1", "b.tif", root=None, table_dir=tmp_path)
    assert found == tmp_path / "Week4" / "Week4_1" / "b.tif"


def test_rgb_png_and_interleaved_tiff_become_planes(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    imsave(tmp_path / "x.png", rgb, check_contrast=False)
    tifffile.imwrite(tmp_path / "x.tif", rgb, photometric="rgb", compression="lzw")
    for name in ("x.png", "x.tif"):
        planes = read_planes(tmp_path / name)
        assert planes.shape == (3, 20, 30)
        assert planes[:, 0, 0].tolist() == [10, 20, 30]


def test_missing_and_broken_images_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingImage, match="nope.tif: image not found"):
        read_planes(tmp_path / "nope.tif")
    (tmp_path / "bad.tif").write_bytes(b"MM\x00*garbage")
    with pytest.raises(ImageError, match="bad.tif: cannot read image"):
        read_planes(tmp_path / "bad.tif")


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 4095), (np.uint16, 65535)])
def test_integer_field_statistics_equal_the_float_ones(dtype: type, top: int) -> None:
    """8- and 16-bit fields take their statistics from histograms (a third of the cost);
    the figures are numpy's, percentile interpolation included."""
    rng = np.random.default_rng(4)
    plane = np.minimum(rng.gamma(2.0, top / 12, size=(203, 157)), top).astype(dtype)
    plane[7, 9] = top  # the extremes count every pixel, not only the samples
    got = intensity_stats(plane)
    ref = intensity_stats(plane.astype(np.float32))
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-6), key
    assert got["MaxIntensity"] == top
