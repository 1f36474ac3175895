"""`cellprof export`: profiles as the tables pycytominer reads, without embedding again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats.profiles import ProfileWriter
from cellprof.profile.aggregate import export_table

runner = CliRunner()


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    """12 cells: 2 plates x 2 wells x 3 cells; well B02 is DMSO, C03 taxol 0.3; feature
    VAE_000 of a cell is 10 * its ImageNumber + its ObjectNumber."""
    rows = []
    for plate_i, plate in enumerate(("P1", "P2")):
        for well_i, (well, cmp, conc) in enumerate((("B02", "DMSO", 0.0), ("C03", "taxol", 0.3))):
            image = 2 * plate_i + well_i + 1
            for obj in range(1, 4):
                rows.append({"Metadata_Plate": plate, "Metadata_Well": well,
                             "Metadata_Site": 1, "Metadata_Compound": cmp,
                             "Metadata_Concentration": conc, "Metadata_MOA": cmp,
                             "ImageNumber": image, "ObjectNumber": obj,
                             "Location_Center_X": 5.0 * obj, "Location_Center_Y": 7.0,
                             "Crop_Padded": False})
    cells = pd.DataFrame(rows)
    feats = np.stack([10.0 * cells["ImageNumber"] + cells["ObjectNumber"],
                      np.arange(len(cells), dtype=float)], axis=1).astype(np.float32)
    path = tmp_path / "profiles.h5"
    writer = ProfileWriter(path, cells, ["VAE_000", "VAE_001"], {"store": "x"}, logvar=False)
    writer.write(0, feats)
    writer.finish()
    return path


def test_cell_level_identifiers_are_metadata_for_pycytominer(profiles: Path) -> None:
    """pycytominer's aggregate(compute_object_count=True) counts Metadata_ObjectNumber per
    stratum and normalize keeps only Metadata_ columns as metadata: every identifier must be
    one, and only the embedding's features may remain."""
    table = export_table(profiles, "cell")
    for col in ("Metadata_ImageNumber", "Metadata_ObjectNumber", "Metadata_Location_Center_X",
                "Metadata_Location_Center_Y", "Metadata_Crop_Padded"):
        assert col in table.columns
    assert [c for c in table.columns if not c.startswith("Metadata_")] == ["VAE_000", "VAE_001"]
    # what compute_object_count does: count objects per plate and well
    counts = table.groupby(["Metadata_Plate", "Metadata_Well"])["Metadata_ObjectNumber"].count()
    assert counts.tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(table["VAE_000"], 10 * table["Metadata_ImageNumber"]
                               + table["Metadata_ObjectNumber"])


def test_well_and_treatment_levels(profiles: Path) -> None:
    well = export_table(profiles, "well")
    assert len(well) == 4 and (well["Metadata_Count"] == 3).all()
    p1b02 = well[(well["Metadata_Plate"] == "P1") & (well["Metadata_Well"] == "B02")]
    assert float(p1b02["VAE_000"].iloc[0]) == pytest.approx(12.0)  # image 1, objects 1-3
    assert "Metadata_ObjectNumber" not in well.columns  # varies within a well
    treat = export_table(profiles, "treatment")
    assert treat[["Metadata_Compound", "Metadata_Count", "Metadata_Cell_Count"]].values.tolist() \
        == [["DMSO", 2, 6], ["taxol", 2, 6]]
    # DMSO wells are images 1 and 3: (12 + 32) / 2
    assert float(treat.loc[treat["Metadata_Compound"] == "DMSO", "VAE_000"].iloc[0]) == \
        pytest.approx(22.0)
    assert treat.loc[treat["Metadata_Compound"] == "taxol", "Metadata_MOA"].item() == "taxol"
    with pytest.raises(InputError, match="--level must be one of cell, well, treatment"):
        export_table(profiles, "plate")


@pytest.mark.parametrize("fmt,level", [("parquet", "cell"), ("csv", "well"),
                                       ("parquet", "treatment")])
def test_export_command_writes_the_table(profiles: Path, fmt: str, level: str) -> None:
    res = runner.invoke(app, ["export", str(profiles), "--format", fmt, "--level", level])
    assert res.exit_code == 0, res.output
    path = profiles.with_suffix(f".{level}.{fmt}")
    table = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    assert len(table) == {"cell": 12, "well": 4, "treatment": 2}[level]
    assert not list(path.parent.glob("*.partial"))
    again = runner.invoke(app, ["export", str(profiles), "--format", fmt, "--level", level])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_export_command_errors_name_the_option(profiles: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(profiles), "--format", "xlsx"])
    assert res.exit_code == 2 and "--format" in res.output  # refused by the parser
    assert "'parquet'" in res.output and "'csv'" in res.output
    res = runner.invoke(app, ["export", str(profiles), "--out", str(tmp_path / "t.csv")])
    assert res.exit_code == 1 and "--out" in res.output and "--format parquet" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "none.h5")])
    assert res.exit_code == 1 and "none.h5: no such profiles file" in res.output


def test_treatment_level_by_another_compound_column(profiles: Path, tmp_path: Path) -> None:
    """Profiles cropped from a JUMP/LINCS layout name the compound Metadata_pert_iname and
    leave Metadata_Compound empty: --compound-column groups the treatments by it."""
    from cellprof.formats.profiles import read_profiles

    meta, feats, names = read_profiles(profiles)
    meta["Metadata_pert_iname"] = meta["Metadata_Compound"].map(
        {"DMSO": "DMSO", "taxol": "paclitaxel"})
    meta["Metadata_Compound"], meta["Metadata_Concentration"] = "", np.nan  # one dose
    jump = tmp_path / "jump.h5"
    writer = ProfileWriter(jump, meta, names, {"store": "x"}, logvar=False)
    writer.write(0, feats)
    writer.finish()
    assert len(export_table(jump, "treatment")) == 1  # every well under compound ""
    res = runner.invoke(app, ["export", str(jump), "--level", "treatment", "--format", "csv",
                              "--compound-column", "Metadata_pert_iname"])
    assert res.exit_code == 0, res.output
    treat = pd.read_csv(jump.with_suffix(".treatment.csv"))
    assert treat[["Metadata_pert_iname", "Metadata_Compound", "Metadata_Count"]].values.tolist() \
        == [["DMSO", "DMSO", 2], ["paclitaxel", "paclitaxel", 2]]
    assert treat.loc[1, "VAE_000"] == pytest.approx((22 + 42) / 2)  # images 2 and 4
    res = runner.invoke(app, ["export", str(jump), "--level", "treatment", "--overwrite",
                              "--compound-column", "Metadata_cmpd"])
    assert res.exit_code == 1 and "--compound-column Metadata_cmpd" in res.output
