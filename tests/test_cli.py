"""The command line as a user meets it: help, version, demo, and errors without tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellprof import __version__
from cellprof.cli import app
from cellprof.formats import store

runner = CliRunner()


def test_version_and_help() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    for cmd in ("synth", "crop", "demo"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["crop", "--help"])
    assert "--singlecell" in res.output and "--segment" in res.output and "68" in res.output


def test_synth_then_crop_through_the_cli(tmp_path: Path) -> None:
    res = runner.invoke(app, ["synth", str(tmp_path / "s"), "--field-size", "160",
                              "--cells-per-field", "6", "--sites", "1", "--batches", "1"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "crops.h5"
    res = runner.invoke(app, ["crop", str(tmp_path / "s" / "Image.csv"), "--objects",
                              str(tmp_path / "s" / "Nuclei.csv"), "--moa",
                              str(tmp_path / "s" / "moa.csv"), "--channels", "DNA,Actin",
                              "--size", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    info = store.read_info(out)
    assert info.channels == ("DNA", "Actin") and info.crop_size == 32 and info.n_cells > 0
    assert (store.read_cells(out)["Metadata_MOA"] != "").all()


def test_crop_singlecell_needs_metadata(tmp_path: Path) -> None:
    res = runner.invoke(app, ["crop", "--singlecell", str(tmp_path), "--out",
                              str(tmp_path / "x.h5")])
    assert res.exit_code == 1 and "--metadata" in res.output


def test_demo_never_overwrites_without_force(tmp_path: Path) -> None:
    outdir = tmp_path / "demo"
    outdir.mkdir()
    (outdir / "precious.txt").write_text("keep me")
    res = runner.invoke(app, ["demo", str(outdir)])
    assert res.exit_code == 1 and "--force" in res.output
    assert (outdir / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(("bad", "status"), [("--edge=wrap", 2), ("--size=4", 1),
                                           ("--offset=3", 1)])
def test_bad_options_are_one_line_errors(tmp_path: Path, bad: str, status: int) -> None:
    """A value the library refuses is one red line (status 1); one outside an option's
    choices is refused by the parser before anything runs (status 2, the choices listed)."""
    (tmp_path / "Image.csv").write_text("FileName_DNA,PathName_DNA\na.tif,.\n")
    res = runner.invoke(app, ["crop", str(tmp_path / "Image.csv"), "--segment", bad,
                              "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == status and "Traceback" not in res.output
    assert bad.split("=")[0] in res.output
    if status == 2:
        assert "'skip', 'pad'" in res.output


def test_an_error_of_the_library_is_one_red_line(tmp_path: Path) -> None:
    """The CLI's guard, not each command, turns a CellprofError into one line and status 1."""
    res = runner.invoke(app, ["merge", str(tmp_path / "missing.h5"), "--out",
                              str(tmp_path / "m.h5")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("error: ") and "missing.h5" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_match_cli_on_a_feature_table(tmp_path: Path) -> None:
    """A pycytominer-style well table in, metrics.json and a one-line error out."""
    import json

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for plate in ("Week1_1", "Week2_1"):
        for well, (cpd, conc, moa) in enumerate([("DMSO", 0.0, "DMSO")] * 3 + [
                ("a1", 1.0, "A"), ("a2", 1.0, "A"), ("b1", 1.0, "B"), ("b2", 1.0, "B")]):
            centre = {"A": [3, 0], "B": [0, 3], "DMSO": [0, 0]}[moa]
            f = np.array(centre, float) + rng.normal(0, 0.3, 2)
            rows.append({"Metadata_Plate": plate, "Metadata_Well": f"W{well}",
                         "Metadata_Compound": cpd, "Metadata_Concentration": conc,
                         "Metadata_MOA": moa, "f1": f[0], "f2": f[1]})
    pd.DataFrame(rows).to_csv(tmp_path / "wells.csv", index=False)
    res = runner.invoke(app, ["match", str(tmp_path / "wells.csv"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["nsc"] == 1.0 and metrics["n_treatments"] == 4
    assert (tmp_path / "r" / "confusion_nsc.png").stat().st_size > 1000
    # a plate without DMSO: refused at plate scope, with the way out; matched at screen scope
    pd.DataFrame([r for r in rows if not (r["Metadata_Plate"] == "Week2_1" and r[
        "Metadata_Compound"] == "DMSO")]).to_csv(tmp_path / "few.csv", index=False)
    res = runner.invoke(app, ["match", str(tmp_path / "few.csv"), "--out", str(tmp_path / "f")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "plate Week2_1 has 0 control well(s)" in res.output and "--scope screen" in res.output
    res = runner.invoke(app, ["match", str(tmp_path / "few.csv"), "--out", str(tmp_path / "f"),
                              "--scope", "screen", "--normalize", "standardize"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["config"]["scope"] == "screen" and metrics["config"]["normalize"] == "zscore"
    assert metrics["n_control_wells"] == 3 and metrics["nsc"] == 1.0
    pd.DataFrame(rows).drop(columns=["Metadata_MOA"]).to_csv(tmp_path / "nomoa.csv", index=False)
    res = runner.invoke(app, ["match", str(tmp_path / "nomoa.csv"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 1 and "--moa" in res.output and "Traceback" not in res.output


def test_train_border_and_balance_options_reach_the_model(synthetic_store, tmp_path) -> None:
    """--decoder-padding / --decoder-upsample / --fm-balance set the model, and the
    adaptive scale is logged."""
    import csv
    import json

    from typer.testing import CliRunner

    common = ["--steps", "3", "--batch-size", "4", "--latent-dim", "8", "--filters", "8",
              "--model", "vae-gan", "--device", "cpu", "--precision", "fp32",
              "--val-every", "1000", "--image-every", "1000", "--log-every", "1"]
    runner = CliRunner()
    for padding, balance, upsample, weight in (("zeros", "fixed", "nearest", "1"),
                                               ("replicate", "adaptive", "bilinear", "0.5")):
        out = tmp_path / f"{padding}-{balance}"
        res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(out), *common,
                                  "--decoder-padding", padding, "--fm-balance", balance,
                                  "--decoder-upsample", upsample, "--fm-weight", weight])
        assert res.exit_code == 0, res.output
        model = json.loads((out / "config.json").read_text())["model_config"]
        assert (model["decoder_padding"], model["fm_balance"], model["decoder_upsample"],
                model["fm_weight"]) == (padding, balance, upsample, float(weight))
        with open(out / "losses.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert ("fm_scale" in rows[0]) == (balance == "adaptive")
        if balance == "adaptive":
            assert all(0 < float(r["fm_scale"]) < 1e4 for r in rows)
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(tmp_path / "bad"),
                              *common, "--fm-balance", "sometimes"])
    assert res.exit_code == 2 and "--fm-balance" in res.output and "'adaptive'" in res.output
