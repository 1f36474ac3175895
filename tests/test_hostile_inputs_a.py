"""Issue 22, round two (part a): inputs that used to exit 0 with wrong data. Each case now
ends in one clear line naming the file, row or output at fault, or is handled and logged."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import Stop, TinyScreen, stop_after
from test_hostile import one_line_error
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.formats.profiles import ProfileWriter
from cellprof.formats.safeio import OutputLock
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.singlecell import import_singlecell

runner = CliRunner()


def _png(path: Path, value: int, dtype: type) -> None:
    from skimage.io import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, np.full((12, 12), value, dtype), check_contrast=False)


def _tif(path: Path, plane: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, plane)


# --- item 1: one bit depth per single-cell store -------------------------------------------

@pytest.mark.parametrize("first, second", [(np.uint8, np.uint16), (np.uint16, np.uint8)])
def test_singlecell_8_and_16_bit_crops_are_refused(tmp_path: Path, first: type,
                                                   second: type) -> None:
    """8-bit first stored 5000 as 136 (5000 mod 256); 16-bit first stored 8-bit values
    unscaled beside 16-bit ones. Either order is refused, naming a file of each depth."""
    folder = tmp_path / "cells"
    _png(folder / "a" / "c0.png", 100, first)
    _png(folder / "a" / "c1.png", 5000 if second is np.uint16 else 100, second)
    res = runner.invoke(app, ["crop", "--singlecell", str(folder), "--out",
                              str(tmp_path / "c.h5")])
    depth = {np.uint8: "8-bit", np.uint16: "16-bit"}
    one_line_error(res, "c1.png", f"{depth[second]}", "c0.png", f"{depth[first]}",
                   "one bit depth")
    assert not (tmp_path / "c.h5").exists()


def test_singlecell_16_bit_tiff_and_png_are_one_depth(tmp_path: Path) -> None:
    """16-bit values read the same from a TIFF (either byte order) and a PNG."""
    folder = tmp_path / "cells"
    _tif(folder / "a" / "c0.tif", np.full((12, 12), 5000, ">u2"))
    _png(folder / "a" / "c1.png", 5001, np.uint16)
    import_singlecell(folder, None, tmp_path / "c.h5", strict=True)
    crops = store.read_crops(tmp_path / "c.h5")
    assert crops.dtype == np.uint16 and crops[:, 0, 0, 0].tolist() == [5000, 5001]


def test_singlecell_float_crops_reject_nan_and_keep_float32(tmp_path: Path) -> None:
    """Float TIFF crops (32- and 64-bit: one scale) are stored as float32; a crop holding a
    NaN is rejected and reported, as the table crop does: one NaN makes a training step's
    every loss NaN."""
    folder = tmp_path / "cells"
    _tif(folder / "a" / "c0.tif", np.full((12, 12), 0.5, np.float64))
    bad = np.full((12, 12), 0.25, np.float32)
    bad[3, 4] = np.nan
    _tif(folder / "a" / "c1.tif", bad)
    _tif(folder / "a" / "c2.tif", np.full((12, 12), 0.75, np.float32))
    summary = import_singlecell(folder, None, tmp_path / "c.h5")
    assert summary.n_cells == 2 and summary.issues == {"nonfinite_pixels": 1}
    crops = store.read_crops(tmp_path / "c.h5")
    assert crops.dtype == np.float32 and crops[:, 0, 0, 0].tolist() == [0.5, 0.75]
    assert "c1.tif: 1 NaN" in store.read_issues(tmp_path / "c.h5")["reason"][0]


def test_singlecell_float_after_integer_crops_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    _tif(folder / "a" / "c0.tif", np.full((12, 12), 700, np.uint16))
    _tif(folder / "a" / "c1.tif", np.full((12, 12), 0.5, np.float32))
    with pytest.raises(InputError, match=r"c1.tif: float crop .*/c0.tif is 16-bit"):
        import_singlecell(folder, None, tmp_path / "c.h5")


# --- item 2: a resume notices an edited table or crop ----------------------------------------

def _labelled_crops(root: Path, n_wells: int = 12) -> Path:
    """One crop per well (one field each), crop ``i`` filled with ``i``; compounds A and B
    alternate; returns the metadata table."""
    root.mkdir(parents=True)
    rows = []
    for i in range(n_wells):
        np.save(root / f"c{i}.npy", np.full((12, 12, 1), i, np.uint16))
        rows.append({"crop_path": f"c{i}.npy", "plate": "P1", "well": f"B{i + 1:02d}",
                     "compound": "AB"[i % 2], "concentration": 1.0})
    pd.DataFrame(rows).to_csv(root / "meta.csv", index=False)
    return root / "meta.csv"


def _compounds(out: Path) -> dict[int, str]:
    crops, cells = store.read_crops(out), store.read_cells(out)
    return dict(zip(crops[:, 0, 0, 0].astype(int).tolist(), cells["Metadata_Compound"],
                    strict=True))


def _interrupted_import(folder: Path, meta: Path, out: Path) -> None:
    with pytest.raises(Stop):
        import_singlecell(folder, meta, out, progress=stop_after(5))
    assert Path(f"{out}.partial").exists()


def test_singlecell_resume_after_an_edited_table_starts_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Swapping compounds in --metadata after a kill used to resume: the cells committed
    before kept the old compounds. Now the import starts over and says why."""
    folder, out = tmp_path / "cells", tmp_path / "c.h5"
    meta = _labelled_crops(folder)
    _interrupted_import(folder, meta, out)
    table = pd.read_csv(meta)
    table["compound"] = table["compound"].map({"A": "B", "B": "A"})
    table.to_csv(meta, index=False)
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        summary = import_singlecell(folder, meta, out)
    assert summary.resumed_fields == 0 and summary.n_cells == 12
    assert "starting over" in caplog.text and "meta.csv changed" in caplog.text
    assert _compounds(out) == {i: "BA"[i % 2] for i in range(12)}


