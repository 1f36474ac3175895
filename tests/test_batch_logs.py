"""Long jobs in batch logs: plain progress lines on a clock, --quiet, help that wraps once."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TinyScreen
from typer.testing import CliRunner

from cellprof.cli import app

runner = CliRunner()


def test_train_in_a_batch_log_prints_progress_lines_as_it_goes(synthetic_store: Path,
                                                               tmp_path: Path) -> None:
    # stderr is not a terminal here, as under Slurm or CI; a line every 0 s = every step.
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(tmp_path / "r"),
                              "--steps", "3", "--batch-size", "4", "--latent-dim", "8",
                              "--filters", "8", "--model", "vae", "--device", "cpu",
                              "--val-every", "1000", "--image-every", "1000"],
                        env={"CELLPROF_PROGRESS_EVERY": "0"})
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("train ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert re.match(r"train 1/3 \(33%\) 0:\d\d:\d\d eta \? cells/s \d", lines[0])
    assert re.match(r"train 2/3 \(67%\) 0:\d\d:\d\d eta 0:\d\d:\d\d cells/s \d", lines[1])
    assert "pixel" in lines[-1] and "KL" in lines[-1]  # the logged losses at the end


def test_crop_lines_are_rate_limited(tiny: TinyScreen, tmp_path: Path) -> None:
    res = runner.invoke(app, ["crop", str(tiny.image_table), "--objects", str(tiny.objects),
                              "--size", "16", "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("crop ")]
    # A line as the stage starts and one as it ends; none between (default: every 30 s).
    assert [ln.split()[1] for ln in lines] == ["0/4", "4/4"]


def test_quiet_prints_no_progress(tiny: TinyScreen, tmp_path: Path) -> None:
    res = runner.invoke(app, ["--quiet", "crop", str(tiny.image_table), "--objects",
                              str(tiny.objects), "--size", "16", "--out", str(tmp_path / "c.h5")],
                        env={"CELLPROF_PROGRESS_EVERY": "0"})
    assert res.exit_code == 0, res.output
    assert not [ln for ln in res.output.splitlines() if ln.startswith("crop ")]
    assert "cells cropped" in res.output  # the summary is not progress


def test_help_paragraphs_wrap_once_at_80_columns() -> None:
    for cmd in ("match", "train", "embed", "show", "synth", "merge"):
        res = runner.invoke(app, [cmd, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert res.exit_code == 0
        head = res.output.split("╭")[0]  # the description, above the option panels
        paragraphs = [[ln for ln in p.splitlines() if ln.strip()]
                      for p in re.split(r"\n\s*\n", head) if "Usage:" not in p]
        for lines in paragraphs:
            for line in lines[:-1]:  # a line cut short mid-paragraph is a re-wrap
                assert len(line.strip()) >= 55, (cmd, line, lines)
