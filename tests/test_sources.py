"""The tables labs hold: objects find their image by keys, never by row order.

JUMP ``load_data.csv`` (no ImageNumber; objects keyed by plate/well/site), CellProfiler's
ExportToDatabase SQLite and CytoTable's single-cell Parquet, each built here from the tiny
screen of ``conftest`` so every crop's centre pixel says which nucleus it is.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TinyScreen, disc_value
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen

CFG = CropConfig(size=16)
KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
runner = CliRunner()


def _assert_on_their_nuclei(out: Path, tiny: TinyScreen) -> None:
    """12 cells (3 interior nuclei x 4 fields), each centred on its own nucleus, each in the
    well its image is in."""
    cells, crops = store.read_cells(out), store.read_crops(out)
    assert len(cells) == 12
    centre = crops[:, 0, 8, 8].astype(int)
    assert centre.tolist() == [disc_value(0, j) for j in cells["ObjectNumber"]]
    # nucleus 1 sits at x = 20 + n in image n: the crop's x says which image it came from
    truth = tiny.images.set_index(["Metadata_Plate", "Metadata_Well"])["ImageNumber"]
    first = cells[cells["ObjectNumber"] == 1]
    n = truth.loc[list(zip(first["Metadata_Plate"], first["Metadata_Well"], strict=True))]
    np.testing.assert_allclose(first["Location_Center_X"], 20.0 + n.to_numpy())


def _objects_with_keys(tiny: TinyScreen) -> pd.DataFrame:
    """The nuclei table with each object's plate/well/site, as JUMP's object tables have."""
    return tiny.nuclei.merge(tiny.images[["ImageNumber"] + KEYS], on="ImageNumber")


def test_unnumbered_image_table_is_never_paired_by_row_order(tiny: TinyScreen,
                                                            tmp_path: Path) -> None:
    """An image table without ImageNumber, rows reversed, against objects numbered by image:
    pairing by row order would put every cell in the wrong well, so it is refused."""
    tiny.images.drop(columns=["ImageNumber"]).iloc[::-1].to_csv(tiny.image_table, index=False)
    with pytest.raises(InputError, match="Nuclei.csv: its ImageNumber cannot be matched.*"
                                         "Image.csv has no ImageNumber"):
        crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects, config=CFG)
    assert not (tmp_path / "c.h5").exists()


def test_unnumbered_image_table_joins_on_shared_metadata(tiny: TinyScreen,
                                                        tmp_path: Path) -> None:
    tiny.images.drop(columns=["ImageNumber"]).iloc[::-1].to_csv(tiny.image_table, index=False)
    _objects_with_keys(tiny).to_csv(tiny.objects, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    _assert_on_their_nuclei(out, tiny)
    assert any("on Metadata_Plate, Metadata_Well, Metadata_Site" in n for n in summary.notes)


def test_numbers_that_contradict_the_wells_are_refused(tiny: TinyScreen, tmp_path: Path) -> None:
    """Both tables number their images, but differently: the wells they carry disagree."""
    objects = _objects_with_keys(tiny)
    images = tiny.images.copy()
    images["ImageNumber"] = images["ImageNumber"].to_numpy()[::-1]
    images.to_csv(tiny.image_table, index=False)
    objects.to_csv(tiny.objects, index=False)
    with pytest.raises(InputError, match="number images differently"):
        crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects, config=CFG)


def test_keys_that_do_not_identify_an_image_are_refused(tiny: TinyScreen,
                                                       tmp_path: Path) -> None:
    images = tiny.images.drop(columns=["ImageNumber", "Metadata_Site"])
    images["Metadata_Well"] = "B02"
    images.to_csv(tiny.image_table, index=False)
    _objects_with_keys(tiny).drop(columns=["ImageNumber"]).to_csv(tiny.objects, index=False)
    with pytest.raises(InputError, match="do not identify one image"):
        crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects, config=CFG)


def _jump_load_data(tiny: TinyScreen) -> tuple[Path, Path]:
    """JUMP's layout: five Orig* channels, Metadata_Source/Plate/Well/Site and no
    ImageNumber; objects keyed by plate/well/site with Nuclei_Location_Center_X/Y."""
    img = tiny.images
    load = pd.DataFrame({"Metadata_Source": "source_4", **{k: img[k] for k in KEYS}})
    for name, src in (("OrigDNA", "DNA"), ("OrigER", "Tubulin"), ("OrigRNA", "Actin"),
                      ("OrigAGP", "Tubulin"), ("OrigMito", "Actin")):
        load[f"FileName_{name}"] = img[f"FileName_{src}"]
        load[f"PathName_{name}"] = img[f"PathName_{src}"]
    load = load.iloc[[2, 0, 3, 1]]  # row order must not matter
    path = tiny.root / "load_data.csv"
    load.to_csv(path, index=False)
    obj = _objects_with_keys(tiny)
    obj = pd.DataFrame({**{k: obj[k] for k in KEYS},
                        "Nuclei_Location_Center_X": obj["Location_Center_X"],
                        "Nuclei_Location_Center_Y": obj["Location_Center_Y"],
                        "Nuclei_Number_Object_Number": obj["ObjectNumber"]})
    opath = tiny.root / "nuclei.csv"
    obj.to_csv(opath, index=False)
    return path, opath


def test_jump_load_data_crops_through_the_cli(tiny: TinyScreen, tmp_path: Path) -> None:
    load, nuclei = _jump_load_data(tiny)
    out = tmp_path / "jump.h5"
    res = runner.invoke(app, ["crop", str(load), "--objects", str(nuclei), "--size", "16",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "paired with images" in res.output and "Metadata_Well" in res.output
    assert store.read_info(out).channels == ("OrigDNA", "OrigER", "OrigRNA", "OrigAGP",
                                             "OrigMito")
    _assert_on_their_nuclei(out, tiny)
    assert set(store.read_cells(out)["Metadata_Source"]) == {"source_4"}


def _database_style(tiny: TinyScreen) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tiny screen as ExportToDatabase writes it: TableNumber + ImageNumber keys,
    every column prefixed with its table, and measurements the crop never needs."""
    img = tiny.images.rename(columns=lambda c: c if c == "ImageNumber" else f"Image_{c}")
    img.insert(0, "TableNumber", 7)
    img["Image_Intensity_MeanIntensity_DNA"] = 0.5
    nuc = pd.DataFrame({"TableNumber": 7, "ImageNumber": tiny.nuclei["ImageNumber"],
                        "Nuclei_Number_Object_Number": tiny.nuclei["ObjectNumber"],
                        "Nuclei_Location_Center_X": tiny.nuclei["Location_Center_X"],
                        "Nuclei_Location_Center_Y": tiny.nuclei["Location_Center_Y"],
                        "Nuclei_AreaShape_Area": 49.0})
    return img, nuc


