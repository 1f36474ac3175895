"""`cellprof train` on a tiny synthetic store with a tiny model: seconds per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats.checkpoint import load_checkpoint
from cellprof.formats.store import read_cells
from cellprof.learn.data import CropData, DataConfig, draw_orientations, model_input, split_by_field
from cellprof.learn.device import Dist
from cellprof.learn.model import ModelConfig
from cellprof.learn.train import TrainConfig, TrainingDiverged, train
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.report.plots import save_training_images

TINY = dict(latent_dim=8, enc_filters=8, dec_filters=8, disc_channels=(8, 8, 8, 8, 1),
            ramp_start=2, ramp_length=2)
FAST = dict(batch_size=8, log_every=1, val_every=4, image_every=1000, checkpoint_every=1000)


@pytest.fixture
def store_path(synthetic_store: Path) -> Path:
    return synthetic_store


pytestmark = pytest.mark.usefixtures("one_thread")


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_loss_falls(store_path: Path, tmp_path: Path) -> None:
    res = train(store_path, tmp_path / "run", model_config=ModelConfig(**TINY),
                config=TrainConfig(steps=40, lr=3e-3, **FAST))
    log = pd.read_csv(tmp_path / "run" / "losses.csv")
    assert res.status == "complete" and res.step == 40 and len(log) == 40
    assert log["pixel"].tail(5).mean() < 0.7 * log["pixel"].head(5).mean()
    assert log["w_3"].iloc[-1] == 1.0 and log["w_0"].iloc[0] < 1.0  # the schedule ran
    assert np.isfinite(log["val_mse"].dropna()).all() and log["val_mse"].notna().sum() == 10
    assert (tmp_path / "run" / "model.pt").exists()


def test_outputs_a_user_opens(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store_path, out, model_config=ModelConfig(**TINY),
          config=TrainConfig(steps=4, **{**FAST, "image_every": 2}),
          pictures=save_training_images)
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "recon_0000002.png", "recon_0000004.png", "samples_0000002.png", "samples_0000004.png"]
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["channels"] == ["DNA", "Tubulin", "Actin"]
    assert cfg["model_config"]["variant"] == "vae-gan-progressive"
    assert cfg["train_config"]["seed"] == 0 and "torch" in cfg["versions"]
    ckpt = torch.load(out / "model.pt", weights_only=True)  # no pickle needed
    assert ckpt["format"] == "cellprof-checkpoint" and ckpt["step"] == 4


def test_resume_equals_uninterrupted(store_path: Path, tmp_path: Path) -> None:
    cfg = ModelConfig(**TINY)
    train(store_path, tmp_path / "whole", model_config=cfg, config=TrainConfig(steps=8, **FAST))
    train(store_path, tmp_path / "parts", model_config=cfg, config=TrainConfig(steps=5, **FAST))
    res = train(store_path, tmp_path / "parts", config=TrainConfig(steps=8, **FAST), resume=True)
    assert res.step == 8
    a, b = state(tmp_path / "whole" / "model.pt"), state(tmp_path / "parts" / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    la = pd.read_csv(tmp_path / "whole" / "losses.csv")
    lb = pd.read_csv(tmp_path / "parts" / "losses.csv")
    timing_and_val = ["cells_per_s", "elapsed_s", "val_pixel", "val_mse"]  # b validated at 5 too
    pd.testing.assert_frame_equal(la.drop(columns=timing_and_val), lb.drop(columns=timing_and_val))


def test_ctrl_c_saves_and_resumes_exactly(store_path: Path, tmp_path: Path) -> None:
    cfg = ModelConfig(**TINY)
    train(store_path, tmp_path / "whole", model_config=cfg, config=TrainConfig(steps=6, **FAST))

    def press_ctrl_c(step: int, total: int, metrics: dict) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    res = train(store_path, tmp_path / "cut", model_config=cfg,
                config=TrainConfig(steps=6, **FAST), progress=press_ctrl_c)
    assert res.status == "interrupted" and 3 <= res.step < 6  # the step under way finishes
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == res.step
    train(store_path, tmp_path / "cut", config=TrainConfig(steps=6, **FAST), resume=True)
    a, b = state(tmp_path / "whole" / "model.pt"), state(tmp_path / "cut" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", ["vae", "vae-gan", "vae-gan-progressive"])
def test_each_ablation_trains(store_path: Path, tmp_path: Path, variant: str) -> None:
    res = train(store_path, tmp_path / variant, model_config=ModelConfig(**TINY, variant=variant),
                config=TrainConfig(steps=3, **FAST))
    log = pd.read_csv(tmp_path / variant / "losses.csv")
    assert res.status == "complete" and np.isfinite(log["total"]).all()
    assert ("disc" in log.columns) == (variant != "vae")
    if variant == "vae-gan":
        assert (log["w_0"] == 1).all()


def test_ddp_two_cpu_processes_one_consistent_checkpoint(store_path: Path,
                                                         tmp_path: Path) -> None:
    """The user's command under torchrun: gloo on CPU, 2 ranks, only rank 0 writes; the run
    itself checks that both replicas end with identical weights."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "cellprof", "train", str(store_path), "--out", str(out), "--steps", "4",
           "--batch-size", "4", "--latent-dim", "8", "--filters", "8", "--val-every", "2",
           "--image-every", "1000", "--log-every", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["step"] == 4
    cfg = (out / "config.json").read_text()
    assert '"world_size": 2' in cfg
    log = pd.read_csv(out / "losses.csv")
    assert log["step"].tolist() == [1, 2, 3, 4]      # one writer: no duplicated rows
    assert sorted(p.name for p in out.rglob("*.partial")) == []


