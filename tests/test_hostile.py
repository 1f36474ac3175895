"""What a careless or unlucky user does: each case ends in a clear issue or a one-line error
naming the file, row or option, and an exit status a scheduler can trust."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TinyScreen, disc_field
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats import store
from cellprof.formats.checkpoint import load_checkpoint
from cellprof.learn.train import TrainConfig
from cellprof.prepare.crop import CropConfig, crop_screen

runner = CliRunner()
CFG = CropConfig(size=16)


def crop_args(tiny: TinyScreen, out: Path, *extra: str) -> list[str]:
    return ["crop", str(tiny.image_table), "--objects", str(tiny.objects), "--size", "16",
            "--out", str(out), *extra]


def one_line_error(res, *words: str) -> None:
    """Exit status 1 from the CLI's own handling (an exception that escaped it would be
    ``res.exception``; CliRunner sets ``SystemExit`` for every handled exit), no traceback,
    and one ``error:`` line, the last, naming what it must."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), (repr(res.exception), res.output)
    assert "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], res.output  # one error line, and nothing after it
    for w in words:
        assert w in errors[0], (w, res.output)


@pytest.mark.parametrize("output", [
    "Traceback (most recent call last):\n  File ...\nerror: Image.csv: bad\n",
    "error: Image.csv: bad\nerror: and again\n",
    "error: Image.csv: bad\nmore after it\n",
    "nothing said\n",
])
def test_one_line_error_refuses_more_than_one_line(output: str) -> None:
    """The helper above fails on a traceback, a second line or no error line, though the
    CLI exited 1 through its own handling."""
    res = SimpleNamespace(exit_code=1, exception=SystemExit(1), output=output)
    one_line_error(SimpleNamespace(exit_code=1, exception=SystemExit(1),
                                   output="error: Image.csv: bad\n"), "Image.csv")
    with pytest.raises(AssertionError):
        one_line_error(res, "Image.csv")


# --- item 6: --plates -----------------------------------------------------------------------

def test_plates_logs_no_false_unknown_image(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "p1.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects,
                          config=CropConfig(size=16, plates=("Week1_P1",)), strict=True)
    assert summary.n_cells == 6 and summary.issues == {}
    assert set(store.read_cells(out)["Metadata_Plate"]) == {"Week1_P1"}


def test_plates_still_reports_objects_of_no_image(tiny: TinyScreen, tmp_path: Path) -> None:
    tiny.nuclei.assign(ImageNumber=tiny.nuclei["ImageNumber"].replace(4, 9)).to_csv(
        tiny.objects, index=False)
    summary = crop_screen(tiny.image_table, tmp_path / "p.h5", objects=tiny.objects,
                          config=CropConfig(size=16, plates=("Week1_P1",)))
    assert summary.issues == {"unknown_image": 4}


# --- item 9: fields without objects -------------------------------------------------------

