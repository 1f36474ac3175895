"""A new lab's images as they come: a folder of single-channel 8-bit TIFFs, small nuclei, no
CellProfiler tables, the cell stain before the DNA. Each test checks what that user checks:
the command runs, the crops sit on the nuclei, and every refusal is one line naming the fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.folder import build_image_table
from cellprof.prepare.segment import SegmentConfig
from cellprof.prepare.tables import is_nuclear

SIDE = 256
PATTERN = "{well}_s{site}_{channel}.tif"
runner = CliRunner()


def write_folder(folder: Path, channels: tuple[str, ...] = ("Cell", "DNA", "PH3"),
                 wells: tuple[str, ...] = ("B02", "C03"), sites: int = 2, seed: int = 0
                 ) -> pd.DataFrame:
    """8-bit ``{well}_s{site}_{channel}.tif`` fields: nuclei 10 px across (radius 5),
    each cell's body (radius 12) off its nucleus by 7 px, a mitosis marker lit in one
    nucleus in ten. ``channels`` name the cell stain, the DNA and the marker, in that
    role order. Returns the true nucleus centres (well, site, x, y)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    truth = []
    for well in wells:
        for site in range(1, sites + 1):
            centres: list[tuple[float, float]] = []
            while len(centres) < 40:  # nuclei 24 px apart at least: none touch
                x, y = rng.uniform(6, SIDE - 6, 2)
                if all((x - a) ** 2 + (y - b) ** 2 > 24 ** 2 for a, b in centres):
                    centres.append((x, y))
            planes = np.zeros((3, SIDE, SIDE), np.float64)
            for x, y in centres:
                angle = rng.uniform(0, 2 * np.pi)
                cx, cy = x + 7 * np.cos(angle), y + 7 * np.sin(angle)
                planes[0][(xx - cx) ** 2 + (yy - cy) ** 2 <= 144] = 70
                nucleus = (xx - x) ** 2 + (yy - y) ** 2 <= 25
                planes[1][nucleus] = rng.uniform(120, 180)
                if rng.random() < 0.1:
                    planes[2][nucleus] = 220
                truth.append({"well": well, "site": site, "x": x, "y": y})
            planes = ndi.gaussian_filter(planes, (0, 0.7, 0.7)) + 10
            planes += rng.normal(0, 3, planes.shape)
            for name, plane in zip(channels, planes.clip(0, 255).astype(np.uint8),
                                   strict=True):
                tifffile.imwrite(folder / f"{well}_s{site}_{name}.tif", plane)
    return pd.DataFrame(truth)


def off_nucleus(cells: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """Each crop's distance (px) from the nearest true nucleus centre of its field."""
    out = np.empty(len(cells))
    for i, (well, site, x, y) in enumerate(cells[["Metadata_Well", "Metadata_Site",
                                                  "Location_Center_X",
                                                  "Location_Center_Y"]].itertuples(index=False)):
        t = truth[(truth["well"] == well) & (truth["site"] == site)]
        out[i] = np.hypot(t["x"] - x, t["y"] - y).min()
    return out


def crop(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["crop", *args])
    return res.exit_code, " ".join(res.output.split())  # rich wraps long notes


def test_a_folder_of_tiffs_crops_on_its_nuclei(tmp_path: Path) -> None:
    """The issue's command: a folder, a pattern, --segment, no table written by hand."""
    truth = write_folder(tmp_path / "images")
    out = tmp_path / "crops.h5"
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "--size", "36", "-o", str(out))
    assert code == 0, said
    assert "4 fields" in said and "channels DNA, Cell, PH3" in said and "12 image files" in said
    assert "segmented in channel DNA" in said
    cells = store.read_cells(out)
    dist = off_nucleus(cells, truth)
    assert len(cells) >= 100 and (dist < 1.5).mean() > 0.97, np.percentile(dist, [50, 90])
    assert store.read_crops(out).shape[1:] == (3, 36, 36)
    table = pd.read_csv(tmp_path / "crops.h5.Image.csv")  # beside the store, to edit
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "FileName_DNA",
            "PathName_DNA", "FileName_Cell", "FileName_PH3"} <= set(table.columns)
    assert table[["Metadata_Well", "Metadata_Site"]].values.tolist() == [
        ["B02", 1], ["B02", 2], ["C03", 1], ["C03", 2]]
    assert (table["FileName_DNA"] == [f"{w}_s{s}_DNA.tif" for w, s in
                                      (("B02", 1), ("B02", 2), ("C03", 1), ("C03", 2))]).all()


