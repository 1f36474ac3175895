"""Workers started every way Python starts them give the one-process store.

Linux forks worker processes by default up to Python 3.13; Python 3.14 starts them from a
fork server, and macOS and Windows spawn them. A worker's parent is then not the crop
process, so its watch for a killed crop must not mistake that for an orphaned worker.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TinyScreen

from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.singlecell import import_singlecell

METHODS = [m for m in ("fork", "forkserver", "spawn")
           if m in multiprocessing.get_all_start_methods()]


@pytest.fixture(params=METHODS)
def start_method(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process-wide start method set to each in turn (as a user's script may set it),
    and put back after."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(request.param, force=True)
    yield request.param
    multiprocessing.set_start_method(before, force=True)


def same_store(a: Path, b: Path) -> None:
    np.testing.assert_array_equal(store.read_crops(a), store.read_crops(b))
    pd.testing.assert_frame_equal(store.read_cells(a), store.read_cells(b))
    pd.testing.assert_frame_equal(store.read_fields(a), store.read_fields(b))
    pd.testing.assert_frame_equal(store.read_issues(a), store.read_issues(b))


def test_table_crop_with_two_workers(start_method: str, tiny: TinyScreen,
                                     tmp_path: Path) -> None:
    def run(out: Path, workers: int) -> None:
        crop_screen(tiny.image_table, out, objects=tiny.objects, config=CropConfig(size=16),
                    workers=workers)

    run(tmp_path / "one.h5", 1)
    run(tmp_path / "two.h5", 2)
    assert len(store.read_cells(tmp_path / "two.h5")) == 12
    same_store(tmp_path / "two.h5", tmp_path / "one.h5")


def test_singlecell_import_with_two_workers(start_method: str, tmp_path: Path) -> None:
    folder = tmp_path / "crops"
    for i in range(8):
        (folder / f"well{i % 4}").mkdir(parents=True, exist_ok=True)
        np.save(folder / f"well{i % 4}" / f"cell_{i}.npy",
                np.full((16, 16, 2), i, dtype=np.uint16))
    import_singlecell(folder, None, tmp_path / "one.h5", workers=1)
    import_singlecell(folder, None, tmp_path / "two.h5", workers=2)
    assert len(store.read_fields(tmp_path / "two.h5")) == 4
    same_store(tmp_path / "two.h5", tmp_path / "one.h5")
