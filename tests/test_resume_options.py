"""`train --resume` applies the options that may change, records them, refuses the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats.checkpoint import load_checkpoint
from cellprof.learn.model import ModelConfig
from cellprof.learn.train import TrainConfig, train

runner = CliRunner()
TINY = ModelConfig(latent_dim=8, enc_filters=8, dec_filters=8, disc_channels=(8, 8, 8, 8, 1),
                   ramp_start=2, ramp_length=2)
FAST = dict(batch_size=8, log_every=1, val_every=1000, image_every=1000, checkpoint_every=1000)
CLI = ["--batch-size", "8", "--latent-dim", "8", "--filters", "8", "--model", "vae",
       "--log-every", "1", "--val-every", "1000", "--image-every", "1000", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_with_a_lower_lr_applies_and_records_it(synthetic_store: Path,
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(synthetic_store, run, model_config=TINY, config=TrainConfig(steps=3, **FAST))
    train(synthetic_store, run, config=TrainConfig(steps=6, lr=1e-4, disc_lr=2e-3, **FAST),
          resume=True)
    ckpt = load_checkpoint(run / "model.pt")
    assert [g["lr"] for g in ckpt["opt_vae"]["param_groups"]] == [1e-4]
    assert [g["lr"] for g in ckpt["opt_disc"]["param_groups"]] == [2e-3]
    config = json.loads((run / "config.json").read_text())
    assert config["resumes"] == [{"step": 3, "changed": {
        "steps": [3, 6], "lr": [1e-3, 1e-4], "disc_lr": [1e-2, 2e-3]}}]
    assert config["train_config"]["lr"] == 1e-4
    losses = pd.read_csv(run / "losses.csv")
    assert list(losses["lr"]) == [1e-3] * 3 + [1e-4] * 3
    assert list(losses["disc_lr"]) == [1e-2] * 3 + [2e-3] * 3


def test_resume_refuses_what_may_not_change(synthetic_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(synthetic_store, run, model_config=TINY, config=TrainConfig(steps=2, **FAST))
    with pytest.raises(InputError,
                       match=r"cannot change --batch-size \(8 -> 4\), --seed \(0 -> 3\)"):
        train(synthetic_store, run, resume=True,
              config=TrainConfig(steps=4, **{**FAST, "batch_size": 4}, seed=3))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


def test_cli_resume_takes_only_the_options_typed(synthetic_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(run), "--steps", "2",
                              "--lr", "5e-4", *CLI])
    assert res.exit_code == 0, res.output
    # Without --lr the run keeps its own 5e-4, not the command's default 1e-3.
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(run), "--steps", "3",
                              "--resume", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(run / "losses.csv")["lr"].tolist() == [5e-4] * 3
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(run), "--steps", "4",
                              "--resume", "--lr", "1e-4", "--checkpoint-every", "2"])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(run / "losses.csv")["lr"].tolist() == [5e-4] * 3 + [1e-4]
    for extra, named in ((["--seed", "3"], "--seed"), (["--latent-dim", "16"], "--latent-dim"),
                         (["--crop-scaling", "percentile"], "--crop-scaling"),
                         (["--fm-weight", "0.25"], "--fm-weight")):
        res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(run), "--steps",
                                  "5", "--resume", *extra])
        assert res.exit_code == 1 and named in res.output and "Traceback" not in res.output
