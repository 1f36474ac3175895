"""``crop --singlecell``: pre-cut crops keep their own table row's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellprof.formats import store
from cellprof.prepare.singlecell import import_singlecell


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


def _png(path: Path, value: int) -> None:
    """A 12x12 RGB crop whose red, green and blue planes are value, value+1, value+2."""
    from skimage.io import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([np.full((12, 12), value + k, np.uint8) for k in range(3)], axis=-1)
    imsave(path, rgb, check_contrast=False)


def test_png_crops_in_class_folders_through_the_cli(tmp_path: Path) -> None:
    """RGB PNG crops in class sub-folders: the planes become the named channels and each
    crop's folder becomes its Metadata_Class."""
    from typer.testing import CliRunner

    from cellprof.cli import app

    folder = tmp_path / "mitotic"
    expected = {}
    for k, cls in enumerate(("apo", "meta", "inter")):
        for j in range(k + 2):
            value = 10 * (k + 1) + 3 * j
            _png(folder / cls / f"cell{j}.png", value)
            expected[value] = cls
    out = tmp_path / "c.h5"
    res = CliRunner().invoke(app, ["crop", "--singlecell", str(folder), "--channels",
                                   "DNA,Tubulin,Actin", "--out", str(out)])
    assert res.exit_code == 0, res.output
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert store.read_info(out).channels == ("DNA", "Tubulin", "Actin")
    assert crops.shape == (9, 3, 12, 12) and crops.dtype == np.uint8
    red = crops[:, 0, 0, 0].astype(int)
    assert (crops[:, 1, 0, 0] == red + 1).all() and (crops[:, 2, 0, 0] == red + 2).all()
    assert [expected[v] for v in red] == cells["Metadata_Class"].tolist()
    assert cells["Metadata_Class"].value_counts().to_dict() == {"inter": 4, "meta": 3, "apo": 2}


def test_tiff_crops_listed_by_a_table_keep_their_labels(tmp_path: Path) -> None:
    """(C, H, W) 16-bit TIFF crops listed by a table with a path column and a label."""
    import tifffile

    folder = tmp_path / "crops"
    folder.mkdir()
    rows = []
    for i in range(5):
        tifffile.imwrite(folder / f"c{i}.tif", np.stack([np.full((10, 10), 100 * i + k,
                                                                 np.uint16) for k in range(2)]),
                         photometric="minisblack")
        rows.append({"path": f"c{i}.tif", "Metadata_Plate": "P", "Metadata_Well": "A01",
                     "phenotype": ["round", "flat"][i % 2]})
    rows.append({"path": "missing.tif", "Metadata_Plate": "P", "Metadata_Well": "A01",
                 "phenotype": "round"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    out = tmp_path / "c.h5"
    summary = import_singlecell(folder, folder / "labels.csv", out, channels=("DNA", "ER"))
    assert summary.n_cells == 5 and summary.issues == {"missing_image": 1}
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert crops[:, 0, 5, 5].tolist() == [0, 100, 200, 300, 400]
    assert crops[:, 1, 5, 5].tolist() == [1, 101, 201, 301, 401]
    assert cells["Metadata_phenotype"].tolist() == ["round", "flat", "round", "flat", "round"]


def test_empty_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    import pytest

    from cellprof.errors import InputError

    with pytest.raises(InputError, match=r"no crops \(.npy, .tif, .tiff, .png\).*--metadata"):
        import_singlecell(tmp_path, None, tmp_path / "c.h5")
