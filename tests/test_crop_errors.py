"""Bad input is reported (file, row, reason) and nothing is lost when a run is interrupted."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import TinyScreen
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError, StoreError
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen

CFG = CropConfig(size=16)


def issues_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out.with_name(out.name + ".issues.csv"))


def test_missing_image_is_reported_and_others_cropped(tiny: TinyScreen, tmp_path: Path) -> None:
    victim = Path(tiny.images.loc[1, "PathName_Actin"]) / tiny.images.loc[1, "FileName_Actin"]
    victim.unlink()
    out = tmp_path / "crops.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.n_cells == 9 and summary.n_fields_failed == 1
    log = issues_of(out)
    assert log["kind"].tolist() == ["missing_image"]
    assert log["row"].tolist() == [3]                      # line 3 of Image.csv = 2nd field
    assert victim.name in log["reason"][0] and log["file"][0] == str(tiny.image_table)
    with pytest.raises(InputError, match=f"Image.csv, row 3: .*{victim.name}.*not found"):
        crop_screen(tiny.image_table, tmp_path / "strict.h5", objects=tiny.objects,
                    config=CFG, strict=True)


def test_unreadable_and_wrongly_sized_images(tiny: TinyScreen, tmp_path: Path) -> None:
    first = Path(tiny.images.loc[0, "PathName_DNA"]) / tiny.images.loc[0, "FileName_DNA"]
    first.write_bytes(b"II*\x00 this is not a tiff")
    small = Path(tiny.images.loc[2, "PathName_Tubulin"]) / tiny.images.loc[2, "FileName_Tubulin"]
    tifffile.imwrite(small, np.zeros((30, 40), np.uint16))
    out = tmp_path / "crops.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    log = issues_of(out).set_index("row")
    assert log.loc[2, "kind"] == "unreadable_image" and first.name in log.loc[2, "reason"]
    assert log.loc[4, "kind"] == "wrong_size" and "differ in size" in log.loc[4, "reason"]
    assert summary.n_cells == 6
    assert np.isfinite(store.read_crops(out).astype(float)).all()


def test_image_size_checked_against_table(tiny: TinyScreen, tmp_path: Path) -> None:
    images = tiny.images.assign(Height_DNA=60, Width_DNA=80)
    images.loc[3, "Width_DNA"] = 100
    images.to_csv(tiny.image_table, index=False)
    out = tmp_path / "crops.h5"
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    log = issues_of(out)
    assert log["row"].tolist() == [5] and "table says 100x60" in log["reason"][0]


def test_centres_outside_and_missing_are_reported(tiny: TinyScreen, tmp_path: Path) -> None:
    nuc = tiny.nuclei.copy()
    nuc.loc[0, "Location_Center_X"] = 500.0            # line 2 of Nuclei.csv
    nuc.loc[5, "Location_Center_Y"] = np.nan           # line 7
    nuc.loc[len(nuc)] = {"ImageNumber": 99, "ObjectNumber": 1, "Location_Center_X": 5.0,
                         "Location_Center_Y": 5.0, "AreaShape_Area": 1}
    nuc.to_csv(tiny.objects, index=False)
    out = tmp_path / "crops.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    log = issues_of(out).set_index("row")
    assert log.loc[2, "kind"] == "centre_outside" and "(80x60 px)" in log.loc[2, "reason"]
    assert log.loc[7, "kind"] == "missing_centre"
    assert log.loc[18, "kind"] == "unknown_image"
    assert summary.n_rejected == 2 and summary.n_cells == 10
    assert set(store.read_issues(out)["kind"]) == {"centre_outside", "missing_centre",
                                                   "unknown_image"}


@pytest.mark.parametrize("table,drop,message", [
    ("image", ["FileName_DNA", "FileName_Tubulin", "FileName_Actin"], "no FileName_<channel>"),
    ("objects", ["Location_Center_Y"], "missing column Location_Center_Y"),
    ("objects", ["ImageNumber"], "missing column.*ImageNumber"),
])
def test_missing_columns_name_the_file_and_column(tiny: TinyScreen, tmp_path: Path,
                                                  table: str, drop: list[str],
                                                  message: str) -> None:
    path = tiny.image_table if table == "image" else tiny.objects
    frame = tiny.images if table == "image" else tiny.nuclei
    frame.drop(columns=drop).to_csv(path, index=False)
    with pytest.raises(InputError, match=f"{path.name}: {message}"):
        crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects, config=CFG)


def test_garbage_table(tmp_path: Path, tiny: TinyScreen) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(InputError, match="bad.parquet: cannot be read"):
        crop_screen(bad, tmp_path / "c.h5", objects=tiny.objects, config=CFG)


class Interrupt(Exception):
    pass


def stop_after(n: int):
    def progress(stage: str, done: int, total: int) -> None:
        if stage == "crop" and done >= n:
            raise Interrupt
    return progress


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_resumes_to_the_same_file(tiny: TinyScreen, tmp_path: Path,
                                                  workers: int) -> None:
    ref = tmp_path / "ref.h5"
    crop_screen(tiny.image_table, ref, objects=tiny.objects, config=CFG)
    out = tmp_path / "crops.h5"
    with pytest.raises(Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    workers=workers, progress=stop_after(2))
    assert not out.exists() and out.with_name("crops.h5.partial").exists()
    with pytest.raises(StoreError, match="rerun the same command to resume"):
        store.read_info(out)
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                          workers=workers)
    assert summary.resumed_fields == 2
    np.testing.assert_array_equal(store.read_crops(out), store.read_crops(ref))
    pd.testing.assert_frame_equal(store.read_cells(out), store.read_cells(ref))
    pd.testing.assert_frame_equal(store.read_fields(out), store.read_fields(ref))


def test_half_written_field_is_redone_not_duplicated(tiny: TinyScreen, tmp_path: Path) -> None:
    ref = tmp_path / "ref.h5"
    crop_screen(tiny.image_table, ref, objects=tiny.objects, config=CFG)
    out = tmp_path / "crops.h5"
    with pytest.raises(Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    progress=stop_after(1))
    with h5py.File(out.with_name("crops.h5.partial"), "a") as f:  # a kill mid-append
        f["crops"].resize((f["crops"].shape[0] + 2,) + f["crops"].shape[1:])
        f["crops"][-2:] = 777
        f["cells/ObjectNumber"].resize((f["cells/ObjectNumber"].shape[0] + 1,))
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    np.testing.assert_array_equal(store.read_crops(out), store.read_crops(ref))
    pd.testing.assert_frame_equal(store.read_cells(out), store.read_cells(ref))


def test_torn_partial_file_restarts_cleanly(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    out.with_name("crops.h5.partial").write_bytes(b"\x89HDF\r\n torn")
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.resumed_fields == 0 and summary.n_cells == 12


def test_changed_settings_start_over(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    with pytest.raises(Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    progress=stop_after(2))
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects,
                          config=CropConfig(size=12))
    assert summary.resumed_fields == 0 and store.read_info(out).crop_size == 12


def test_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="other.h5: not a cellprof crop store"):
        store.read_info(path)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(StoreError, match="text.h5: not an HDF5 file"):
        store.read_info(tmp_path / "text.h5")


def test_cli_reports_errors_in_one_line(tiny: TinyScreen, tmp_path: Path) -> None:
    runner = CliRunner()
    tiny.nuclei.drop(columns=["Location_Center_X"]).to_csv(tiny.objects, index=False)
    res = runner.invoke(app, ["crop", str(tiny.image_table), "--objects", str(tiny.objects),
                              "--size", "16", "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 1
    assert "Nuclei.csv: missing column Location_Center_X" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["crop", str(tiny.image_table), "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 1 and "--objects" in res.output


def test_unknown_nucleus_channel_names_the_option_and_the_channels(tiny: TinyScreen,
                                                                   tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["crop", str(tiny.image_table), "--segment", "--size", "16",
                                   "--nucleus-channel", "Hoechst",
                                   "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "--nucleus-channel 'Hoechst'" in lines[0] and "DNA, Tubulin, Actin" in lines[0]
    assert "--debug" not in lines[0]  # a user's error, not an unexpected one
