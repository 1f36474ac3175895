"""Real CellProfiler exports and real single cells (../shared/data; skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_or_skip

from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen, plan
from cellprof.prepare.segment import SegmentConfig
from cellprof.prepare.singlecell import import_singlecell

pytestmark = pytest.mark.realdata


def test_examplefly_nuclei_crop_onto_their_nuclei(tmp_path: Path) -> None:
    """Every ExampleFly nucleus is cropped, and its brightest DNA pixel is where CellProfiler
    measured it: the crop is placed to the pixel.

    The example pipeline cropped each field to x 501-700, y 251-450 before measuring, so
    its centres are offset by (501, 251) from the full images the table names.
    """
    fly = shared_or_skip("cellprofiler-examplefly")
    out = tmp_path / "fly.h5"
    summary = crop_screen(fly / "output" / "Image.csv", out, objects=fly / "output" / "Nuclei.csv",
                          root=fly / "images", config=CropConfig(offset=(501, 251)))
    nuclei = pd.read_csv(fly / "output" / "Nuclei.csv")
    assert summary.n_cells + summary.n_edge_skipped + summary.n_rejected == len(nuclei) == 82
    assert summary.n_cells == 82 and summary.issues == {}
    info, crops, cells = store.read_info(out), store.read_crops(out), store.read_cells(out)
    assert info.channels == ("OrigBlue", "OrigGreen", "OrigRed")  # OrigBlue = *_D.TIF = DNA
    m = cells[["ImageNumber", "ObjectNumber"]].merge(nuclei, on=["ImageNumber", "ObjectNumber"])
    cx = np.floor(m["Location_Center_X"] + 0.5).astype(int)
    cy = np.floor(m["Location_Center_Y"] + 0.5).astype(int)
    dx = m["Location_MaxIntensity_X_CropBlue"].astype(int) - cx + 34
    dy = m["Location_MaxIntensity_Y_CropBlue"].astype(int) - cy + 34
    brightest = crops[np.arange(len(crops)), 0, dy, dx].astype(float)
    np.testing.assert_allclose(brightest, m["Intensity_MaxIntensity_CropBlue"] * 255, atol=0.5)
    # and the centre pixel is on the nucleus: brighter than the field's median background
    fields = store.read_fields(out).set_index("ImageNumber")
    background = fields.loc[cells["ImageNumber"], "Intensity_MedianIntensity_OrigBlue"].to_numpy()
    assert (crops[:, 0, 34, 34] > background + 5).mean() > 0.95


def test_examplefly_without_offset_is_wrong(tmp_path: Path) -> None:
    """The placement test above can fail: ignoring the pipeline's crop misplaces nuclei."""
    fly = shared_or_skip("cellprofiler-examplefly")
    out = tmp_path / "fly.h5"
    crop_screen(fly / "output" / "Image.csv", out, objects=fly / "output" / "Nuclei.csv",
                root=fly / "images")
    crops = store.read_crops(out)
    nuclei = pd.read_csv(fly / "output" / "Nuclei.csv")
    assert not np.allclose(crops[:, 0, 34, 34].max(),
                           nuclei["Intensity_MaxIntensity_CropBlue"] * 255)


def test_bbbc021_singlecell_imports_with_metadata(tmp_path: Path) -> None:
    folder = shared_or_skip("bbbc021", "singlecell")
    moa = shared_or_skip("bbbc021", "BBBC021_v1_moa.csv")
    out = tmp_path / "bbbc021.h5"
    summary = import_singlecell(folder, folder / "metadata.csv", out, moa=moa, workers=2)
    meta = pd.read_csv(folder / "metadata.csv")
    assert summary.n_cells == len(meta) == 5873 and summary.issues == {}
    info, cells = store.read_info(out), store.read_cells(out)
    assert info.channels == ("DAPI", "Tubulin", "Actin") and info.crop_size == 68
    assert info.dtype == np.uint16
    assert set(cells["Metadata_Plate"]) == {"Week4_27481", "Week4_27521", "Week4_27542",
                                            "Week4_27801", "Week4_27821"}
    chx = cells[cells["Metadata_Compound"] != "DMSO"]
    assert set(chx["Metadata_MOA"]) == {"Protein synthesis"}
    assert set(chx["Metadata_Concentration"]) == {5.0, 15.0, 50.0}
    assert set(cells.loc[cells["Metadata_Compound"] == "DMSO", "Metadata_MOA"]) == {"DMSO"}
    assert set(cells["Metadata_Site"]) <= {1, 2, 3, 4}
    # crop i of the store is the array the table names, channels first
    row = meta.iloc[100]
    arr = np.load(folder / row["crop_path"])
    sel = cells[(cells["Metadata_Plate"] == row["Image_Metadata_Plate_DAPI"])
                & (cells["ObjectNumber"] == row["cell_index"] + 1)
                & (cells["Metadata_Well"] == row["Image_Metadata_Well_DAPI"])]
    hits = [i for i in sel.index if np.array_equal(
        store.read_crops(out, slice(i, i + 1))[0], np.moveaxis(arr, -1, 0))]
    assert len(hits) == 1


def test_bbbc021_official_image_table_plans(tmp_path: Path) -> None:
    """BBBC021's database-style image table maps onto channels, plate, well, site and MOA."""
    table = shared_or_skip("bbbc021", "BBBC021_v1_image.csv.gz")
    moa = shared_or_skip("bbbc021", "BBBC021_v1_moa.csv")
    tasks, channels, issues = plan(table, None, CropConfig(segment=SegmentConfig()),
                                   root=tmp_path, moa=moa)
    assert channels == ["DAPI", "Tubulin", "Actin"] and issues == []
    assert len(tasks) == 13200
    first = tasks[0]
    assert first.meta["Metadata_Plate"] == "Week4_27481" and first.meta["Metadata_Well"] == "G10"
    assert first.meta["Metadata_Site"] == 1 and first.meta["Metadata_Compound"] == "5-fluorouracil"
    assert first.files[0][1] == tmp_path / "Week4" / "Week4_27481" / \
        "G10_s1_w1BEDC2073-A983-4B98-95E9-84466707A25D.tif"
    labelled = {t.meta["Metadata_MOA"] for t in tasks} - {""}
    assert len(labelled - {"DMSO"}) == 12
