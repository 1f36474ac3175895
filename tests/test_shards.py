"""Scaling out by plate: crop shards, merge them, match several profile files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TinyScreen

from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.merge import merge_stores


def test_plate_shards_merge_into_the_whole(tiny: TinyScreen, tmp_path: Path) -> None:
    whole = tmp_path / "whole.h5"
    crop_screen(tiny.image_table, whole, objects=tiny.objects, config=CropConfig(size=16))
    shards = []
    for plate in ("Week1_P1", "Week2_P1"):
        shards.append(tmp_path / f"{plate}.h5")
        s = crop_screen(tiny.image_table, shards[-1], objects=tiny.objects,
                        config=CropConfig(size=16, plates=(plate,)))
        assert s.n_fields == 2
        assert set(store.read_cells(shards[-1])["Metadata_Plate"]) == {plate}
    merged = merge_stores(shards, tmp_path / "merged.h5")
    np.testing.assert_array_equal(store.read_crops(merged), store.read_crops(whole))
    pd.testing.assert_frame_equal(store.read_cells(merged), store.read_cells(whole))
    assert len(store.read_fields(merged)) == 4 and store.read_info(merged).summary["merged"] == 2


def test_merge_refuses_mismatched_shards(tiny: TinyScreen, tmp_path: Path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    crop_screen(tiny.image_table, a, objects=tiny.objects, config=CropConfig(size=16))
    crop_screen(tiny.image_table, b, objects=tiny.objects, config=CropConfig(size=12))
    with pytest.raises(InputError, match="b.h5: channels .* at 12 px .* do not match"):
        merge_stores([a, b], tmp_path / "m.h5")
    with pytest.raises(InputError, match="no plate Week9"):
        crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects,
                    config=CropConfig(size=16, plates=("Week9",)))