def test_ddp_ranks_see_disjoint_cells(store_path: Path) -> None:
    seen = []
    for rank in (0, 1):
        d = CropData(store_path, DataConfig(augment=False), rank=rank, world=2)
        seen.append(d._stream((0 * 2 + rank) * 8, 8)[0])
    assert not set(seen[0]) & set(seen[1])


def test_data_split_by_field_and_augment_keeps_pixels(store_path: Path) -> None:
    cells = read_cells(store_path)
    train_idx, val_idx = split_by_field(cells, 0.25, seed=0)
    key = cells["Metadata_Plate"] + "|" + cells["ImageNumber"].astype(str)
    assert not set(key.iloc[train_idx]) & set(key.iloc[val_idx])
    assert len(train_idx) + len(val_idx) == len(cells)
    x = torch.from_numpy(np.random.default_rng(0).random((16, 3, 36, 36)).astype(np.float32))
    turns, flips = map(torch.from_numpy, draw_orientations(np.random.default_rng(1), 16))
    x, y = model_input(x).numpy(), model_input(x, None, turns, flips).numpy()
    assert np.allclose(np.sort(x.reshape(16, -1), 1), np.sort(y.reshape(16, -1), 1))
    assert not np.array_equal(x, y)


def test_streaming_equals_in_memory_order(store_path: Path) -> None:
    mem = CropData(store_path, DataConfig())
    stream = CropData(store_path, DataConfig(memory_limit_gb=1e-6, group_blocks=1))
    assert mem.in_memory and not stream.in_memory
    n = len(mem.train_idx)
    assert sorted(stream._stream(0, n)[0]) == sorted(mem.train_idx)  # one epoch, every cell
    np.testing.assert_array_equal(stream.train_batch(3, 8), stream.train_batch(3, 8))


