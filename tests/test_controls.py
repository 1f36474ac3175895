"""Compounds and controls named as JUMP and LINCS name them: --compound-column and
--control-query, in the library and through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_match import screen
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.profile.controls import control_rows, use_compound_column
from cellprof.profile.match import MatchConfig, prepare

runner = CliRunner()
NEGCON = "Metadata_pert_type == 'negcon'"


def jump_style(cells: pd.DataFrame, control_name: str = "DMSO") -> pd.DataFrame:
    """The same screen as JUMP / LINCS profiles name it: compound as Metadata_pert_iname,
    role as Metadata_pert_type (negcon / trt), mechanism as Metadata_moa, no dose."""
    negcon = cells["Metadata_Compound"] == "DMSO"
    return cells.drop(columns=["Metadata_Compound", "Metadata_Concentration"]).rename(
        columns={"Metadata_MOA": "Metadata_moa"}).assign(
        Metadata_pert_iname=cells["Metadata_Compound"].where(~negcon, control_name),
        Metadata_pert_type=np.where(negcon, "negcon", "trt"))


def one_dose(cells: pd.DataFrame) -> pd.DataFrame:
    """The default-named twin of :func:`jump_style`: one dose per compound too."""
    return cells.drop(columns=["Metadata_Concentration"])


def noisy_screen() -> pd.DataFrame:
    """:func:`test_match.screen` with the signal buried enough that NSC is not trivially 1."""
    cells = screen(rng_seed=3)
    feats = ["f0", "f1", "f2"]
    rng = np.random.default_rng(1)
    cells[feats] = cells[feats] + rng.normal(0, 8.0, (len(cells), 3))
    return cells


def match_cli(table: pd.DataFrame, folder: Path, *options: str) -> tuple[dict, str]:
    """metrics.json and the printed summary (words only, without the table's frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "profiles.csv", index=False)
    res = runner.invoke(app, ["match", str(folder / "profiles.csv"), "--out",
                              str(folder / "report"), "--permutations", "20", *options])
    assert res.exit_code == 0, res.output
    words = " ".join(res.output.replace("│", " ").split())
    return json.loads((folder / "report" / "metrics.json").read_text()), words


def test_jump_names_through_the_cli_give_the_default_names_nsc(tmp_path: Path) -> None:
    cells = noisy_screen()
    plain, _ = match_cli(one_dose(cells), tmp_path / "plain")
    jump, out = match_cli(jump_style(cells), tmp_path / "jump", "--compound-column",
                     "Metadata_pert_iname", "--control-query", NEGCON)
    for key in ("nsc", "nscb", "map", "n_treatments", "n_control_wells", "n_wells"):
        assert jump[key] == plain[key], key
    assert 0 < plain["nsc"] < 1  # a real comparison, not two perfect scores
    assert plain["n_treatments"] == 6 and plain["n_control_wells"] == 12
    assert jump["config"]["control_query"] == NEGCON and jump["config"]["control"] is None
    per = pd.read_csv(tmp_path / "jump" / "report" / "treatments.csv")
    assert sorted(per["treatment"]) == list("ABCDEF")  # one dose: the compound is the treatment
    profiles = pd.read_parquet(tmp_path / "jump" / "report" / "treatment_profiles.parquet")
    # the user's own column is kept beside cellprof's; the controls are never queries
    assert (profiles["Metadata_pert_iname"] == profiles["Metadata_Compound"]).all()
    assert "DMSO" not in set(profiles["Metadata_pert_iname"])
    assert "Metadata__control" not in profiles.columns
    assert "12 wells: Metadata_pert_type == 'negcon'" in out


def test_lincs_names_with_doses_through_the_cli(tmp_path: Path) -> None:
    """LINCS: compound Metadata_pert_iname, dose Metadata_mmoles_per_liter, controls
    Metadata_broad_sample == 'DMSO' (pycytominer's samples= query there)."""
    cells = noisy_screen()
    lincs = cells.rename(columns={"Metadata_Compound": "Metadata_pert_iname",
                                  "Metadata_Concentration": "Metadata_mmoles_per_liter"})
    lincs["Metadata_broad_sample"] = np.where(lincs["Metadata_pert_iname"] == "DMSO", "DMSO",
                                              "BRD-K" + lincs["Metadata_pert_iname"])
    plain, _ = match_cli(cells, tmp_path / "plain")
    got, _ = match_cli(lincs, tmp_path / "lincs", "--compound-column", "Metadata_pert_iname",
                       "--concentration-column", "Metadata_mmoles_per_liter",
                       "--control-query", "Metadata_broad_sample == 'DMSO'")
    for key in ("nsc", "nscb", "map", "n_treatments", "n_control_wells"):
        assert got[key] == plain[key], key
    assert got["n_treatments"] == 12  # 6 compounds x 2 doses, not merged
    per = pd.read_csv(tmp_path / "lincs" / "report" / "treatments.csv")
    assert {"A@1", "A@2"} <= set(per["treatment"])


def test_controls_by_query_are_the_controls_by_name() -> None:
    """A control named 'vehicle' by role is normalised against exactly as --control vehicle,
    and excluded from the treatments the same way; at well and at cell level."""
    cells = jump_style(noisy_screen(), control_name="vehicle")
    for at in ("well", "cell"):
        by_query, rq = prepare(cells, MatchConfig(compound_column="Metadata_pert_iname",
                                                  control_query=NEGCON, normalize_at=at))
        by_name, rn = prepare(cells, MatchConfig(compound_column="Metadata_pert_iname",
                                                 control="vehicle", normalize_at=at))
        pd.testing.assert_frame_equal(by_query, by_name)
        assert rq["n_control_wells"] == rn["n_control_wells"] == 12
        assert "vehicle" not in set(by_query["Metadata_Compound"])


def test_a_pert_iname_table_is_told_about_compound_column(tmp_path: Path) -> None:
    """The default compound column absent but a well-known one present: the error says
    which and how to use it (it used to say 'provide --image-table')."""
    jump = jump_style(screen())
    with pytest.raises(InputError, match=r"no Metadata_Compound column but have "
                                         r"Metadata_pert_iname: pass --compound-column "
                                         r"Metadata_pert_iname"):
        prepare(jump, MatchConfig(control_query=NEGCON))
    jump.to_csv(tmp_path / "jump.csv", index=False)
    res = runner.invoke(app, ["match", str(tmp_path / "jump.csv"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--compound-column Metadata_pert_iname" in " ".join(res.output.split())
    assert "--image-table" not in res.output
    with pytest.raises(InputError, match=r"--compound-column Metadata_cmpd: profiles have no "
                                         r"such column \(metadata columns: .*Metadata_pert_iname"):
        prepare(jump, MatchConfig(compound_column="Metadata_cmpd"))


def test_compound_column_in_database_naming_and_kept_values() -> None:
    t = pd.DataFrame({"Metadata_pert_iname": ["DMSO", None], "Metadata_Compound": ["x", "y"]})
    out = use_compound_column(t, "Image_Metadata_pert_iname")
    assert out["Metadata_Compound"].tolist()[0] == "DMSO" and pd.isna(out["Metadata_Compound"][1])
    assert use_compound_column(t, "Metadata_Compound") is t


@pytest.mark.parametrize("query, message", [
    ("Metadata_role == 'negcon'", r"--control-query \"Metadata_role == 'negcon'\" cannot be "
                                  r"evaluated on the profiles \(.*\); columns: .*"
                                  r"Metadata_pert_type"),
    ("Metadata_pert_type == 'negcon", r"--control-query .* cannot be evaluated"),
    ("Metadata_pert_type == 'poscon'", r"--control-query \"Metadata_pert_type == 'poscon'\" "
                                       r"selects no row of the profiles; columns: .*"
                                       r"Metadata_pert_type"),
])
def test_bad_control_queries_are_one_clear_line(query: str, message: str) -> None:
    jump = jump_style(screen())
    with pytest.raises(InputError, match=message) as err:
        prepare(jump, MatchConfig(compound_column="Metadata_pert_iname", control_query=query))
    assert "\n" not in str(err.value) and "f0" not in str(err.value)  # names metadata only


def test_control_query_errors_through_the_cli(tmp_path: Path) -> None:
    jump_style(screen()).to_csv(tmp_path / "jump.csv", index=False)
    base = ["match", str(tmp_path / "jump.csv"), "--out", str(tmp_path / "r"),
            "--compound-column", "Metadata_pert_iname"]
    for extra, said in (
            (["--control", "DMSO", "--control-query", NEGCON],
             "--control and --control-query are mutually exclusive"),
            (["--control-query", "Metadata_pert_type == 'poscon'"], "selects no row"),
            (["--control-query", "Metadata_role == 'negcon'"], "cannot be evaluated")):
        res = runner.invoke(app, base + extra)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert said in " ".join(res.output.split())
    assert not (tmp_path / "r").exists()


def test_a_query_that_splits_a_well_is_refused() -> None:
    cells = jump_style(screen())
    cells.loc[0, "Metadata_pert_type"] = "trt"  # one cell of a DMSO well
    with pytest.raises(InputError, match=r"selects some rows of Week1_1 W00 but not others"):
        prepare(cells, MatchConfig(compound_column="Metadata_pert_iname",
                                   control_query=NEGCON, normalize_at="cell"))


def test_control_rows_by_name_and_by_query() -> None:
    t = pd.DataFrame({"Metadata_Compound": ["DMSO", "a", "DMSO"],
                      "Metadata_pert_type": ["negcon", "trt", "trt"]}, index=[5, 5, 7])
    assert control_rows(t).tolist() == [True, False, True]
    assert control_rows(t, query=NEGCON).tolist() == [True, False, False]  # index ignored
