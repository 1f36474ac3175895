"""`crop --size auto` from an object table's nuclei areas, in every table format crop reads:
CellProfiler's CSVs (one file per object, `AreaShape_Area`), JUMP's load_data with a nuclei
table, ExportToDatabase's SQLite and CytoTable's Parquet (`Nuclei_AreaShape_Area`), and the
image tables of multi-page and OME-TIFF stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matrix_inputs import FORMATS, TABLE_FORMATS, Truth, build_truth
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.formats import store

runner = CliRunner()
DIAMETER = 25.0
"""Every nucleus's equivalent diameter in the tables: --size auto takes 2 of them, 52 px."""


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    return build_truth(tmp_path_factory.mktemp("areas"))


@pytest.mark.parametrize("fmt_name", TABLE_FORMATS)
def test_size_auto_reads_the_nuclei_areas_of_every_table_format(truth: Truth, tmp_path: Path,
                                                                 fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    t = fmt.frames(truth, tmp_path)
    x = fmt.roles["x"]
    t.objects[x.replace("Location_Center_X", "AreaShape_Area")] = np.pi * (DIAMETER / 2) ** 2
    inputs = fmt.write(t)
    out = tmp_path / "c.h5"
    res = runner.invoke(app, ["crop", *inputs.args, "--size", "auto", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "--size auto: 52 px crops" in res.output and "AreaShape_Area" in res.output
    assert store.read_info(out).crop_size == 52