def test_the_written_table_crops_again_and_is_not_overwritten_once_edited(tmp_path: Path
                                                                          ) -> None:
    write_folder(tmp_path / "images", wells=("B02",), sites=1)
    table = tmp_path / "a.h5.Image.csv"
    args = ["--pattern", PATTERN, "--segment", "--size", "36"]
    assert crop(str(tmp_path / "images"), *args, "-o", str(tmp_path / "a.h5"))[0] == 0
    code, said = crop(str(table), "--segment", "--size", "36", "-o", str(tmp_path / "b.h5"))
    assert code == 0, said
    assert len(store.read_cells(tmp_path / "b.h5")) == len(store.read_cells(tmp_path / "a.h5"))
    edited = pd.read_csv(table).assign(Metadata_Plate="MyPlate")
    edited.to_csv(table, index=False)
    code, said = crop(str(tmp_path / "images"), *args, "-o", str(tmp_path / "a.h5"),
                      "--overwrite")
    assert code == 0  # --overwrite rebuilds it
    edited.to_csv(table, index=False)
    (tmp_path / "a.h5").unlink()
    code, said = crop(str(tmp_path / "images"), *args, "-o", str(tmp_path / "a.h5"))
    assert code == 1 and "differs from the table built now" in said and "--overwrite" in said
    assert pd.read_csv(table)["Metadata_Plate"].eq("MyPlate").all()


