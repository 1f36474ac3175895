"""--precision: bf16 autocast trains on the CPU, and fp32 is exactly the plain computation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cellprof.errors import InputError
from cellprof.formats.checkpoint import load_checkpoint
from cellprof.learn.data import CropData, DataConfig
from cellprof.learn.device import Compute, cpu_has_bf16, resolve_precision
from cellprof.learn.losses import compute_losses
from cellprof.learn.model import ModelConfig, VAEPlus
from cellprof.learn.train import TrainConfig, saved_train_config, train

TINY = dict(latent_dim=8, enc_filters=8, dec_filters=8, disc_channels=(8, 8, 8, 8, 1),
            ramp_start=2, ramp_length=2)
FAST = dict(batch_size=8, log_every=1, val_every=1000, image_every=1000, checkpoint_every=1000)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bf16_trains_on_the_cpu_with_finite_falling_loss(synthetic_store: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    res = train(synthetic_store, out, model_config=ModelConfig(**TINY),
                config=TrainConfig(steps=30, lr=3e-3, precision="bf16", device="cpu", **FAST))
    log = pd.read_csv(out / "losses.csv")
    assert res.status == "complete" and np.isfinite(log[["total", "pixel", "disc"]]).all().all()
    assert log["pixel"].tail(5).mean() < 0.7 * log["pixel"].head(5).mean()
    assert np.isfinite(res.val["val_mse"])
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_config"]["precision"] == "bf16" and cfg["precision"] == "bf16"


def test_fp32_training_is_the_plain_float32_loop(synthetic_store: Path, tmp_path: Path) -> None:
    """`--precision fp32` adds nothing to a hand-written NCHW float32 loop: same weights,
    bit for bit (so fp32 results are what they were before bf16 existed)."""
    steps, cfg = 3, ModelConfig(**TINY, in_channels=3, image_size=36)
    train(synthetic_store, tmp_path / "run", model_config=cfg,
          config=TrainConfig(steps=steps, precision="fp32", device="cpu", **FAST))
    got = load_checkpoint(tmp_path / "run" / "model.pt")["model"]

    data = CropData(synthetic_store, DataConfig(), seed=0)
    torch.manual_seed(0)
    model = VAEPlus(cfg)
    torch.manual_seed(0)  # latent noise: seed + 1000 * rank
    opt = torch.optim.Adam(model.vae_parameters(), lr=1e-3)
    dopt = torch.optim.SGD(model.discriminator.parameters(), lr=1e-2, momentum=0.9)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    for step in range(steps):
        x = torch.from_numpy(data.train_batch(step, 8))
        xr = torch.from_numpy(data.disc_batch(step, 8))
        losses = compute_losses(model, x, xr, step)
        opt.zero_grad()
        dopt.zero_grad()
        losses["total"].backward()
        opt.step()
        dopt.step()
        with torch.no_grad():
            for w in convs:
                w.mul_(1.0 - 1e-4)
    want = model.state_dict()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("balance", ["fixed", "adaptive"])
def test_bf16_losses_are_float32_and_close_to_fp32(balance: str) -> None:
    torch.manual_seed(0)
    model = VAEPlus(ModelConfig(**TINY, image_size=36, variant="vae-gan", fm_balance=balance))
    x, xr = torch.rand(6, 3, 36, 36), torch.rand(6, 3, 36, 36)
    torch.manual_seed(1)
    ref = compute_losses(model, x, xr, 0)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = compute_losses(model, x, xr, 0)
    # Every term, each matched layer's distance unscaled. The adaptive balance's scale is a
    # ratio of two gradient norms, which bf16 moves by tens of percent on this tiny random
    # model, so under it the scaled fm and total are only checked to be finite float32.
    close = ["pixel", "kl", "disc", *(k for k in ref if k.startswith("fm_") and k[3:].isdigit())]
    if balance == "fixed":
        close += ["fm", "total"]
    for k in ("pixel", "kl", "fm", "disc", "total"):
        assert low[k].dtype == torch.float32 and torch.isfinite(low[k]), k
    for k in close:
        assert low[k].item() == pytest.approx(ref[k].item(), rel=0.05), k
    if balance == "adaptive":
        assert float(low["fm_scale"]) > 0 and float(ref["fm_scale"]) > 0
    low["total"].backward()  # and the backward pass runs under bf16 too
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_precision_choice_and_errors() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert not Compute.of(cpu, "fp32").channels_last  # fp32 on the CPU stays NCHW
    assert Compute.of(cpu, "bf16").channels_last
    with pytest.raises(InputError, match="--precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(InputError, match="--precision"):
        TrainConfig(precision="half")


def test_old_checkpoints_with_amp_resume(synthetic_store: Path, tmp_path: Path) -> None:
    """Runs saved before --precision recorded `amp`; they resume (amp=False -> fp32)."""
    out = tmp_path / "run"
    train(synthetic_store, out, model_config=ModelConfig(**TINY),
          config=TrainConfig(steps=1, precision="fp32", **FAST))
    last = out / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["train_config"].pop("precision")
    ckpt["train_config"]["amp"] = False
    torch.save(ckpt, last)
    # The run's own settings, as `train --resume` takes them (resume applies what it is given).
    saved = saved_train_config(out)
    assert saved.precision == "fp32"
    res = train(synthetic_store, out, config=replace(saved, steps=2), resume=True)
    assert res.step == 2
    assert load_checkpoint(out / "model.pt")["train_config"]["precision"] == "fp32"


@pytest.mark.parametrize("works", [True, False])
def test_compile_compiles_or_falls_back_and_the_run_is_the_eager_one(
        synthetic_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        works: bool) -> None:
    """--compile wraps each network's forward; when compiling fails the run trains eager
    with a one-line note. Either way the trial step leaves no trace: the same weights as a
    run without --compile (this stand-in compiler computes exactly what eager does)."""
    wrapped = []

    def fake_compile(fn):
        def run(*args, **kwargs):
            if not works:
                raise RuntimeError("Inductor: no C++ compiler\nmore detail")
            wrapped.append(fn)
            return fn(*args, **kwargs)
        return run

    cfg = ModelConfig(**TINY)
    base = TrainConfig(steps=4, precision="fp32", device="cpu", **FAST)
    train(synthetic_store, tmp_path / "eager", model_config=cfg, config=base)
    monkeypatch.setattr(torch, "compile", fake_compile)
    res = train(synthetic_store, tmp_path / "compiled", model_config=cfg,
                config=replace(base, compile=True))
    assert len(res.notes) == 1
    if works:
        assert "3 networks compiled" in res.notes[0] and wrapped
    else:
        assert res.notes[0].startswith("--compile: torch.compile failed (RuntimeError: "
                                       "Inductor: no C++ compiler)") and not wrapped
    want = load_checkpoint(tmp_path / "eager" / "model.pt")["model"]
    got = load_checkpoint(tmp_path / "compiled" / "model.pt")["model"]
    assert want.keys() == got.keys()  # checkpoints of compiled runs load anywhere
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
