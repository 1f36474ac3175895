"""`cellprof crop` from image + object tables: what a user checks in the crop store."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import CHANNELS, TinyScreen, disc_value, write_tiny_screen

from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.segment import SegmentConfig

CFG = CropConfig(size=16)


def run(screen: TinyScreen, out: Path, **kw) -> store.StoreInfo:
    kw.setdefault("config", CFG)
    crop_screen(screen.image_table, out, objects=kw.pop("objects", screen.objects), **kw)
    return store.read_info(out)


def test_crops_sit_on_their_nuclei(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert crops.shape == (12, 3, 16, 16) and crops.dtype == np.uint16
    assert summary.n_cells == 12 and summary.n_edge_skipped == 4 and summary.n_fields == 4
    for crop, obj in zip(crops, cells["ObjectNumber"], strict=True):
        for k in range(3):  # the centre pixel carries this nucleus's own value in each channel
            assert crop[k, 8, 8] == disc_value(k, obj)
    assert list(store.read_info(out).channels) == list(CHANNELS)
    assert set(cells["Metadata_Plate"]) == {"Week1_P1", "Week2_P1"}
    assert cells["Metadata_Compound"].tolist().count("taxol") == 6
    for col in ("Metadata_Well", "Metadata_Site", "Metadata_Concentration", "ImageNumber",
                "Location_Center_X", "Location_Center_Y", "Metadata_MOA"):
        assert col in cells.columns
    fields = store.read_fields(out)
    assert fields["Count_EdgeSkipped"].tolist() == [1, 1, 1, 1]
    assert (fields["Intensity_MaxIntensity_Actin"] >= 3000).all()
    assert not out.with_name(out.name + ".partial").exists()


def test_store_opens_with_plain_h5py(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    run(tiny, out)
    with h5py.File(out, "r") as f:
        assert f["crops"].shape == (12, 3, 16, 16)
        assert f["crops"].compression == "gzip"
        plates = f["cells/Metadata_Plate"].asstr()[:]
        frame = pd.DataFrame({k: v[:] for k, v in f["cells"].items()
                              if v.dtype.kind != "O"})
        assert len(frame) == len(plates) == 12
        assert f.attrs["crop_size"] == 16


def test_pad_mode_keeps_edge_cells(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    run(tiny, out, config=CropConfig(size=16, edge="pad"))
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert len(crops) == 16
    edge = cells["Crop_Padded"].to_numpy()
    assert edge.sum() == 4
    assert (crops[edge][:, :, :, :2] == 0).all()     # x < 0 is padding
    assert (crops[edge][:, 0, 8, 8] == disc_value(0, 4)).all()


def test_channels_chosen_and_ordered_by_name(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    info = run(tiny, out, config=CropConfig(size=16, channels=("Actin", "DNA")))
    assert info.channels == ("Actin", "DNA")
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert crops[0, 0, 8, 8] == disc_value(2, cells["ObjectNumber"][0])
    with pytest.raises(InputError, match="no channel Nucleus"):
        run(tiny, tmp_path / "x.h5", config=CropConfig(size=16, channels=("Nucleus",)))


def test_database_style_gzip_and_parquet_tables(tiny: TinyScreen, tmp_path: Path) -> None:
    ref = tmp_path / "ref.h5"
    run(tiny, ref)
    img = tiny.images.rename(columns=lambda c: "Image_" + c if c != "ImageNumber" else c)
    img = img.rename(columns={"Image_Metadata_Plate": "Image_Metadata_Plate_DNA",
                              "Image_Metadata_Well": "Image_Metadata_Well_DNA"})
    nuc = tiny.nuclei.rename(columns={"Location_Center_X": "Nuclei_Location_Center_X",
                                      "Location_Center_Y": "Nuclei_Location_Center_Y"})
    img.to_csv(tmp_path / "image.csv.gz", index=False)
    nuc.to_parquet(tmp_path / "nuclei.parquet")
    out = tmp_path / "db.h5"
    crop_screen(tmp_path / "image.csv.gz", out, objects=tmp_path / "nuclei.parquet", config=CFG)
    np.testing.assert_array_equal(store.read_crops(out), store.read_crops(ref))
    a, b = store.read_cells(out), store.read_cells(ref)
    pd.testing.assert_frame_equal(a[b.columns], b)


def test_moved_images_found_under_root(tiny: TinyScreen, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.move(str(tiny.root / "images"), moved)
    with pytest.raises(InputError):  # strict: every image is missing
        run(tiny, tmp_path / "a.h5", strict=True)
    info = run(tiny, tmp_path / "b.h5", root=moved)
    assert info.n_cells == 12


@pytest.mark.parametrize("dtype,compression", [(np.uint8, "lzw"), (np.uint16, "zlib")])
def test_multichannel_compressed_tiffs(tmp_path: Path, dtype, compression) -> None:
    screen = write_tiny_screen(tmp_path / "s", multichannel=True, dtype=dtype,
                               compression=compression)
    out = tmp_path / "crops.h5"
    info = run(screen, out)
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert info.n_cells == 12 and info.dtype == np.uint16
    assert crops[0, 1, 8, 8] == disc_value(1, cells["ObjectNumber"][0], dtype)


def test_multipage_tiff_channels_by_frame(tiny: TinyScreen, tmp_path: Path) -> None:
    """A multi-page TIFF (one page per channel) addressed by CellProfiler's Frame_ columns."""
    images = tiny.images.copy()
    for i, rec in images.iterrows():
        folder = Path(rec["PathName_DNA"])
        pages = [tifffile.imread(folder / rec[f"FileName_{c}"]) for c in CHANNELS]
        name = f"stack{i}.tif"
        with tifffile.TiffWriter(folder / name) as tw:
            for page in pages:
                tw.write(page, contiguous=False)
        for k, c in enumerate(CHANNELS):
            images.loc[i, f"FileName_{c}"] = name
            images.loc[i, f"Frame_{c}"] = k
    images.to_csv(tiny.image_table, index=False)
    out = tmp_path / "crops.h5"
    run(tiny, out)
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert crops[3, 2, 8, 8] == disc_value(2, cells["ObjectNumber"][3])