def _sqlite(path: Path, tables: dict[str, pd.DataFrame]) -> Path:
    with sqlite3.connect(path) as con:
        for name, frame in tables.items():
            frame.to_sql(name, con, index=False)
    con.close()
    return path


def test_cellprofiler_sqlite_tables_found_by_name(tiny: TinyScreen, tmp_path: Path) -> None:
    img, nuc = _database_style(tiny)
    db = _sqlite(tmp_path / "screen.sqlite", {"MyExpt_Per_Image": img, "MyExpt_Per_Nuclei": nuc,
                                              "Experiment": pd.DataFrame({"x": [1]})})
    out = tmp_path / "db.h5"
    res = runner.invoke(app, ["crop", str(db), "--size", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "MyExpt_Per_Image" in res.output and "MyExpt_Per_Nuclei" in res.output
    _assert_on_their_nuclei(out, tiny)
    assert set(store.read_cells(out)["TableNumber"]) == {7}


def test_cellprofiler_sqlite_tables_chosen_with_an_option(tiny: TinyScreen,
                                                         tmp_path: Path) -> None:
    img, nuc = _database_style(tiny)
    cells = nuc.assign(Nuclei_Location_Center_X=-1.0)  # a decoy object table: wrong centres
    db = _sqlite(tmp_path / "screen.db", {"Per_Image": img, "Per_Object": nuc,
                                          "Per_Cells": cells})
    out = tmp_path / "db.h5"
    summary = crop_screen(db, out, config=CropConfig(size=16, tables=("Per_Image", "Per_Object")))
    _assert_on_their_nuclei(out, tiny)
    assert summary.issues == {}
    with pytest.raises(InputError, match="screen.db: no table Per_Nucleus .*Per_Cells"):
        crop_screen(db, tmp_path / "x.h5", config=CropConfig(size=16,
                                                             tables=("Per_Image", "Per_Nucleus")))


def test_sqlite_without_an_image_table_names_the_tables(tmp_path: Path) -> None:
    db = _sqlite(tmp_path / "other.sqlite", {"results": pd.DataFrame({"a": [1]})})
    with pytest.raises(InputError, match=r"other.sqlite: no image table \(Per_Image; tables: "
                                         r"results\); choose with --tables"):
        crop_screen(db, tmp_path / "x.h5", config=CFG)


def _cytotable(tiny: TinyScreen, path: Path) -> Path:
    """CytoTable's single-cell Parquet: image and nuclei columns side by side, one row per
    nucleus, keys prefixed Metadata_."""
    img, nuc = _database_style(tiny)
    img = img.rename(columns={"TableNumber": "Metadata_TableNumber",
                              "ImageNumber": "Metadata_ImageNumber"})
    nuc = nuc.rename(columns={
        "TableNumber": "Metadata_TableNumber", "ImageNumber": "Metadata_ImageNumber",
        "Nuclei_Number_Object_Number": "Metadata_Nuclei_Number_Object_Number"})
    table = nuc.merge(img, on=["Metadata_TableNumber", "Metadata_ImageNumber"])
    table.sample(frac=1.0, random_state=0).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("objects_too", [False, True])
def test_cytotable_single_cell_parquet_is_both_tables(tiny: TinyScreen, tmp_path: Path,
                                                      objects_too: bool) -> None:
    table = _cytotable(tiny, tmp_path / "cells.parquet")
    out = tmp_path / "ct.h5"
    args = ["crop", str(table), "--size", "16", "--out", str(out)]
    res = runner.invoke(app, args + (["--objects", str(table)] if objects_too else []))
    assert res.exit_code == 0, res.output
    assert "single-cell table: 4 images and 16 objects" in res.output
    _assert_on_their_nuclei(out, tiny)


def test_plate_shard_reports_no_objects_of_other_plates(tiny: TinyScreen, tmp_path: Path) -> None:
    """Objects are paired with the whole image table before --plates picks a shard, so the
    other plates' objects are simply not this shard's, not "unknown images"."""
    out = tmp_path / "p1.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects,
                          config=CropConfig(size=16, plates=("Week1_P1",)))
    assert summary.issues == {} and summary.n_cells == 6
    assert set(store.read_cells(out)["Metadata_Plate"]) == {"Week1_P1"}
