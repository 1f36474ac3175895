"""`cellprof train --balance-by`: batches drawn evenly across treatment groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats.checkpoint import load_checkpoint
from cellprof.formats.store import read_cells
from cellprof.learn.balance import BalancedStream
from cellprof.learn.data import CropData, DataConfig
from cellprof.learn.model import ModelConfig
from cellprof.learn.train import TrainConfig, train

TINY = dict(latent_dim=8, enc_filters=8, dec_filters=8, disc_channels=(8, 8, 8, 8, 1),
            ramp_start=2, ramp_length=2)
FAST = dict(batch_size=8, log_every=1, val_every=4, image_every=1000, checkpoint_every=1000)
BY = ("Metadata_Compound", "Metadata_Concentration")

pytestmark = pytest.mark.usefixtures("one_thread")


def treatment(cells: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
    rows = cells.iloc[idx]
    return (rows["Metadata_Compound"] + "@" + rows["Metadata_Concentration"].astype(str)
            ).to_numpy()


def test_group_frequencies_over_1000_batches_are_uniform_within_sampling_error() -> None:
    # 12 groups of very different sizes: one holds 70% of the cells, as DMSO does
    rng = np.random.default_rng(0)
    sizes = np.array([700, 5, 8, 13, 20, 30, 40, 50, 60, 24, 25, 25])
    codes = rng.permutation(np.repeat(np.arange(12), sizes))
    cells = np.arange(len(codes)) * 3  # store rows need not be contiguous
    stream = BalancedStream(cells, codes, seed=4)
    drawn = np.concatenate([stream.cells(b * 32, 32) for b in range(1000)])
    group_of_row = dict(zip(cells, codes))
    counts = np.bincount([group_of_row[r] for r in drawn], minlength=12)
    expected = 32000 / 12
    # binomial sampling error of a uniform draw: sd = sqrt(n p (1 - p)) ~ 50
    assert np.all(np.abs(counts - expected) < 3 * np.sqrt(32000 * (1 / 12) * (11 / 12)))
    # uniform over cells would have drawn the big group ~70% of the time
    assert counts[0] / counts.sum() < 0.1
    # every cell of a small group is seen before any repeats
    small = cells[codes == 1]
    first = [r for r in drawn if group_of_row[r] == 1][:5]
    assert sorted(first) == sorted(small)
    # draws within one round (12 positions from 48) are of distinct groups; a batch that
    # straddles two rounds holds a group at most twice
    assert len({group_of_row[r] for r in stream.cells(48, 12)}) == 12
    for b in range(200):
        assert np.bincount([group_of_row[r] for r in stream.cells(b * 8, 8)]).max() <= 2


def test_the_stream_is_a_pure_function_of_seed_and_position() -> None:
    codes = np.repeat(np.arange(5), [50, 3, 7, 9, 11])
    cells = np.arange(len(codes))
    a, b = BalancedStream(cells, codes, 1), BalancedStream(cells[::-1], codes[::-1], 1)
    whole = a.cells(0, 400)
    np.testing.assert_array_equal(whole[123:200], b.cells(123, 77))  # any start, any order
    assert not np.array_equal(whole, BalancedStream(cells, codes, 2).cells(0, 400))


def test_cropdata_balances_in_memory_and_streamed_identically(synthetic_store: Path) -> None:
    cells = read_cells(synthetic_store)
    mem = CropData(synthetic_store, DataConfig(balance_by=BY), seed=3)
    streamed = CropData(synthetic_store, DataConfig(balance_by=BY, memory_limit_gb=1e-6),
                        seed=3)
    assert mem.in_memory and not streamed.in_memory
    n_groups = cells.iloc[mem.train_idx].groupby(list(BY)).ngroups
    assert mem.balanced.n_groups == n_groups == mem.describe()["balance_groups"]
    for step in (0, 5, 41):
        a, b = mem.raw_batch(step, 8), streamed.raw_batch(step, 8)
        np.testing.assert_array_equal(a.cells, b.cells)
        np.testing.assert_array_equal(a.crops, b.crops)
        assert np.isin(a.cells, mem.train_idx).all()  # held-out fields stay out
    drawn = np.concatenate([mem.raw_batch(s, 8).cells for s in range(200)])
    counts = pd.Series(treatment(cells, drawn)).value_counts()
    assert len(counts) == n_groups and counts.max() - counts.min() <= 1
    plain = np.concatenate([CropData(synthetic_store, DataConfig(), seed=3)
                            .raw_batch(s, 8).cells for s in range(200)])
    plain_counts = pd.Series(treatment(cells, plain)).value_counts()
    assert plain_counts.max() - plain_counts.min() > 1  # the DMSO wells dominate otherwise


def test_ddp_ranks_draw_different_cells_of_one_balanced_stream(synthetic_store: Path) -> None:
    one = CropData(synthetic_store, DataConfig(balance_by=BY, augment=False), seed=0)
    ranks = [CropData(synthetic_store, DataConfig(balance_by=BY, augment=False), seed=0,
                      rank=r, world=2) for r in (0, 1)]
    both = np.concatenate([d.raw_batch(2, 4).cells for d in ranks])
    np.testing.assert_array_equal(both, one.raw_batch(2, 8).cells)


def test_missing_column_is_refused_naming_it_and_the_columns_there(synthetic_store: Path
                                                                   ) -> None:
    with pytest.raises(InputError, match=r"Metadata_Batchh.*Metadata_Compound"):
        CropData(synthetic_store, DataConfig(balance_by=("Metadata_Batchh",)))
    # the Metadata_ prefix may be left out, as a user types it
    d = CropData(synthetic_store, DataConfig(balance_by=("Compound",)))
    assert d.balanced.n_groups == read_cells(synthetic_store).iloc[d.train_idx][
        "Metadata_Compound"].nunique()


def test_balanced_training_resumes_exactly(synthetic_store: Path, tmp_path: Path) -> None:
    cfg, data = ModelConfig(**TINY), DataConfig(balance_by=BY)
    train(synthetic_store, tmp_path / "whole", model_config=cfg,
          config=TrainConfig(steps=6, **FAST), data_config=data)
    train(synthetic_store, tmp_path / "parts", model_config=cfg,
          config=TrainConfig(steps=4, **FAST), data_config=data)
    train(synthetic_store, tmp_path / "parts", config=TrainConfig(steps=6, **FAST),
          resume=True)  # the saved data settings, balance included
    a = load_checkpoint(tmp_path / "whole" / "model.pt")
    b = load_checkpoint(tmp_path / "parts" / "model.pt")
    assert tuple(b["data_config"]["balance_by"]) == BY
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


def test_cli_balance_by(synthetic_store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", str(synthetic_store), "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "8", "--latent-dim", "8", "--filters", "8", "--model", "vae",
            "--image-every", "1000", "--val-every", "1000"]
    res = runner.invoke(app, [*args, "--balance-by", "Metadata_Compound,Metadata_Concentration"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert tuple(ckpt["data_config"]["balance_by"]) == BY
    res = runner.invoke(app, [*args[:3], str(tmp_path / "other"), *args[4:],
                              "--balance-by", "Metadata_Nope"])
    assert res.exit_code == 1 and "Metadata_Nope" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(tmp_path / "run"),
                              "--resume", "--steps", "3", "--balance-by", "Metadata_Compound"])
    assert res.exit_code == 1 and "--balance-by" in res.output