def test_moa_labels_joined(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    run(tiny, out, moa=tiny.moa)
    cells = store.read_cells(out)
    assert set(cells.loc[cells["Metadata_Compound"] == "taxol", "Metadata_MOA"]) == \
        {"Microtubule stabilizers"}
    pd.DataFrame({"compound": ["nope"], "concentration": [1.0], "moa": ["x"]}).to_csv(
        tmp_path / "bad_moa.csv", index=False)
    with pytest.raises(InputError, match="bad_moa.csv: matches no treatment"):
        run(tiny, tmp_path / "b.h5", moa=tmp_path / "bad_moa.csv")


def test_workers_give_the_same_file(tiny: TinyScreen, tmp_path: Path) -> None:
    run(tiny, tmp_path / "one.h5")
    run(tiny, tmp_path / "two.h5", workers=2)
    np.testing.assert_array_equal(store.read_crops(tmp_path / "one.h5"),
                                  store.read_crops(tmp_path / "two.h5"))
    pd.testing.assert_frame_equal(store.read_cells(tmp_path / "one.h5"),
                                  store.read_cells(tmp_path / "two.h5"))


def test_segmentation_finds_the_nuclei(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "seg.h5"
    crop_screen(tiny.image_table, out, config=CropConfig(
        size=16, segment=SegmentConfig(min_area=10, smoothing_sigma=0.5)))
    cells = store.read_cells(out)
    assert len(cells) == 12
    truth = tiny.nuclei[tiny.nuclei["ObjectNumber"] < 4]
    for n, g in cells.groupby("ImageNumber"):
        t = truth[truth["ImageNumber"] == n][["Location_Center_X", "Location_Center_Y"]].to_numpy()
        found = g[["Location_Center_X", "Location_Center_Y"]].to_numpy()
        dist = np.linalg.norm(found[:, None] - t[None], axis=2).min(axis=1)
        assert (dist < 1.0).all()


def test_illumination_correction_stored_and_applied(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "illum.h5"
    info = run(tiny, out, config=CropConfig(size=16, illumination=True))
    assert info.dtype == np.float32
    illum = store.read_illumination(out)
    assert set(illum) == {"Week1_P1", "Week2_P1"}
    assert illum["Week1_P1"].shape == (3, 60, 80)
    assert np.isfinite(store.read_crops(out)).all()


def test_existing_output_needs_overwrite(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    run(tiny, out)
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        run(tiny, out)
    run(tiny, out, overwrite=True)


def test_frame_column_picks_a_plane_of_each_channels_stack(tiny: TinyScreen,
                                                           tmp_path: Path) -> None:
    """One 2-plane stack per channel (say, two z-planes): Frame_<ch> = 1 picks the second;
    without Frame_ columns the crop stops before reading a field, naming the fix."""
    images = tiny.images.copy()
    for _, rec in images.iterrows():
        for c in CHANNELS:
            path = Path(rec[f"PathName_{c}"]) / rec[f"FileName_{c}"]
            plane = tifffile.imread(path)
            tifffile.imwrite(path, np.stack([np.zeros_like(plane), plane]),
                             photometric="minisblack")
    images.assign(**{f"Frame_{c}": 1 for c in CHANNELS}).to_csv(tiny.image_table, index=False)
    run(tiny, tmp_path / "framed.h5")
    framed = tmp_path / "framed.h5"
    crops, cells = store.read_crops(framed), store.read_cells(framed)
    assert len(crops) == 12 and crops[0, 2, 8, 8] == disc_value(2, cells["ObjectNumber"][0])
    images.to_csv(tiny.image_table, index=False)
    with pytest.raises(InputError, match="holds 2 planes .*channel DNA.*add Frame_<channel>"):
        crop_screen(tiny.image_table, tmp_path / "unframed.h5", objects=tiny.objects,
                    config=CFG)