def test_singlecell_resume_after_a_replaced_crop_starts_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, out = tmp_path / "cells", tmp_path / "c.h5"
    meta = _labelled_crops(folder)
    _interrupted_import(folder, meta, out)
    np.save(folder / "c0.npy", np.full((12, 12, 1), 40, np.uint16))  # a corrected crop
    # of the same size: only its time tells (set apart from the first's on any file system)
    os.utime(folder / "c0.npy", ns=(1, 1))
    with caplog.at_level(logging.WARNING, logger="cellprof"):
        summary = import_singlecell(folder, meta, out)
    assert summary.resumed_fields == 0 and "starting over: crop files changed" in caplog.text
    assert sorted(_compounds(out)) == [*range(1, 12), 40]


def test_singlecell_resume_with_unchanged_inputs_still_resumes(tmp_path: Path) -> None:
    folder, out = tmp_path / "cells", tmp_path / "c.h5"
    meta = _labelled_crops(folder)
    _interrupted_import(folder, meta, out)
    summary = import_singlecell(folder, meta, out)
    assert summary.resumed_fields > 0 and summary.n_cells == 12
    assert _compounds(out) == {i: "AB"[i % 2] for i in range(12)}


# --- item 8: one crop listed twice ---------------------------------------------------------

def test_singlecell_crop_listed_three_times_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    meta = _labelled_crops(folder, n_wells=3)
    table = pd.read_csv(meta)
    table.loc[len(table)] = table.loc[1]
    table.loc[len(table)] = table.loc[1].replace({"c1.npy": "./c1.npy"})
    table.to_csv(meta, index=False)
    res = runner.invoke(app, ["crop", "--singlecell", str(folder), "--metadata", str(meta),
                              "--out", str(tmp_path / "c.h5")])
    one_line_error(res, "meta.csv", "c1.npy", "rows 3, 5, 6")
    assert not (tmp_path / "c.h5").exists()


# --- item 9: merge never takes one cell twice ------------------------------------------------

def test_merge_of_stores_cut_from_the_same_plates_is_refused(tiny: TinyScreen,
                                                             tmp_path: Path) -> None:
    cfg = CropConfig(size=16)
    crop_screen(tiny.image_table, tmp_path / "all.h5", objects=tiny.objects, config=cfg)
    crop_screen(tiny.image_table, tmp_path / "p1.h5", objects=tiny.objects,
                config=CropConfig(size=16, plates=("Week1_P1",)))
    res = runner.invoke(app, ["merge", str(tmp_path / "all.h5"), str(tmp_path / "p1.h5"),
                              "--out", str(tmp_path / "m.h5")])
    one_line_error(res, "6 of 18 cells", "p1.h5", "all.h5", "Week1_P1", "image 1", "object 1")
    assert not (tmp_path / "m.h5").exists()


# --- item 3: one writer per exported table ---------------------------------------------------

