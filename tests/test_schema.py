"""Every way of making a crop store writes the layout :mod:`cellprof.formats.schema` declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from conftest import TinyScreen

from cellprof.formats import schema, store
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.merge import merge_stores
from cellprof.prepare.singlecell import import_singlecell


def _layout_ok(path: Path) -> None:
    cells, fields = store.read_cells(path), store.read_fields(path)
    assert tuple(cells.columns[:6]) == schema.KEY_METADATA
    assert tuple(cells.columns[-5:]) == tuple(schema.CELL_KEYS)
    assert list(fields.columns[:2]) == [schema.FIELD_KEY, schema.IMAGE_NUMBER]
    assert set(schema.COUNTS) <= set(fields.columns)
    for ch in store.read_info(path).channels:
        assert {f"Intensity_{s}_{ch}" for s in schema.INTENSITY_STATS} <= set(fields.columns)


def test_cropped_imported_and_merged_stores_share_one_layout(tiny: TinyScreen,
                                                             tmp_path: Path) -> None:
    cropped = tmp_path / "cropped.h5"
    crop_screen(tiny.image_table, cropped, objects=tiny.objects, config=CropConfig(size=16))
    _layout_ok(cropped)
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.zeros((16, 16, 3), np.uint16))
    pd.DataFrame({"crop_path": [f"{i}.npy" for i in range(3)], "plate": "P9", "well": "A01",
                  "site": ["s1", "s2", "s3"]}).to_csv(folder / "m.csv", index=False)
    imported = tmp_path / "imported.h5"
    import_singlecell(folder, folder / "m.csv", imported, channels=("DNA", "Tubulin", "Actin"))
    _layout_ok(imported)
    merged = tmp_path / "merged.h5"
    merge_stores([cropped, imported], merged)
    _layout_ok(merged)
    cells = store.read_cells(merged)
    # a site stored as a number in one shard and as text in the other keeps both values
    assert cells["Metadata_Site"].astype(str).tolist()[-3:] == ["s1", "s2", "s3"]
    assert len(cells) > 3 and set(cells["Metadata_Site"].astype(str)[:-3]) == {"1"}


def test_table_parts_of_any_shape_are_written_as_one_table(tmp_path: Path) -> None:
    """A commit writes frames and numpy columns (workers' cell rows) side by side; values
    of the wrong kind, missing values and missing columns come out as a frame written in
    one piece would: "" for text, NaN for floats, -1 for integers, False for flags."""
    import h5py

    kinds = {"Metadata_Well": "str", "Metadata_Site": "str", "Count": "int",
             "Intensity": "float", "Padded": "bool"}
    frame = pd.DataFrame({"Metadata_Well": ["A01", None], "Metadata_Site": [1, 2],
                          "Count": [3, 4], "Intensity": [0.5, np.nan], "Padded": [True, False]})
    columns = {"Metadata_Well": np.array(["B02"], dtype=object),
               "Metadata_Site": np.array([3]), "Count": np.array([None], dtype=object),
               "Intensity": np.array(["2.5"], dtype=object)}  # no Padded column
    with h5py.File(tmp_path / "t.h5", "w") as f:
        table = store.ColumnTable.create(f, "cells", kinds)
        assert table.append_parts([frame, columns, {}], 0) == 3
        got = table.read()
    assert got["Metadata_Well"].tolist() == ["A01", "", "B02"]
    assert got["Metadata_Site"].tolist() == ["1", "2", "3"]
    assert got["Count"].tolist() == [3, 4, -1]
    np.testing.assert_array_equal(got["Intensity"].to_numpy(), [0.5, np.nan, 2.5])
    assert got["Padded"].tolist() == [True, False, False]