def test_field_without_object_rows_is_an_empty_field(tiny: TinyScreen, tmp_path: Path) -> None:
    tiny.nuclei[tiny.nuclei["ImageNumber"] != 2].to_csv(tiny.objects, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.n_fields == 4 and summary.n_cells == 9 and summary.n_fields_failed == 0
    fields = store.read_fields(out).set_index("ImageNumber")
    assert fields.loc[2, "Count_Objects"] == 0 and fields.loc[2, "Status"] == "ok"


def test_header_only_object_table_exits_non_zero_with_the_reason(tiny: TinyScreen,
                                                                 tmp_path: Path) -> None:
    tiny.nuclei.iloc[:0].to_csv(tiny.objects, index=False)
    res = runner.invoke(app, crop_args(tiny, tmp_path / "c.h5"))
    one_line_error(res, "no cells were cropped", "no objects", "was not kept")
    assert not (tmp_path / "c.h5").exists()
    tiny.nuclei.to_csv(tiny.objects, index=False)  # the user fixes the table and reruns as is
    res = runner.invoke(app, crop_args(tiny, tmp_path / "c.h5"))
    assert res.exit_code == 0, res.output
    assert store.read_info(tmp_path / "c.h5").n_cells > 0


# --- item 7 (issue 10) and item 11: a crop with nothing to show fails ----------------------

def test_crop_where_every_field_fails_exits_non_zero(tiny: TinyScreen, tmp_path: Path) -> None:
    for tif in (tiny.root / "images").rglob("*.tif"):
        tif.unlink()
    res = runner.invoke(app, crop_args(tiny, tmp_path / "c.h5"))
    one_line_error(res, "no cells were cropped", "every one of the 4 fields failed",
                   "missing_image")


def test_crop_of_a_missing_table_says_so(tmp_path: Path) -> None:
    res = runner.invoke(app, ["crop", str(tmp_path / "missing.csv"), "--out",
                              str(tmp_path / "c.h5")])
    one_line_error(res, "missing.csv: no such file")


# --- item 8: bad pixels and rows ------------------------------------------------------------

def test_nan_and_inf_pixels_are_reported_and_their_cells_rejected(tiny: TinyScreen,
                                                                  tmp_path: Path) -> None:
    table = tiny.images.copy()
    for k, ch in enumerate(("DNA", "Tubulin", "Actin")):
        for i, row in table.iterrows():
            src = Path(row[f"PathName_{ch}"]) / row[f"FileName_{ch}"]
            plane = tifffile.imread(src).astype(np.float32)
            if i == 0 and k == 1:
                plane[30, 21] = np.nan  # inside the first nucleus of the first field
                plane[0, 0] = np.inf    # background, in no crop
            tifffile.imwrite(src.with_suffix(".f.tif"), plane)
            table.loc[i, f"FileName_{ch}"] = src.with_suffix(".f.tif").name
    table.to_csv(tiny.image_table, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.issues == {"nonfinite_pixels": 1} and summary.n_cells == 11
    assert summary.n_rejected == 1 and np.isfinite(store.read_crops(out)).all()
    assert "2 NaN or infinite pixels" in store.read_issues(out)["reason"][0]


def test_8_bit_field_among_16_bit_ones_is_not_mixed_in(tiny: TinyScreen, tmp_path: Path) -> None:
    row = tiny.images.iloc[0]
    first = disc_field([(21.0, 30.0), (40.3, 20.6), (60.0, 40.0), (3.0, 30.0)], np.uint8)
    for k, ch in enumerate(("DNA", "Tubulin", "Actin")):
        tifffile.imwrite(Path(row[f"PathName_{ch}"]) / row[f"FileName_{ch}"], first[k])
    summary = crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects,
                          config=CFG)
    # The first field sets the screen's type (uint8): the three 16-bit fields fail.
    assert summary.issues == {"mixed_bit_depth": 3} and summary.n_cells == 3
    assert "different scales" in store.read_issues(tmp_path / "c.h5")["reason"][0]


def test_duplicate_object_rows_become_one_cell(tiny: TinyScreen, tmp_path: Path) -> None:
    pd.concat([tiny.nuclei, tiny.nuclei.iloc[[1, 2]]]).to_csv(tiny.objects, index=False)
    out = tmp_path / "c.h5"
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.n_cells == 12 and summary.issues == {"duplicate_object": 2}
    cells = store.read_cells(out)
    assert not cells.duplicated(["ImageNumber", "ObjectNumber"]).any()
    issues = store.read_issues(out)
    assert list(issues["row"]) == [18, 19] and "appears again" in issues["reason"][0]


def test_store_whose_cell_table_is_short_is_refused(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    with h5py.File(out, "a") as f:
        for col in json.loads(f["cells"].attrs["columns"]):
            f["cells"][col].resize((10,))
    with pytest.raises(StoreError, match="has 10 rows for 12 crops"):
        store.read_info(out)
    res = runner.invoke(app, ["train", str(out), "--out", str(tmp_path / "run"), "--steps",
                              "1"])
    one_line_error(res, "damaged or edited crop store")


def test_store_attributes_that_lie_are_refused(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    with h5py.File(out, "a") as f:
        f.attrs["channels"] = json.dumps(["DNA", "Actin"])
    with pytest.raises(StoreError, match="attributes say 2 channels at 16 px"):
        store.read_cells(out)


# --- item 10: bad values end in one line naming the file, row, column or option -----------

@pytest.mark.parametrize("column, value, expected", [
    ("ImageNumber", "two", "row 3: ImageNumber is 'two', not a whole number"),
    ("ImageNumber", "", "row 3: ImageNumber is empty"),
    ("ObjectNumber", "x1", "row 3: ObjectNumber is 'x1', not a whole number"),
])
def test_non_numeric_object_keys(tiny: TinyScreen, tmp_path: Path, column: str, value: str,
                                 expected: str) -> None:
    table = tiny.nuclei.astype({column: object})
    table.loc[1, column] = value
    table.to_csv(tiny.objects, index=False)
    res = runner.invoke(app, crop_args(tiny, tmp_path / "c.h5"))
    one_line_error(res, "Nuclei.csv", expected)


def test_non_numeric_image_number_in_the_image_table(tiny: TinyScreen, tmp_path: Path) -> None:
    tiny.images.astype({"ImageNumber": object}).assign(
        ImageNumber=["1", "2", "3", "four"]).to_csv(tiny.image_table, index=False)
    res = runner.invoke(app, crop_args(tiny, tmp_path / "c.h5"))
    one_line_error(res, "Image.csv, row 5: ImageNumber is 'four'")


def test_broken_checkpoints(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, crops = tiny_model
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(empty)
    good = torch.load(model, weights_only=True)
    for name, change, words in (
            ("nokeys.pt", lambda c: c.pop("model"), "missing model"),
            ("badversion.pt", lambda c: c.update(version="one"), "version 'one'"),
            ("badconfig.pt", lambda c: c.update(model_config=[1, 2]), "model_config")):
        ckpt = dict(good)
        change(ckpt)
        torch.save(ckpt, tmp_path / name)
        res = runner.invoke(app, ["embed", str(tmp_path / name), str(crops), "--out",
                                  str(tmp_path / "p.h5")])
        one_line_error(res, name, words)
    res = runner.invoke(app, ["embed", str(empty), str(crops), "--out", str(tmp_path / "p.h5")])
    one_line_error(res, "empty.pt: empty file")


@pytest.mark.parametrize("option, value", [("--lr", "nan"), ("--lr", "-0.1"),
                                           ("--disc-lr", "inf"), ("--lr", "0")])
def test_learning_rate_must_be_a_positive_number(synthetic_store: Path, tmp_path: Path,
                                                 option: str, value: str) -> None:
    res = runner.invoke(app, ["train", str(synthetic_store), "--out", str(tmp_path / "r"),
                              option, value])
    one_line_error(res, f"{option} must be a positive number")
    with pytest.raises(InputError):
        TrainConfig(lr=float(value)) if option == "--lr" else TrainConfig(disc_lr=float(value))


def test_out_that_cannot_be_written(tiny: TinyScreen, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = runner.invoke(app, crop_args(tiny, blocker / "c.h5"))
    one_line_error(res, str(blocker), "is a file, not a folder")
    res = runner.invoke(app, crop_args(tiny, tmp_path, "--overwrite"))
    one_line_error(res, "is a folder")


def test_full_disk_is_one_line(tiny: TinyScreen, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "c.h5.partial"))

    monkeypatch.setattr(store.CropStoreWriter, "commit", full)
    res = runner.invoke(app, crop_args(tiny, tmp_path / "c.h5"))
    one_line_error(res, "c.h5.partial: No space left on device")
    res = runner.invoke(app, ["--debug", *crop_args(tiny, tmp_path / "c.h5")])
    assert isinstance(res.exception, OSError)  # --debug lets the traceback through


def test_zero_byte_npy_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"")
    pd.DataFrame({"crop_path": ["a.npy"], "plate": ["P1"], "well": ["A01"],
                  "compound": ["DMSO"], "concentration": [0.0]}).to_csv(
        tmp_path / "meta.csv", index=False)
    res = runner.invoke(app, ["crop", "--singlecell", str(folder), "--metadata",
                              str(tmp_path / "meta.csv"), "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "a.npy")
    assert "Aborted" not in res.output


# --- item 11: exit codes ----------------------------------------------------------------------

TRAIN_ARGS = ["--steps", "100000", "--batch-size", "4", "--latent-dim", "8", "--filters", "8",
              "--model", "vae", "--log-every", "1", "--val-every", "100000", "--image-every",
              "100000", "--checkpoint-every", "100000", "--device", "cpu"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_training_exits_128_plus_signal_after_its_checkpoint(
        synthetic_store: Path, tmp_path: Path, sig: int, code: int) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cellprof", "train", str(synthetic_store),
                             "--out", str(run), *TRAIN_ARGS], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded CI machine imports torch slowly
    losses = run / "losses.csv"
    while time.time() < deadline and proc.poll() is None and (
            not losses.exists() or len(losses.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    assert load_checkpoint(run / "checkpoints" / "last.pt")["status"] == "interrupted"


def test_embed_checks_its_options_before_embedding(tiny_model: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    model, crops = tiny_model
    res = runner.invoke(app, ["embed", str(model), str(crops), "--out", str(tmp_path / "p.h5"),
                              "--format", "csv", "--level", "plate"])
    assert res.exit_code == 2 and "Traceback" not in res.output  # refused by the parser
    assert "--level" in res.output and "'cell'" in res.output and "'treatment'" in res.output
    assert not (tmp_path / "p.h5").exists() and not (tmp_path / "p.h5.partial").exists()


# --- item 12: workers -------------------------------------------------------------------------

def test_workers_capped_at_fields_and_warned_above_cpus(
        tiny: TinyScreen, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent import futures

    started = []
    real = futures.ProcessPoolExecutor.__init__

    def spy(self, max_workers=None, **kw):
        started.append(max_workers)
        real(self, max_workers=max_workers, **kw)

    monkeypatch.setattr(futures.ProcessPoolExecutor, "__init__", spy)
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        summary = crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects,
                              config=CFG, workers=1000)
    assert summary.n_cells == 12 and started == [4]  # four fields, four workers
    assert f"--workers 1000 is more than this machine's {os.cpu_count()} CPUs" in caplog.text
    with pytest.raises(InputError, match="--workers must be at least 1"):
        crop_screen(tiny.image_table, tmp_path / "d.h5", objects=tiny.objects, config=CFG,
                    workers=0)