def test_the_hand_written_table_of_the_docs_crops(tmp_path: Path) -> None:
    """docs/cli.md's example Image.csv, with its images beside it, is all a crop needs."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    (example,) = re.findall(r"```csv\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    truth = write_folder(tmp_path / "images", channels=("Cell", "DNA", "PH3"),
                         wells=("B02",), sites=2)
    (tmp_path / "Image.csv").write_text(example)
    out = tmp_path / "crops.h5"
    crop_screen(tmp_path / "Image.csv", out, config=CropConfig(size=36, segment=SegmentConfig()))
    assert store.read_crops(out).shape[1] == 2
    assert (off_nucleus(store.read_cells(out), truth) < 1.5).mean() > 0.97


def test_without_a_pattern_a_common_one_is_found_and_said(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", wells=("B02",), sites=1)
    built = build_image_table(tmp_path / "images")
    assert built.pattern == "{well}_s{site}_{channel}" and not built.given
    assert built.channels == ["DNA", "Cell", "PH3"] and len(built.table) == 1  # DNA first
    fly = tmp_path / "fly"  # ExampleFly's names: channel = the last part, D F R
    fly.mkdir()
    for stem in ("01_POS002", "01_POS076"):
        for ch in "DFR":
            tifffile.imwrite(fly / f"{stem}_{ch}.TIF", np.zeros((8, 8), np.uint8))
    built = build_image_table(fly)
    assert built.channels == ["D", "F", "R"]
    assert built.table["Metadata_Well"].tolist() == ["01_POS002", "01_POS076"]


def test_unmatched_files_are_counted_and_logged(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", wells=("B02",), sites=1)
    tifffile.imwrite(tmp_path / "images" / "overview.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    out = tmp_path / "crops.h5"
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "--size", "36", "-o", str(out))
    assert code == 0, said
    assert "3 image files matched, 1 did not" in said
    issues = pd.read_csv(tmp_path / "crops.h5.issues.csv")
    assert issues[["kind", "file"]].values.tolist() == [
        ["unmatched_file", str(tmp_path / "images" / "overview.tif")]]
    code, said = crop(str(tmp_path / "images"), "--segment", "-o", str(tmp_path / "b.h5"))
    assert code == 1 and "overview.tif" in said and "{well}_s{site}_{channel}" in said


def test_a_file_that_reads_as_another_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", wells=("B02",), sites=1)
    tifffile.imwrite(tmp_path / "images" / "B02_s01_DNA.tif", np.zeros((8, 8), np.uint8))
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "-o", str(tmp_path / "c.h5"))
    assert code == 1 and "B02_s01_DNA.tif" in said and "B02_s1_DNA.tif" in said
    assert "both read as well B02, site 1, channel DNA" in said
    with pytest.raises(InputError, match="reads two ways"):
        build_image_table(tmp_path / "images", "{a}{b}_s{site}_{channel}.tif")
    with pytest.raises(InputError, match="names no {channel}"):
        build_image_table(tmp_path / "images", "{well}_s{site}.tif")


def test_an_image_given_as_a_table_is_one_line(tmp_path: Path) -> None:
    write_folder(tmp_path / "images", wells=("B02",), sites=1)
    image = tmp_path / "images" / "B02_s1_DNA.tif"
    for args in ([str(image), "--segment"],
                 [str(tmp_path / "images"), "--objects", str(image)]):
        code, said = crop(*args, "-o", str(tmp_path / "c.h5"))
        assert code == 1 and said.count("error:") == 1, said
        assert "is an image, not a table" in said and "utf-8" not in said
        assert "--pattern" in said


def test_segment_finds_the_dna_named_channel_whatever_its_place(tmp_path: Path) -> None:
    """Cell stain first: segmenting the first channel centres crops on cell bodies."""
    truth = write_folder(tmp_path / "images", channels=("Actin", "Hoechst33342", "pH3"))
    table = tmp_path / "Image.csv"
    build_image_table(tmp_path / "images", PATTERN).table.to_csv(table, index=False)
    out = tmp_path / "crops.h5"
    summary = crop_screen(table, out, config=CropConfig(
        size=36, segment=SegmentConfig(), channels=("Actin", "Hoechst33342", "pH3")))
    assert store.read_crops(out).shape[1] == 3
    assert any("channel Hoechst33342" in note for note in summary.notes)
    dist = off_nucleus(store.read_cells(out), truth)
    assert (dist < 1.5).mean() > 0.97, np.percentile(dist, [50, 90])


@pytest.mark.parametrize(("names", "why"), [(("Cell", "w2", "PH3"), "no channel is named"),
                                            (("Cell", "DNA", "DAPI"), "several channels")])
def test_no_or_several_dna_channels_ask_for_nucleus_channel(tmp_path: Path, names: tuple,
                                                            why: str) -> None:
    write_folder(tmp_path / "images", channels=names, wells=("B02",), sites=1)
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "-o", str(tmp_path / "c.h5"))
    assert code == 1 and why in said and "--nucleus-channel" in said, said
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "--nucleus-channel", names[1], "--size", "36", "-o", str(tmp_path / "c.h5"),
                      "--overwrite")
    assert code == 0 and f"segmented in channel {names[1]} (--nucleus-channel)" in said


def test_dna_stain_names_are_words() -> None:
    assert all(map(is_nuclear, ["DNA", "dapi", "OrigDNA", "H2B-GFP", "Hoechst33342",
                                "ch1_DAPI", "Nuclei"]))
    assert not any(map(is_nuclear, ["RNA", "OrigRNA", "DNAdamage", "Cell", "PH3", "w1"]))


def test_a_crop_size_far_from_the_nuclei_is_said_and_auto_fits_them(tmp_path: Path) -> None:
    """10-px nuclei: 68 px crops hold several cells; auto takes 2 diameters, at least 36."""
    truth = write_folder(tmp_path / "images", wells=("B02",), sites=2)
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "-o", str(tmp_path / "a.h5"))
    assert code == 0, said
    assert "nuclei measure 10 px across" in said
    assert re.search(r"--size 68 is [67]\.\d times that, more than 4", said)
    assert "--size auto would crop 36 px" in said
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "--size", "auto", "-o", str(tmp_path / "b.h5"))
    assert code == 0 and "--size auto: 36 px crops" in said, said
    assert store.read_crops(tmp_path / "b.h5").shape[2:] == (36, 36)
    assert len(store.read_cells(tmp_path / "b.h5")) > len(store.read_cells(tmp_path / "a.h5"))
    assert len(store.read_cells(tmp_path / "b.h5")) > 0.7 * len(truth)  # (1 - 36/256)^2
    nuclei = pd.DataFrame({"ImageNumber": truth["site"], "Location_Center_X": truth["x"],
                           "Location_Center_Y": truth["y"]})
    nuclei.to_csv(tmp_path / "Nuclei.csv", index=False)
    code, said = crop(str(tmp_path / "b.h5.Image.csv"), "--objects", str(tmp_path / "Nuclei.csv"),
                      "--size", "auto", "-o", str(tmp_path / "c.h5"))
    assert code == 1 and "--size auto measures the nuclei --segment finds" in said


def test_an_object_table_of_nuclei_with_their_areas_sizes_the_crop(tmp_path: Path) -> None:
    """CellProfiler's Nuclei.csv carries AreaShape_Area: a crop far from the nuclei is said
    and --size auto fits them without segmenting; a table of cells is not taken for nuclei."""
    truth = write_folder(tmp_path / "images", wells=("B02",), sites=2)
    code, said = crop(str(tmp_path / "images"), "--pattern", PATTERN, "--segment",
                      "-o", str(tmp_path / "a.h5"))
    assert code == 0, said
    table = str(tmp_path / "a.h5.Image.csv")
    nuclei = pd.DataFrame({"ImageNumber": truth["site"], "ObjectNumber": 1 + np.arange(len(truth)),
                           "Location_Center_X": truth["x"], "Location_Center_Y": truth["y"],
                           "AreaShape_Area": np.pi * 5.0 ** 2})  # 10 px across
    nuclei.to_csv(tmp_path / "Nuclei.csv", index=False)
    code, said = crop(table, "--objects", str(tmp_path / "Nuclei.csv"), "-o",
                      str(tmp_path / "b.h5"))
    assert code == 0, said
    assert "nuclei measure 10 px across (median equivalent diameter of the object table's" in said
    assert re.search(r"--size 68 is 6\.8 times that, more than 4", said)
    code, said = crop(table, "--objects", str(tmp_path / "Nuclei.csv"), "--size", "auto", "-o",
                      str(tmp_path / "c.h5"))
    assert code == 0 and "--size auto: 36 px crops" in said, said
    assert store.read_crops(tmp_path / "c.h5").shape[2:] == (36, 36)
    # The same columns, database-style (CytoTable, SQLite exports): the object's prefix.
    nuclei.rename(columns=lambda c: c if c == "ImageNumber" else f"Nuclei_{c}").rename(
        columns={"Nuclei_ObjectNumber": "ObjectNumber"}).to_csv(tmp_path / "Objects.csv",
                                                                index=False)
    code, said = crop(table, "--objects", str(tmp_path / "Objects.csv"), "--size", "auto",
                      "-o", str(tmp_path / "d.h5"))
    assert code == 0 and "--size auto: 36 px crops" in said, said
    # A table of cells: its areas are not the nuclei's, so nothing is said or fitted.
    nuclei.to_csv(tmp_path / "Cells.csv", index=False)
    code, said = crop(table, "--objects", str(tmp_path / "Cells.csv"), "-o",
                      str(tmp_path / "e.h5"))
    assert code == 0 and "nuclei measure" not in said, said
    code, said = crop(table, "--objects", str(tmp_path / "Cells.csv"), "--size", "auto",
                      "-o", str(tmp_path / "f.h5"))
    assert code == 1 and "AreaShape_Area from an object table of nuclei" in said
