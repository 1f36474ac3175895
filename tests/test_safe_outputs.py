"""Outputs never destroy inputs, one writer per output, and resumes notice changed inputs."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TinyScreen
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.formats.profiles import read_profiles
from cellprof.formats.safeio import OutputLock, atomic_path, fingerprint, fingerprint_change
from cellprof.learn.embed import EmbedConfig, embed
from cellprof.learn.train import TrainConfig, train
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.merge import merge_stores

runner = CliRunner()
CFG = CropConfig(size=16)


class Interrupt(Exception):
    pass


def stop_after(n: int, stage: str = "crop"):
    def progress(at: str, done: int, total: int) -> None:
        if at == stage and done >= n:
            raise Interrupt
    return progress


# --- atomic files -------------------------------------------------------------------------

def test_atomic_path_leaves_no_trace_of_a_failed_write(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


# --- item 3: an output is never one of the inputs -----------------------------------------

def test_merge_refuses_to_write_over_its_input(tiny: TinyScreen, tmp_path: Path) -> None:
    a = tmp_path / "all.h5"
    crop_screen(tiny.image_table, a, objects=tiny.objects, config=CFG)
    before = store.read_crops(a)
    res = runner.invoke(app, ["merge", str(a), str(a), "--out", str(a), "--overwrite"])
    assert res.exit_code == 1 and "is the input" in res.output and "Traceback" not in res.output
    np.testing.assert_array_equal(store.read_crops(a), before)  # still there, unchanged


def test_merge_and_match_refuse_one_file_given_twice(tiny: TinyScreen, tmp_path: Path) -> None:
    a = tmp_path / "a.h5"
    crop_screen(tiny.image_table, a, objects=tiny.objects, config=CFG)
    with pytest.raises(InputError, match="given twice"):
        merge_stores([a, tmp_path / "." / "a.h5"], tmp_path / "m.h5")
    table = tmp_path / "p.csv"
    pd.DataFrame({"Metadata_Plate": ["P"], "Metadata_Well": ["A01"], "f": [1.0]}).to_csv(
        table, index=False)
    res = runner.invoke(app, ["match", str(table), str(table), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "given twice" in res.output


@pytest.mark.parametrize("target", ["Image.csv", "Nuclei.csv", "image"])
def test_crop_refuses_to_write_over_an_input(tiny: TinyScreen, tmp_path: Path,
                                             target: str) -> None:
    path = next((tiny.root / "images" / "Week1_P1").glob("*.tif")) if target == "image" \
        else tiny.root / target
    before = path.read_bytes()
    res = runner.invoke(app, ["crop", str(tiny.image_table), "--objects", str(tiny.objects),
                              "--size", "16", "--out", str(path), "--overwrite"])
    assert res.exit_code == 1 and "is the input" in res.output
    assert path.read_bytes() == before


def test_embed_refuses_to_write_over_its_store(tiny_model: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    ckpt, crops = tiny_model
    copy = tmp_path / "crops.h5"
    shutil.copy(crops, copy)
    res = runner.invoke(app, ["embed", str(ckpt), str(copy), "--out", str(copy),
                              "--overwrite"])
    assert res.exit_code == 1 and "is the input" in res.output
    assert store.read_info(copy).n_cells == store.read_info(crops).n_cells


# --- item 4: one writer per output ----------------------------------------------------------

HOLD = """
import sys, time
from cellprof.formats.safeio import OutputLock
lock = OutputLock(sys.argv[1], folder=sys.argv[2] == "folder").acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_lock(out: Path, folder: bool = False) -> subprocess.Popen:
    """Another process writing ``out`` (holding its lock) until killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out),
                             "folder" if folder else "file"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_second_crop_into_one_output_is_refused(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    other = hold_lock(out)
    try:
        res = runner.invoke(app, ["crop", str(tiny.image_table), "--objects",
                                  str(tiny.objects), "--size", "16", "--out", str(out)])
        assert res.exit_code == 1
        assert f"another cellprof process (pid {other.pid}) is writing it" in res.output
        assert not out.exists()
    finally:
        stop(other)
    # The kernel drops a killed holder's lock: the next run proceeds.
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert store.read_info(out).n_cells == 12 and not out.with_name("crops.h5.lock").exists()


def test_second_training_into_one_folder_is_refused(synthetic_store: Path,
                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    other = hold_lock(run, folder=True)
    try:
        with pytest.raises(InputError, match="another cellprof process"):
            train(synthetic_store, run, config=TrainConfig(steps=1, batch_size=4))
        assert not (run / "losses.csv").exists()
    finally:
        stop(other)


def test_second_writer_in_one_process_is_refused(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    with OutputLock(out):
        with pytest.raises(InputError, match="is writing it"):
            crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)


# --- item 5: resume trusts contents, not paths ---------------------------------------------

def test_fingerprint_sees_content_not_touches(tmp_path: Path) -> None:
    t = tmp_path / "Nuclei.csv"
    t.write_text("a,b\n1,2\n")
    fp = fingerprint({"objects": t})
    os.utime(t, (time.time() + 100, time.time() + 100))
    assert fingerprint_change(fp, fingerprint({"objects": t})) is None
    t.write_text("a,b\n1,3\n")
    assert fingerprint_change(fp, fingerprint({"objects": t})) == "Nuclei.csv changed"


def test_crop_resume_restarts_when_the_object_table_changed(
        tiny: TinyScreen, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "crops.h5"
    with pytest.raises(Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    progress=stop_after(2))
    moved = tiny.nuclei.assign(Location_Center_X=tiny.nuclei["Location_Center_X"] + 3)
    moved.to_csv(tiny.objects, index=False)
    ref = tmp_path / "ref.h5"
    crop_screen(tiny.image_table, ref, objects=tiny.objects, config=CFG)
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG)
    assert summary.resumed_fields == 0
    assert "starting over: Nuclei.csv changed" in caplog.text
    pd.testing.assert_frame_equal(store.read_cells(out), store.read_cells(ref))
    np.testing.assert_array_equal(store.read_crops(out), store.read_crops(ref))


def test_crop_overwrite_starts_over(tiny: TinyScreen, tmp_path: Path) -> None:
    out = tmp_path / "crops.h5"
    with pytest.raises(Interrupt):
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                    progress=stop_after(2))
    summary = crop_screen(tiny.image_table, out, objects=tiny.objects, config=CFG,
                          overwrite=True)
    assert summary.resumed_fields == 0 and summary.n_cells == 12


def test_embed_resume_restarts_when_the_store_was_replaced(
        tiny_model: tuple[Path, Path], tiny: TinyScreen, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    ckpt, original = tiny_model
    crops = tmp_path / "crops.h5"
    shutil.copy(original, crops)
    out = tmp_path / "p.h5"
    with pytest.raises(Interrupt):
        embed(ckpt, crops, out, config=EmbedConfig(batch_size=64),
              progress=stop_after(64, "embed"))
    crops.unlink()  # replaced by another store of the same channels and size
    crop_screen(tiny.image_table, crops, objects=tiny.objects,
                config=CropConfig(size=store.read_info(original).crop_size, edge="pad"))
    fresh = embed(ckpt, crops, tmp_path / "fresh.h5", config=EmbedConfig(batch_size=64))
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        res = embed(ckpt, crops, out, config=EmbedConfig(batch_size=64))
    assert res.resumed_from == 0 and "starting over: crops.h5 changed" in caplog.text
    meta, feats, _ = read_profiles(out)
    pd.testing.assert_frame_equal(meta, store.read_cells(crops))
    np.testing.assert_array_equal(feats, read_profiles(fresh.out)[1])
    assert np.abs(feats).sum(axis=1).min() > 0  # no all-zero rows


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    other = hold_lock(out)
    os.kill(other.pid, signal.SIGKILL)
    stop(other)
    with OutputLock(out):
        pass