@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    """6 cells in 2 wells of one plate, 2 features."""
    cells = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": ["B02"] * 3 + ["C03"] * 3,
                          "Metadata_Compound": ["DMSO"] * 3 + ["taxol"] * 3,
                          "Metadata_Concentration": [0.0] * 3 + [0.3] * 3,
                          "ImageNumber": [1] * 3 + [2] * 3, "ObjectNumber": [1, 2, 3] * 2})
    path = tmp_path / "profiles.h5"
    writer = ProfileWriter(path, cells, ["VAE_000", "VAE_001"], {"store": "x"}, logvar=False)
    writer.write(0, np.arange(12, dtype=np.float32).reshape(6, 2))
    writer.finish()
    return path


def test_export_refuses_a_second_writer_of_the_same_table(profiles: Path,
                                                          tmp_path: Path) -> None:
    """While another export (or an embed/measure --format) writes a table, a second run
    into it is refused, naming it; the table the first run writes is untouched."""
    from cellprof.profile.aggregate import export

    out = tmp_path / "t.csv"
    with OutputLock(out):  # as another process holds it while it writes
        res = runner.invoke(app, ["export", str(profiles), "--format", "csv", "--out",
                                  str(out), "--level", "well"])
        one_line_error(res, str(out), "another cellprof process")
        with pytest.raises(InputError, match="another cellprof process"):
            export(profiles, out, "cell")  # what embed/measure --format call
    assert not out.exists()
    res = runner.invoke(app, ["export", str(profiles), "--format", "csv", "--out", str(out),
                              "--level", "well"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out)) == 2 and not (tmp_path / "t.csv.lock").exists()


def test_export_writes_through_a_temporary_file_of_its_own(profiles: Path,
                                                           tmp_path: Path) -> None:
    """The temporary file is the run's own: one left by another run (a kill, an older
    cellprof) is neither written through nor renamed into place."""
    out = tmp_path / "t.parquet"
    other = tmp_path / "t.parquet.partial"
    other.write_text("another run's half-written table")
    for level, rows in (("cell", 6), ("well", 2)):
        res = runner.invoke(app, ["export", str(profiles), "--out", str(out), "--level",
                                  level, "--overwrite"])
        assert res.exit_code == 0, res.output
        table = pd.read_parquet(out)
        assert len(table) == rows and ("Metadata_ObjectNumber" in table) == (level == "cell")
    assert other.read_text() == "another run's half-written table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiles.h5", "t.parquet",
                                                          "t.parquet.partial"]


def test_export_removes_the_temporary_file_a_killed_export_left(profiles: Path,
                                                                 tmp_path: Path) -> None:
    """SIGKILL leaves an export's hidden temporary table (no cleanup runs); the next export of
    the same table removes it, and leaves the temporary of a run still going."""
    import subprocess
    import sys

    out = tmp_path / "t.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = tmp_path / f".{dead}-0123abcd.t.csv"
    left.write_text("half a table")
    alive = tmp_path / f".{os.getpid()}-89abcdef.t.csv"  # a run of this (live) process
    alive.write_text("being written")
    res = runner.invoke(app, ["export", str(profiles), "--format", "csv", "--out", str(out),
                              "--level", "well"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out)) == 2 and not left.exists() and alive.exists()


# --- item 12: an interrupted demo stops as train does ----------------------------------------

_TINY_DEMO = """
import sys
from dataclasses import replace
import cellprof.example.demo as demo
from cellprof.example.synth import SynthConfig
from cellprof.learn.config import ModelConfig

real = demo.run_demo

def tiny(outdir, *, config, **kw):
    config = replace(config, crop_size=36, batch_size=8, synth=SynthConfig(
        field_size=128, cells_per_field=10, sites=1, batches=1, plates_per_batch=2),
        model=ModelConfig(latent_dim=8, enc_filters=8, dec_filters=8))
    return real(outdir, config=config, **kw)

demo.run_demo = tiny
from cellprof.cli import main
sys.argv = ["cellprof", "demo", sys.argv[1], "--steps", "100000", "--device", "cpu"]
main()
"""


def test_demo_sent_sigterm_during_training_stops_with_143(tmp_path: Path) -> None:
    """The demo used to go on with a partly trained model, embed and match with it and exit
    0. Now it stops as `cellprof train` does: exit 143, the run folder and how to resume."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _TINY_DEMO, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    losses = out / "run" / "losses.csv"
    deadline = time.time() + 600  # generous: a loaded CI machine imports torch slowly
    while time.time() < deadline and proc.poll() is None and (
            not losses.exists() or len(losses.read_text().splitlines()) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, output
    flat = " ".join(output.split())
    assert "interrupted" in flat and str(out / "run") in flat and "--resume" in flat, output
    assert "done" not in flat
    assert not (out / "profiles.h5").exists() and not (out / "report").exists()
    assert (out / "run" / "checkpoints" / "last.pt").exists()