def test_diverging_loss_stops_with_last_good_checkpoint(store_path: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cellprof.learn.train as train_module

    real = train_module.compute_losses

    def poisoned(model, x, x_real, step):  # the loss turns NaN from step 3 on
        losses = real(model, x, x_real, step)
        if step >= 3:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(train_module, "compute_losses", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 3 .*last good checkpoint"):
        train(store_path, out, model_config=ModelConfig(**TINY),
              config=TrainConfig(steps=10, **{**FAST, "checkpoint_every": 2}))
    good = load_checkpoint(out / "checkpoints" / "last.pt")
    assert good["step"] == 2
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_the_loss_is_read_only_at_log_steps_and_a_nan_between_them_still_stops(
        store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the loss makes a GPU's host wait, so the loop reads it only when it logs or
    saves; a loss gone NaN between those steps is still caught there, before the next
    checkpoint, which would have held NaN weights."""
    import cellprof.learn.train as train_module

    reads: list[list[int]] = []
    real_agree, real_losses = train_module.agree, train_module.compute_losses

    def counted(values: torch.Tensor, d: Dist) -> list[int]:
        reads.append(real_agree(values, d))
        return reads[-1]

    def poisoned(model, x, x_real, step):  # NaN from step 5 on: between two log steps
        losses = real_losses(model, x, x_real, step)
        if step >= 5:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(train_module, "agree", counted)
    every4 = {**FAST, "log_every": 4, "val_every": 1000, "checkpoint_every": 4}
    train(store_path, tmp_path / "clean", model_config=ModelConfig(**TINY),
          config=TrainConfig(steps=10, **every4))
    assert len(reads) == 3  # after steps 4 and 8 (log, checkpoint) and 10 (the last)
    monkeypatch.setattr(train_module, "compute_losses", poisoned)
    reads.clear()
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 5 .*last good checkpoint"):
        train(store_path, out, model_config=ModelConfig(**TINY),
              config=TrainConfig(steps=12, **every4))
    assert len(reads) == 2  # after step 4, and after step 8: caught there
    good = load_checkpoint(out / "checkpoints" / "last.pt")
    assert good["step"] == 4
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_an_exploding_loss_is_flagged_as_numpy_would() -> None:
    """Above explode_factor x the median of the first 20 losses (numpy's median: the mean of
    the middle two): flagged at its step, read at the check."""
    from cellprof.learn.train import _Watch

    d, last = Dist(0, 1, torch.device("cpu")), Path("nowhere.pt")
    early = (np.random.default_rng(0).random(20) + 1.0).astype(np.float32)
    limit = 10.0 * float(np.median(early.astype(np.float64)))
    watch = _Watch(10.0, d.device)
    for step, v in enumerate([*early, limit * 0.999, limit * 1.001, 1.0]):
        watch(torch.tensor(v, dtype=torch.float32), step)
    with pytest.raises(TrainingDiverged, match=r"exploded at step 21 .*no checkpoint"):
        watch.check(d, 22, {"total": torch.tensor(1.0)}, last, {})
    fine = _Watch(10.0, d.device)
    for step, v in enumerate(early):
        fine(torch.tensor(v, dtype=torch.float32), step)
    fine.check(d, 19, {"total": torch.tensor(1.0)}, last, {"w": torch.ones(2)})
    with pytest.raises(TrainingDiverged, match="weights became non-finite at step 19"):
        fine.check(d, 19, {"total": torch.tensor(1.0)}, last, {"w": torch.tensor([1.0, np.inf])})


def test_bad_checkpoints_and_stores(store_path: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt: not a cellprof checkpoint"):
        load_checkpoint(other)
    # a run trained on 3 channels cannot resume on a 2-channel store
    out = tmp_path / "run"
    train(store_path, out, model_config=ModelConfig(**TINY), config=TrainConfig(steps=1, **FAST))
    two = tmp_path / "two.h5"
    synth = store_path.parent / "screen"
    crop_screen(synth / "Image.csv", two, objects=synth / "Nuclei.csv",
                config=CropConfig(size=36, channels=("DNA", "Actin")))
    with pytest.raises(CheckpointError, match="trained on channels DNA, Tubulin, Actin"):
        train(two, out, config=TrainConfig(steps=2, **FAST), resume=True)
    with pytest.raises(InputError, match="holds a training run"):
        train(store_path, out, config=TrainConfig(steps=2, **FAST))
    not_store = tmp_path / "plain.h5"
    with h5py.File(not_store, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="plain.h5: not a cellprof crop store"):
        train(not_store, tmp_path / "r2", config=TrainConfig(steps=1, **FAST))


def test_cli_train_and_errors(store_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", str(store_path), "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "4", "--latent-dim", "8", "--filters", "8", "--schedule", "scaled"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "complete at step 2" in res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--resume" in res.output
    res = runner.invoke(app, [*args[:4], "--model", "gan", "--out", str(tmp_path / "x")])
    # refused by the parser (status 2), which lists the choices
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "'gan' is not one of" in out and "vae-gan-progressive" in out
    assert "Traceback" not in res.output


def test_overwrite_leaves_nothing_of_the_old_run(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store_path, out, model_config=ModelConfig(**TINY),
          config=TrainConfig(steps=4, **{**FAST, "image_every": 4}), pictures=save_training_images)
    assert (out / "images" / "recon_0000004.png").exists()
    res = train(store_path, out, model_config=ModelConfig(**TINY), overwrite=True,
                config=TrainConfig(steps=2, **FAST))
    assert res.step == 2 and load_checkpoint(out / "model.pt")["step"] == 2
    assert not (out / "images" / "recon_0000004.png").exists()
    assert pd.read_csv(out / "losses.csv")["step"].max() == 2
