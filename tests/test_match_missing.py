"""match on rows that name no treatment (issue 22 item 10): a missing compound, or a missing
concentration where the compound has one elsewhere, drops those rows counted and named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from test_match import screen
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.profile.match import MatchConfig, prepare, run_match, summary_rows

WELLS_OF_A = ["Week1_1 W03", "Week1_2 W03", "Week2_1 W03", "Week2_2 W03"]


def test_rows_without_a_compound_are_counted_and_their_wells_named(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cells = screen()
    cells.loc[cells["Metadata_Compound"] == "A", "Metadata_Compound"] = np.nan
    config = MatchConfig(allow_single_compound_moa=True, permutations=0)  # B alone is X
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        result = run_match(cells, tmp_path / "out", config)
    assert result.n_treatments == 10  # A@1 and A@2 are gone: the rows were dropped ...
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dropped_rows"] == 20  # ... and say so (was 0)
    assert metrics["dropped"] == [{"reason": "no Metadata_Compound", "rows": 20,
                                   "wells": WELLS_OF_A}]
    assert ("rows dropped (no Metadata_Compound)",
            "20 in 4 well(s): " + ", ".join(WELLS_OF_A)) in summary_rows(result)
    assert "20 row(s) dropped (no Metadata_Compound) in 4 well(s)" in caplog.text


def test_a_missing_dose_of_a_dosed_compound_is_dropped_not_a_treatment_of_its_own() -> None:
    cells = screen()
    one_well = (cells["Metadata_Compound"] == "A") & (cells["Metadata_Plate"] == "Week1_1")
    cells.loc[one_well, "Metadata_Concentration"] = np.nan
    treat, report = prepare(cells, MatchConfig())
    assert "A" not in set(treat["Metadata_Treatment"])  # was a third treatment of A
    assert len(treat) == 12 and report["dropped_rows"] == 5
    assert report["dropped"] == [{"reason": "no Metadata_Concentration; their compound has "
                                            "one elsewhere", "rows": 5,
                                  "wells": ["Week1_1 W03"]}]
    # a compound no row gives a dose stays one treatment, as in a table without doses
    cells = screen()
    cells.loc[cells["Metadata_Compound"] == "A", "Metadata_Concentration"] = np.nan
    treat, report = prepare(cells, MatchConfig())
    assert "A" in set(treat["Metadata_Treatment"]) and report["dropped_rows"] == 0


def test_dropped_rows_are_in_the_printed_summary(tmp_path: Path) -> None:
    cells = screen()
    cells.loc[cells["Metadata_Compound"] == "A", "Metadata_Compound"] = ""
    cells.to_csv(tmp_path / "cells.csv", index=False)
    res = CliRunner().invoke(app, ["match", str(tmp_path / "cells.csv"), "-o",
                                   str(tmp_path / "out"), "--permutations", "0",
                                   "--allow-single-compound-moa"])
    assert res.exit_code == 0, res.output
    assert "rows dropped (no Metadata_Compound)" in res.output
    assert "Week1_1 W03" in res.output
