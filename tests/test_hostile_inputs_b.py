"""Issue 22, round two (part b): the table inputs of ``crop`` (JUMP load_data.csv, SQLite,
CytoTable Parquet, OME and multi-page TIFFs). Each case used to exit 0 with wrong data, or
exit 1 with a message the user could not act on; now it is handled and said, or refused in
one line naming the file, table, column, row or key values at fault and the fix."""

from __future__ import annotations

import gzip
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import CHANNELS, TinyScreen, write_tiny_screen
from test_hostile import one_line_error
from test_multichannel import _centres_say_channels
from test_sources import (
    _assert_on_their_nuclei,
    _database_style,
    _jump_load_data,
    _sqlite,
)
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen

runner = CliRunner()
CFG = CropConfig(size=16)


# --- item 4: each OME-TIFF's planes are mapped by its own channel names --------------------

def _ome_stacks(tiny: TinyScreen, orders: list[tuple[str, ...]]) -> None:
    """Rewrite field ``i``'s (3, H, W) file as an OME-TIFF whose planes follow ``orders[i]``
    (a name outside ``CHANNELS`` holds the Actin plane)."""
    for i, row in tiny.images.iterrows():
        path = Path(row["PathName_DNA"]) / row["FileName_DNA"]
        data = tifffile.imread(path)
        index = [CHANNELS.index(c) if c in CHANNELS else 2 for c in orders[i]]
        tifffile.imwrite(path, data[index], photometric="minisblack", ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": list(orders[i])}})


def _stack_table(tiny: TinyScreen, columns: tuple[str, ...] | None) -> Path:
    """The image table without ``Frame_`` columns: one ``FileName_Image`` column for the
    stack (``columns`` None), or one ``FileName_<ch>`` per channel in ``columns``, all
    naming the same stack."""
    img = tiny.images
    table = img.drop(columns=[c for c in img.columns if c.startswith(
        ("Frame_", "FileName_", "PathName_"))])
    for name in columns or ("Image",):
        table[f"FileName_{name}"] = img["FileName_DNA"]
        table[f"PathName_{name}"] = img["PathName_DNA"]
    table.to_csv(tiny.image_table, index=False)
    return tiny.image_table


@pytest.mark.parametrize("columns", [None, ("Actin", "DNA")])
def test_ome_planes_are_mapped_by_each_files_own_names(tmp_path: Path,
                                                       columns: tuple[str, ...] | None) -> None:
    """Every other file stores its planes in reverse order, as its OME names say: reading
    the first file's names for all put Actin in the DNA channel of those fields."""
    tiny = write_tiny_screen(tmp_path / "s", multichannel=True)
    _ome_stacks(tiny, [CHANNELS, CHANNELS[::-1]] * 2)
    table = _stack_table(tiny, columns)
    out = tmp_path / "c.h5"
    summary = crop_screen(table, out, objects=tiny.objects, config=CFG, strict=True)
    channels = columns or CHANNELS
    assert store.read_info(out).channels == channels
    _centres_say_channels(out, channels)
    assert any("each file's own OME channel names" in n for n in summary.notes)


def test_ome_file_lacking_a_channel_is_refused_naming_its_names(tmp_path: Path) -> None:
    tiny = write_tiny_screen(tmp_path / "s", multichannel=True)
    _ome_stacks(tiny, [CHANNELS, CHANNELS, ("DNA", "Tubulin", "Mito"), CHANNELS])
    table = _stack_table(tiny, None)
    out = tmp_path / "c.h5"
    summary = crop_screen(table, out, objects=tiny.objects, config=CFG)
    assert summary.issues == {"missing_channel": 1} and summary.n_cells == 9
    reason = store.read_issues(out)["reason"][0]
    assert "Week2_P1_B02_s1.tif: has no channel Actin" in reason
    assert "its OME channel names: DNA, Tubulin, Mito" in reason
    res = runner.invoke(app, ["crop", str(table), "--objects", str(tiny.objects), "--size",
                              "16", "--strict", "--out", str(tmp_path / "d.h5")])
    one_line_error(res, "Week2_P1_B02_s1.tif", "no channel Actin", "DNA, Tubulin, Mito")


def test_ome_names_lacking_a_table_channel_are_listed(tmp_path: Path) -> None:
    """The table names DAPI, the files DNA: the message used to say only "add Frame_"."""
    tiny = write_tiny_screen(tmp_path / "s", multichannel=True)
    _ome_stacks(tiny, [CHANNELS] * 4)
    table = _stack_table(tiny, ("DAPI", "Actin"))
    res = runner.invoke(app, ["crop", str(table), "--objects", str(tiny.objects), "--size",
                              "16", "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "Week1_P1_B02_s1.tif", "DAPI", "its OME channel names are DNA, "
                   "Tubulin, Actin", "Frame_DAPI")


# --- item 5: per-object metadata of a CytoTable Parquet stays per object ------------------

def _cytotable_frame(tiny: TinyScreen) -> pd.DataFrame:
    """CytoTable's single-cell table (as in test_sources) before it is written: image and
    nuclei columns side by side, keys prefixed ``Metadata_``, rows shuffled."""
    img, nuc = _database_style(tiny)
    keys = {"TableNumber": "Metadata_TableNumber", "ImageNumber": "Metadata_ImageNumber"}
    nuc = nuc.rename(columns={**keys, "Nuclei_Number_Object_Number":
                              "Metadata_Nuclei_Number_Object_Number"})
    table = nuc.merge(img.rename(columns=keys), on=list(keys.values()))
    return table.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_cytotable_per_object_metadata_stays_per_object(tiny: TinyScreen,
                                                        tmp_path: Path) -> None:
    """``Metadata_Cells_Parent_Nuclei`` differs for every cell of an image: it used to be
    the image's first row's value for all of them."""
    table = _cytotable_frame(tiny)
    objects = table["Metadata_Nuclei_Number_Object_Number"]
    table["Metadata_Cells_Parent_Nuclei"] = 100 * table["Metadata_ImageNumber"] + objects
    table["Image_Metadata_Barcode"] = "BC" + table["Metadata_ImageNumber"].astype(str)
    path = tmp_path / "cells.parquet"
    table.to_parquet(path, index=False)
    out = tmp_path / "c.h5"
    crop_screen(path, out, config=CFG)
    _assert_on_their_nuclei(out, tiny)
    cells, fields = store.read_cells(out), store.read_fields(out)
    assert (cells["Metadata_Cells_Parent_Nuclei"]
            == 100 * cells["ImageNumber"] + cells["ObjectNumber"]).all()
    assert (cells["Metadata_Barcode"] == "BC" + cells["ImageNumber"].astype(str)).all()
    assert "Metadata_Cells_Parent_Nuclei" not in fields.columns
    assert (fields["Metadata_Barcode"] == "BC" + fields["ImageNumber"].astype(str)).all()


def test_cytotable_numbering_images_per_plate_hints_at_table_number(tiny: TinyScreen,
                                                                   tmp_path: Path) -> None:
    """Images numbered 1, 2 on each plate and no TableNumber: the message used to be "the
    two tables number images differently" about one file."""
    table = _cytotable_frame(tiny).drop(columns=["Metadata_TableNumber"])
    table["Metadata_ImageNumber"] = (table["Metadata_ImageNumber"] - 1) % 2 + 1
    path = tmp_path / "cells.parquet"
    table.to_parquet(path, index=False)
    res = runner.invoke(app, ["crop", str(path), "--size", "16", "--out",
                              str(tmp_path / "c.h5")])
    one_line_error(res, "cells.parquet", "ImageNumber 1", "Metadata_Plate", "Week1_P1",
                   "Week2_P1", "TableNumber")


# --- items 6 and 7: whose centres are cropped -----------------------------------------------

def _per_object(tiny: TinyScreen, tmp_path: Path, prefixes: tuple[str, ...],
                parquet: bool = False) -> Path:
    """An ExportToDatabase file (or CytoTable Parquet) whose object table holds centres of
    ``prefixes`` objects only, each at the nucleus centres (so crops still say whose)."""
    img, nuc = _database_style(tiny)
    for p in prefixes:
        for axis in ("X", "Y"):
            nuc[f"{p}_Location_Center_{axis}"] = nuc[f"Nuclei_Location_Center_{axis}"]
    if "Nuclei" not in prefixes:
        nuc = nuc.drop(columns=["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"])
    if not parquet:
        return _sqlite(tmp_path / "screen.sqlite", {"Per_Image": img, "Per_Object": nuc})
    keys = {"TableNumber": "Metadata_TableNumber", "ImageNumber": "Metadata_ImageNumber"}
    table = nuc.rename(columns=keys).merge(img.rename(columns=keys), on=list(keys.values()))
    table.to_parquet(tmp_path / "cells.parquet", index=False)
    return tmp_path / "cells.parquet"


def test_object_name_the_table_lacks_is_refused_listing_its_objects(tiny: TinyScreen,
                                                                   tmp_path: Path) -> None:
    """``--object-name Cytoplasm`` used to crop at the nuclei centres without a word."""
    db = _per_object(tiny, tmp_path, ("Nuclei", "Cells"))
    res = runner.invoke(app, ["crop", str(db), "--object-name", "Cytoplasm", "--size", "16",
                              "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "screen.sqlite:Per_Object", "no Cytoplasm centres",
                   "Cytoplasm_Location_Center_X", "Cells, Nuclei", "--object-name")
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("parquet", [False, True])
def test_only_cell_centres_are_used_and_said_or_refused_for_nuclei(
        tiny: TinyScreen, tmp_path: Path, parquet: bool) -> None:
    """An object table with only ``Cells_Location_*``: cropped at the cell centres, and the
    run says so (printed, and in the store's summary); ``--object-name Nuclei`` refuses."""
    path = _per_object(tiny, tmp_path, ("Cells",), parquet)
    out = tmp_path / "c.h5"
    res = runner.invoke(app, ["crop", str(path), "--size", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    _assert_on_their_nuclei(out, tiny)
    said = "no Nuclei centres: cropped at the centres of Cells"
    assert said in res.output
    assert any(said in n for n in store.read_info(out).summary["notes"])
    res = runner.invoke(app, ["crop", str(path), "--object-name", "Nuclei", "--size", "16",
                              "--out", str(tmp_path / "d.h5")])
    one_line_error(res, path.name, "no Nuclei centres", "Cells", "--object-name")


# --- item 11: images edited between a kill and its rerun ----------------------------------

class _Interrupt(Exception):
    pass


def _stop_after(fields: int):
    def progress(stage: str, done: int, total: int) -> None:
        if stage == "crop" and done >= fields:
            raise _Interrupt
    return progress


def test_images_edited_between_kill_and_rerun_start_over(
        tiny: TinyScreen, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first two fields were committed, then their images were corrected: the rerun
    used to keep the old pixels of those cells."""
    out = tmp_path / "c.h5"
    with pytest.raises(_Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    progress=_stop_after(2))
    first = tiny.images.iloc[0]
    path = Path(first["PathName_DNA"]) / first["FileName_DNA"]
    tifffile.imwrite(path, tifffile.imread(path) + 7)  # same size, new pixels
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.resumed_fields == 0 and summary.n_cells == 12
    assert "starting over" in caplog.text and "image files changed" in caplog.text
    cells, crops = store.read_cells(out), store.read_crops(out)
    first_field = (cells["ImageNumber"] == 1).to_numpy()
    assert (crops[first_field, 0, 8, 8] == 1000 + 10 * cells["ObjectNumber"][first_field]
            + 7).all()


def test_unchanged_images_still_resume(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    with pytest.raises(_Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    progress=_stop_after(2))
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.resumed_fields == 2 and summary.n_cells == 12


def test_image_fingerprint_is_stat_only_and_fast(tmp_path: Path) -> None:
    """2,000 files are fingerprinted by size and time, without reading them (docs/cli.md
    gives the time for 20,000)."""
    from cellprof.prepare.crop import image_fingerprint

    paths = []
    for i in range(2000):
        paths.append(tmp_path / f"f{i}.tif")
        paths[-1].write_bytes(b"x" * (i % 7))
    t0 = time.perf_counter()
    before = image_fingerprint(paths, tmp_path)
    assert time.perf_counter() - t0 < 2.0 and before["files"] == 2000
    os.utime(paths[5], ns=(1, 1))
    assert image_fingerprint(paths, tmp_path)["hash"] != before["hash"]


# --- key values that do not meet ----------------------------------------------------------

def test_nan_key_in_the_objects_names_the_column_and_rows(tiny: TinyScreen,
                                                          tmp_path: Path) -> None:
    """One empty ``Metadata_Site`` made every object "not in load_data.csv"."""
    load, nuclei = _jump_load_data(tiny)
    obj = pd.read_csv(nuclei)
    obj.loc[[3, 7], "Metadata_Site"] = np.nan
    obj.to_csv(nuclei, index=False)
    res = runner.invoke(app, ["crop", str(load), "--objects", str(nuclei), "--size", "16",
                              "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "nuclei.csv", "Metadata_Site is empty in 2 rows (5, 9)",
                   "load_data.csv")


def test_zero_padded_wells_are_matched_and_said(tiny: TinyScreen, tmp_path: Path) -> None:
    """Wells ``B2`` in load_data.csv, ``B02`` in the objects: cells used to be dropped."""
    load, nuclei = _jump_load_data(tiny)
    table = pd.read_csv(load)
    table["Metadata_Well"] = table["Metadata_Well"].str.replace("0", "")
    table.to_csv(load, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(load, out, objects=nuclei, config=CFG)
    assert summary.n_cells == 12 and summary.issues == {}
    assert any("B02" in n and "B2" in n and "zero" in n for n in summary.notes)
    assert set(store.read_cells(out)["Metadata_Well"]) == {"B2", "C3"}


def test_empty_well_of_a_numbered_object_is_no_disagreement(tiny: TinyScreen,
                                                            tmp_path: Path) -> None:
    """Objects paired by ImageNumber whose well is empty in one row: that row claims no
    well, so it is not "the two tables number images differently"."""
    obj = tiny.nuclei.merge(tiny.images[["ImageNumber", "Metadata_Well"]], on="ImageNumber")
    obj.loc[5, "Metadata_Well"] = np.nan
    obj.to_csv(tiny.objects, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.n_cells == 12 and summary.issues == {}


def test_keys_that_do_not_meet_show_examples_from_both_tables(tiny: TinyScreen,
                                                              tmp_path: Path) -> None:
    load, nuclei = _jump_load_data(tiny)
    obj = pd.read_csv(nuclei)
    obj["Metadata_Plate"] = obj["Metadata_Plate"].str.replace("Week2", "week2")
    obj.to_csv(nuclei, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(load, out, objects=nuclei, config=CFG)
    assert summary.n_cells == 6 and summary.issues == {"unknown_image": 8}
    note = next(n for n in summary.notes if "match no image" in n)
    assert "8 of 16 objects" in note and "week2_P1" in note and "Week2_P1" in note
    reason = store.read_issues(out)["reason"][0]
    assert "Metadata_Plate=week2_P1, Metadata_Well=" in reason and "load_data.csv" in reason


# --- --tables -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("Per_Nuclei,Per_Image", ["Per_Nuclei has no FileName_", "IMAGE,OBJECTS",
                              "--tables Per_Image,Per_Nuclei"]),
    ("Per_Image,Per_Nuclei,Per_Cells", ["--tables takes IMAGE,OBJECTS", "3 names"]),
    (",", ["--tables takes IMAGE,OBJECTS", "0 names"]),
    ("Per_Image", ["--tables takes IMAGE,OBJECTS", "1 name"]),
])
def test_tables_option_takes_image_then_objects(tiny: TinyScreen, tmp_path: Path, value: str,
                                                words: list[str]) -> None:
    img, nuc = _database_style(tiny)
    db = _sqlite(tmp_path / "screen.sqlite", {"Per_Image": img, "Per_Nuclei": nuc,
                                              "Per_Cells": nuc})
    res = runner.invoke(app, ["crop", str(db), "--tables", value, "--size", "16", "--out",
                              str(tmp_path / "c.h5")])
    one_line_error(res, *words)


# --- files that cannot be read, columns that are empty -----------------------------------

@pytest.mark.parametrize("which", ["image", "objects"])
def test_truncated_csv_gz_names_the_file(tiny: TinyScreen, tmp_path: Path, which: str) -> None:
    src = tiny.image_table if which == "image" else tiny.objects
    data = gzip.compress(pd.concat([pd.read_csv(src)] * 50).to_csv(index=False).encode())
    gz = tmp_path / f"{src.stem}.csv.gz"
    gz.write_bytes(data[:len(data) // 2])
    table, objects = (gz, tiny.objects) if which == "image" else (tiny.image_table, gz)
    res = runner.invoke(app, ["crop", str(table), "--objects", str(objects), "--size", "16",
                              "--out", str(tmp_path / "c.h5")])
    one_line_error(res, gz.name, "cannot be read", "truncated")


def test_empty_file_name_column_is_named(tiny: TinyScreen, tmp_path: Path) -> None:
    tiny.images.assign(FileName_Tubulin="").to_csv(tiny.image_table, index=False)
    res = runner.invoke(app, ["crop", str(tiny.image_table), "--objects", str(tiny.objects),
                              "--size", "16", "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "Image.csv: no usable image rows", "FileName_Tubulin is empty in all "
                   "4 rows")


def test_nan_crop_path_names_the_row(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"c{i}.npy", np.full((12, 12, 1), i, np.uint16))
    pd.DataFrame({"crop_path": ["c0.npy", None, "c2.npy"], "plate": "P1", "well": "B02",
                  "compound": "DMSO", "concentration": 0.0}).to_csv(tmp_path / "meta.csv",
                                                                     index=False)
    res = runner.invoke(app, ["crop", "--singlecell", str(folder), "--metadata",
                              str(tmp_path / "meta.csv"), "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "meta.csv", "crop_path is empty in row 3")

