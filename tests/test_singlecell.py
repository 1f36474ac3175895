"""``crop --singlecell``: pre-cut crops keep their own table row's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellprof import store
from cellprof.singlecell import import_singlecell


def _flat_folder(root: Path, n: int = 6) -> pd.DataFrame:
    """``n`` crops in one folder, each with its own well, compound and phenotype label; crop
    ``i`` is filled with the value ``i`` so the store says which crop is which."""
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"cell_{i}.npy"
        np.save(root / name, np.full((16, 16, 2), i, dtype=np.uint16))
        rows.append({"crop_path": name, "plate": "P1", "well": f"B0{i % 3 + 1}",
                     "site": 1 + i // 3, "compound": f"cmp{i % 3}", "concentration": 0.1 * i,
                     "phenotype": f"class{i % 4}"})
    table = pd.DataFrame(rows)
    table.to_csv(root / "meta.csv", index=False)
    return table


def test_flat_folder_keeps_each_rows_metadata(tmp_path: Path) -> None:
    """A flat folder whose table gives each crop its own well, compound and label imports
    each crop with its own row, and fields come from the table's plate/well/site."""
    folder = tmp_path / "crops"
    table = _flat_folder(folder)
    out = tmp_path / "c.h5"
    summary = import_singlecell(folder, folder / "meta.csv", out)
    assert summary.n_cells == len(table)
    crops, cells = store.read_crops(out), store.read_cells(out)
    which = crops[:, 0, 0, 0].astype(int)          # the crop's own index
    got = cells.assign(i=which).set_index("i").sort_index()
    assert got["Metadata_Well"].tolist() == table["well"].tolist()
    assert got["Metadata_Compound"].tolist() == table["compound"].tolist()
    np.testing.assert_allclose(got["Metadata_Concentration"], table["concentration"])
    assert got["Metadata_phenotype"].tolist() == table["phenotype"].tolist()
    assert got["Metadata_Site"].tolist() == table["site"].tolist()
    # one field per (plate, well, site), not one for the whole folder
    fields = store.read_fields(out)
    assert len(fields) == len(table.groupby(["well", "site"]))
    assert set(zip(fields["Metadata_Well"], fields["Metadata_Site"], strict=True)) == \
        set(zip(table["well"], table["site"], strict=True))
    # cells of one field share its ImageNumber and have distinct ObjectNumbers
    assert not cells.duplicated(["ImageNumber", "ObjectNumber"]).any()
    assert (cells.groupby("ImageNumber")["Metadata_Well"].nunique() == 1).all()


def test_folder_per_field_without_well_is_grouped_by_folder(tmp_path: Path) -> None:
    """Without a well column, crops are grouped into fields by their folder (BBBC021's
    layout) and per-cell columns still stay per cell."""
    folder = tmp_path / "crops"
    rows = []
    for f in range(2):
        (folder / f"field{f}").mkdir(parents=True)
        for j in range(3):
            name = f"field{f}/c{j}.npy"
            np.save(folder / name, np.full((12, 12), 10 * f + j, dtype=np.uint8))
            rows.append({"crop_path": name, "Metadata_Plate": "P", "label": f"L{j}"})
    pd.DataFrame(rows).to_csv(folder / "meta.csv", index=False)
    out = tmp_path / "c.h5"
    import_singlecell(folder, folder / "meta.csv", out)
    cells, crops = store.read_cells(out), store.read_crops(out)
    assert store.read_info(out).channels == ("ch0",)
    assert cells["ImageNumber"].tolist() == [1, 1, 1, 2, 2, 2]
    assert cells["ObjectNumber"].tolist() == [1, 2, 3, 1, 2, 3]
    assert cells["Metadata_label"].tolist() == ["L0", "L1", "L2"] * 2
    assert crops[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
