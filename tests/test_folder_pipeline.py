"""A new lab's folder of single-channel TIFFs, no tables and no labels, through the whole
pipeline: crop -> train -> embed -> measure -> show, and the picture of what crop --segment
found, checked against the nuclei the test drew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from matplotlib.colors import to_rgb
from PIL import Image
from test_folder_input import PATTERN, write_folder
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.formats import store
from cellprof.formats.profiles import read_profiles
from cellprof.report.segmentation import (
    COLORS,
    field_views,
    outlines,
    pick_fields,
    segmentation_path,
)

runner = CliRunner()
RADIUS = 5  # write_folder's nuclei


def run(*args: str) -> str:
    res = runner.invoke(app, [*args])
    said = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 0, f"cellprof {args[0]}: {said}"
    return said


@pytest.fixture(scope="module")
def cropped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The issue's crop of a folder: pattern, --segment, --size auto, nothing else."""
    root = tmp_path_factory.mktemp("folder")
    truth = write_folder(root / "images")
    crops = root / "crops.h5"
    said = run("crop", str(root / "images"), "--pattern", PATTERN, "--segment", "--size",
               "auto", "-o", str(crops))
    assert "segmentation picture" in said and "crops.h5.segmentation.png" in said
    return crops, truth


def test_a_folder_of_tiffs_goes_from_crop_to_show_with_no_table(
        cropped: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    crops, _ = cropped
    run("train", str(crops), "-o", str(tmp_path / "run"), "--model", "vae", "--steps", "3",
        "--latent-dim", "8", "--filters", "8", "--batch-size", "8", "--image-every", "1000",
        "--val-every", "1000", "--device", "cpu")
    run("embed", str(tmp_path / "run"), str(crops), "-o", str(tmp_path / "profiles.h5"),
        "--tta", "none", "--device", "cpu")
    run("measure", str(crops), "-o", str(tmp_path / "measured.h5"))
    said = run("show", str(tmp_path / "run"), str(crops), "-o", str(tmp_path / "figures"))
    assert "treatment labels" in said  # no labels: reconstructions, samples, and why not more
    assert (tmp_path / "figures" / "reconstructions.png").stat().st_size > 5_000
    n = len(store.read_cells(crops))
    for name, width in (("profiles.h5", 8), ("measured.h5", None)):
        cells, features, _ = read_profiles(tmp_path / name)
        assert len(cells) == features.shape[0] == n and np.isfinite(features).all()
        assert width is None or features.shape[1] == width


def test_the_segmentation_picture_shows_the_nuclei_and_the_crops(
        cropped: tuple[Path, pd.DataFrame]) -> None:
    """The PNG beside the store decodes, and shows outlines and boxes on a real field."""
    crops, _ = cropped
    picture = segmentation_path(crops)
    assert picture == crops.with_name("crops.h5.segmentation.png")
    pixels = np.asarray(Image.open(picture).convert("RGB"), np.float64) / 255
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.std() > 0.1
    for color in ("outline", "kept", "dropped"):
        near = np.abs(pixels - np.array(to_rgb(COLORS[color]))).max(axis=2) < 0.1
        assert near.sum() > 200, color  # every kind of mark is drawn
    assert picture.stat().st_size < 1_000_000


def test_the_outlines_drawn_are_the_nuclei_crop_found(cropped: tuple[Path, pd.DataFrame]
                                                      ) -> None:
    """Each field drawn: as many objects as crop counted, each outline on the border of a
    nucleus the test drew, each box centred on one, the nuclei not cut near the edge."""
    crops, truth = cropped
    fields = store.read_fields(crops)
    views = field_views(crops)
    assert len(views) == 4  # every field of this small screen
    for view, (_, row) in zip(views, fields.iterrows(), strict=True):
        assert int(view.labels.max()) == row["Count_Objects"] == 40
        assert len(view.kept) == row["Count_Cropped"] and \
            len(view.dropped) == row["Count_EdgeSkipped"]
        assert f"{row['Count_Objects']} nuclei found, {row['Count_Cropped']} crops kept" \
            in view.title
        mine = truth[(truth["well"] == row["Metadata_Well"])
                     & (truth["site"] == row["Metadata_Site"])]
        centres = mine[["x", "y"]].to_numpy()
        ys, xs = np.nonzero(outlines(view.labels))
        dist = np.hypot(xs[:, None] - centres[:, 0], ys[:, None] - centres[:, 1]).min(axis=1)
        assert np.abs(dist - RADIUS).max() < 1.6, np.percentile(dist, [0, 50, 100])
        for corners in (view.kept, view.dropped):
            middle = corners + view.size // 2
            off = np.hypot(middle[:, None, 0] - centres[:, 0],
                           middle[:, None, 1] - centres[:, 1]).min(axis=1)
            assert (off <= 1).all()
        side = view.image.shape[0]
        middle = view.dropped + view.size // 2
        assert ((middle < view.size // 2) | (middle + view.size - view.size // 2 > side)
                ).any(axis=1).all()  # each one's crop would have left the field


def test_the_fields_drawn_are_the_first_the_busiest_and_others_spread() -> None:
    fields = pd.DataFrame({
        "Metadata_Plate": ["P1"] * 6 + ["P2"] * 6,
        "Metadata_Well": ["B02", "B02", "B03", "B03", "B04", "B04"] * 2,
        "Status": ["image_missing"] + ["ok"] * 11,
        "Count_Objects": [0, 5, 5, 5, 5, 5, 5, 5, 90, 5, 5, 5]})
    picks = pick_fields(fields)
    assert 1 in picks and 8 in picks and 0 not in picks and len(picks) == 4
    assert len({tuple(fields.loc[i, ["Metadata_Plate", "Metadata_Well"]]) for i in picks}) == 4
    assert pick_fields(fields, 20) == list(range(1, 12))


def test_fields_read_from_one_stack_per_field_are_drawn(tmp_path: Path) -> None:
    """A hand-written table naming each channel's plane of one 3-plane TIFF per field: the
    picture reads the nucleus plane the crop read."""
    write_folder(tmp_path / "planes", wells=("B02",), sites=2)
    rows = []
    for site in (1, 2):
        stack = np.stack([tifffile.imread(tmp_path / "planes" / f"B02_s{site}_{ch}.tif")
                          for ch in ("Cell", "DNA", "PH3")])
        tifffile.imwrite(tmp_path / f"B02_s{site}.tif", stack, photometric="minisblack")
        rows.append({"Metadata_Well": "B02", "Metadata_Site": site,
                     **{f"FileName_{ch}": f"B02_s{site}.tif" for ch in ("Cell", "DNA", "PH3")},
                     "Frame_Cell": 0, "Frame_DNA": 1, "Frame_PH3": 2})
    pd.DataFrame(rows).to_csv(tmp_path / "Image.csv", index=False)
    crops = tmp_path / "crops.h5"
    run("crop", str(tmp_path / "Image.csv"), "--segment", "--size", "36", "-o", str(crops))
    fields = store.read_fields(crops)
    views = field_views(crops)
    assert [int(v.labels.max()) for v in views] == fields["Count_Objects"].tolist() == [40, 40]
    assert segmentation_path(crops).stat().st_size > 10_000
