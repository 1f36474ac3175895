"""The synthetic screen looks like a CellProfiler export of BBBC021 and carries the
phenotypes its docstring promises, measured from the pixels rather than from its parameters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from cellprof.errors import InputError
from cellprof.example.synth import CHANNELS, SynthConfig, SynthResult, synthesize

SMALL = SynthConfig(field_size=128, cells_per_field=6, sites=1)
TINY = SynthConfig(field_size=96, cells_per_field=4, sites=1, plates_per_batch=1)
# Enough cells per treatment (about 2 wells x 2 sites x 12) to compare population means.
PHENO = SynthConfig(seed=3, field_size=192, cells_per_field=12, sites=2, plates_per_batch=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(tmp_path_factory.mktemp("small"), SMALL)


@pytest.fixture(scope="module")
def pheno_cells(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """One row per nucleus away from the field edge, with features measured from the images."""
    result = synthesize(tmp_path_factory.mktemp("pheno"), PHENO)
    images, nuclei = _tables(result)
    rows = [_measure(row, nuclei[nuclei.ImageNumber == row.ImageNumber])
            for row in images.itertuples()]
    return pd.concat(rows, ignore_index=True).merge(images, on="ImageNumber")


def _tables(result: SynthResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    images = pd.read_csv(result.image_table)
    moa = pd.read_csv(result.moa_table)
    images = images.merge(moa, left_on=["Metadata_Compound", "Metadata_Concentration"],
                          right_on=["compound", "concentration"], how="left",
                          validate="many_to_one")
    return images, pd.read_csv(result.object_table)


def _read(row: object, channel: str) -> np.ndarray:
    return tifffile.imread(Path(getattr(row, f"PathName_{channel}"))
                           / getattr(row, f"FileName_{channel}"))


def _measure(row: object, nuclei: pd.DataFrame, margin: int = 12) -> pd.DataFrame:
    """Nucleus area (Otsu threshold, watershed from the centres), centre DNA, mean
    tubulin and 99th-percentile actin in a 21x21 window, all background-subtracted."""
    planes = [_read(row, c).astype(float) for c in CHANNELS]
    planes = [p - np.percentile(p, 5) for p in planes]  # cells may cover half of a field
    dna = ndi.gaussian_filter(planes[0], 1.0)
    h, w = dna.shape
    iys = nuclei.Location_Center_Y.round().astype(int)
    ixs = nuclei.Location_Center_X.round().astype(int)
    markers = np.zeros((h, w), dtype=np.int32)
    markers[iys, ixs] = np.arange(1, len(nuclei) + 1)
    labels = watershed(-dna, markers, mask=dna > threshold_otsu(dna))  # split touching nuclei
    sizes = np.bincount(labels.ravel(), minlength=len(nuclei) + 1)
    out = []
    for k, (iy, ix) in enumerate(zip(iys, ixs), start=1):
        if not (margin <= iy < h - margin and margin <= ix < w - margin):
            continue
        win = (slice(iy - 10, iy + 11), slice(ix - 10, ix + 11))
        out.append({"ImageNumber": row.ImageNumber, "area": sizes[k],
                    "dna_centre": planes[0][iy, ix], "tubulin": planes[1][win].mean(),
                    "actin_peak": np.percentile(planes[2][win], 99)})
    return pd.DataFrame(out)


def _ratio_to_dmso(cells: pd.DataFrame, moa: str, feature: str) -> float:
    """Mean of ``feature`` in the MOA's top-concentration wells over the mean in DMSO wells of
    the same plates (so plate gains cancel), averaged over the plates."""
    top = cells[cells.moa == moa].groupby("compound").concentration.transform("max")
    treated = cells[cells.moa == moa][cells[cells.moa == moa].concentration == top]
    ratios = [treated[treated.Metadata_Plate == p][feature].mean()
              / cells[(cells.moa == "DMSO") & (cells.Metadata_Plate == p)][feature].mean()
              for p in treated.Metadata_Plate.unique()]
    return float(np.mean(ratios))


def _tiff_bytes(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def test_same_config_gives_identical_files_and_seed_changes_them(tmp_path: Path) -> None:
    a, b = synthesize(tmp_path / "a", TINY), synthesize(tmp_path / "b", TINY)
    c = synthesize(tmp_path / "c", replace(TINY, seed=1))
    tiffs_a = _tiff_bytes(tmp_path / "a")
    assert len(tiffs_a) == 3 * a.n_fields and tiffs_a == _tiff_bytes(tmp_path / "b")
    assert set(tiffs_a.values()).isdisjoint(_tiff_bytes(tmp_path / "c").values())
    for name in ("object_table", "moa_table"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes()
    assert a.object_table.read_bytes() != c.object_table.read_bytes()
    ia, ib = pd.read_csv(a.image_table), pd.read_csv(b.image_table)
    no_path = [col for col in ia.columns if not col.startswith("PathName_")]
    pd.testing.assert_frame_equal(ia[no_path], ib[no_path])


def test_tables_have_cellprofiler_columns_and_agree_with_files(small: SynthResult) -> None:
    images, nuclei = pd.read_csv(small.image_table), pd.read_csv(small.object_table)
    for channel in CHANNELS:
        for prefix in ("FileName_", "PathName_", "Height_", "Width_"):
            assert prefix + channel in images.columns
    for column in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Compound",
                   "Metadata_Concentration"):
        assert column in images.columns
    assert images.ImageNumber.tolist() == list(range(1, len(images) + 1))
    assert images.Metadata_Well.str.fullmatch(r"[B-G](0[2-9]|1[01])").all()
    assert (images.Metadata_Site == 1).all() and images.Metadata_Concentration.dtype == float
    assert list(nuclei.columns) == ["ImageNumber", "ObjectNumber", "Location_Center_X",
                                    "Location_Center_Y", "AreaShape_Area"]
    assert set(nuclei.ImageNumber) <= set(images.ImageNumber)
    per_image = nuclei.groupby("ImageNumber").ObjectNumber
    assert (per_image.min() == 1).all() and (per_image.max() == per_image.count()).all()
    counts = nuclei.ImageNumber.value_counts().reindex(images.ImageNumber, fill_value=0)
    assert counts.tolist() == images.Count_Nuclei.tolist()
    assert (small.n_fields, small.n_cells, small.channels) == (len(images), len(nuclei), CHANNELS)
    for row in images.itertuples():
        for channel in CHANNELS:
            pixels = _read(row, channel)
            assert Path(getattr(row, f"PathName_{channel}")).is_absolute()
            assert pixels.dtype == np.uint16 and pixels.shape == (128, 128)


def test_every_nucleus_centre_is_in_the_field_and_on_bright_dna(small: SynthResult) -> None:
    images, nuclei = pd.read_csv(small.image_table), pd.read_csv(small.object_table)
    assert nuclei.Location_Center_X.between(0, 127).all()
    assert nuclei.Location_Center_Y.between(0, 127).all()
    near_edge = np.minimum(nuclei.Location_Center_X, nuclei.Location_Center_Y) < 8
    assert near_edge.any(), "the cropper must meet nuclei near the edge"
    for row in images.itertuples():
        dna = _read(row, "DNA").astype(float)
        cells = nuclei[nuclei.ImageNumber == row.ImageNumber]
        centre = dna[cells.Location_Center_Y.round().astype(int),
                     cells.Location_Center_X.round().astype(int)]
        assert (centre > np.median(dna) + 500).all(), f"dim nucleus centre in {row.FileName_DNA}"
    assert 200 < nuclei.AreaShape_Area[~near_edge].median() < 600


def test_multichannel_writes_three_plane_files_with_the_same_pixels(tmp_path: Path) -> None:
    single = synthesize(tmp_path / "single", TINY)
    calls: list[tuple[int, int]] = []
    multi = synthesize(tmp_path / "multi", replace(TINY, multichannel=True),
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, multi.n_fields) for i in range(1, multi.n_fields + 1)]
    m_images, s_images = pd.read_csv(multi.image_table), pd.read_csv(single.image_table)
    assert (m_images[[f"Frame_{c}" for c in CHANNELS]].values == [0, 1, 2]).all()
    assert "Frame_DNA" not in s_images.columns
    for m_row, s_row in zip(m_images.itertuples(), s_images.itertuples()):
        assert m_row.FileName_DNA == m_row.FileName_Tubulin == m_row.FileName_Actin
        stack = _read(m_row, "DNA")
        assert stack.shape == (3, 96, 96) and stack.dtype == np.uint16
        for k, channel in enumerate(CHANNELS):
            np.testing.assert_array_equal(stack[k], _read(s_row, channel))


def test_screen_design_supports_nsc_and_nscb(small: SynthResult) -> None:
    images, _ = _tables(small)
    moa = pd.read_csv(small.moa_table)
    assert list(moa.columns) == ["compound", "concentration", "moa"]
    assert ((moa.compound == "DMSO") & (moa.concentration == 0.0) & (moa.moa == "DMSO")).sum() == 1
    treated = moa[moa.compound != "DMSO"]
    assert treated.moa.nunique() >= 4
    assert (treated.groupby("moa").compound.nunique() >= 2).all()
    assert (treated.groupby("compound").concentration.nunique() >= 2).all()
    assert images.moa.notna().all(), "every well's treatment is in moa.csv"
    plates = images.Metadata_Plate.unique()
    dmso = images[images.compound == "DMSO"].groupby("Metadata_Plate").Metadata_Well.nunique()
    assert (dmso.reindex(plates) == SMALL.dmso_wells).all()
    images["batch"] = images.Metadata_Plate.str.split("_").str[0]
    drugs = images[images.compound != "DMSO"]
    assert (drugs.groupby("compound").batch.nunique() == 1).all()
    assert (drugs.groupby("moa").batch.nunique() >= 2).all(), "same-MOA compounds share a batch"
    wells = drugs.groupby(["compound", "concentration", "Metadata_Plate"]).Metadata_Well.nunique()
    assert (wells == 1).all() and drugs.groupby("Metadata_Plate").Metadata_Well.nunique().min() > 0


def test_phenotypes_measured_from_pixels_match_the_docstring(pheno_cells: pd.DataFrame) -> None:
    cells = pheno_cells
    assert _ratio_to_dmso(cells, "DNA damage", "area") > 1.2  # ~1.55x larger nuclei
    assert _ratio_to_dmso(cells, "Protein synthesis", "tubulin") < 0.8  # dimmer, smaller cells
    assert _ratio_to_dmso(cells, "Actin disruptors", "actin_peak") > 1.3  # actin aggregates
    # Mitotic arrest: many more small, bright, condensed nuclei than in DMSO.
    bright = cells.groupby("Metadata_Plate").dna_centre.transform(
        lambda v: v > 1.7 * v[cells.loc[v.index, "moa"] == "DMSO"].median())
    cells = cells.assign(mitotic=bright & (cells.area < cells.area.median()))
    top = cells[cells.concentration == cells.groupby("compound").concentration.transform("max")]
    assert top[top.moa == "Microtubule stabilizers"].mitotic.mean() > 0.2
    assert cells[cells.moa == "DMSO"].mitotic.mean() < 0.08


def test_single_cells_overlap_between_treatments(pheno_cells: pd.DataFrame) -> None:
    """Populations separate, single cells do not: a pipeline must aggregate."""
    cells = pheno_cells
    low = cells.concentration == cells.groupby("compound").concentration.transform("min")
    dmso, damaged = cells[cells.moa == "DMSO"].area, cells[(cells.moa == "DNA damage") & low].area
    assert damaged.mean() > 1.1 * dmso.mean()
    assert (damaged < dmso.quantile(0.75)).mean() > 0.2, "low-dose nuclei should often look normal"


@pytest.mark.parametrize("change, option", [
    ({"field_size": 32}, "field_size"),
    ({"field_size": (128, 16)}, "field_size"),
    ({"cells_per_field": 0}, "cells_per_field"),
    ({"cells_per_field": 10_000}, "cells_per_field"),
    ({"batches": 6}, "batches"),
    ({"dmso_wells": 0}, "dmso_wells"),
    ({"compression": "jpeg"}, "compression"),
    ({"seed": -1}, "seed"),
    ({"moas": 7}, "moas"),
    ({"compounds_per_moa": 0}, "compounds_per_moa"),
])
def test_bad_options_name_the_option_and_range(tmp_path: Path, change: dict, option: str) -> None:
    with pytest.raises(InputError, match=option) as info:
        synthesize(tmp_path / "out", replace(SMALL, **change))
    assert "got" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "screen").write_text("not a folder")
    with pytest.raises(InputError, match="not a folder"):
        synthesize(tmp_path / "screen", TINY)


def test_non_square_fields(tmp_path: Path) -> None:
    result = synthesize(tmp_path / "wide", replace(TINY, field_size=(96, 160)))
    row = next(pd.read_csv(result.image_table).itertuples())
    assert _read(row, "Actin").shape == (96, 160) and (row.Height_DNA, row.Width_DNA) == (96, 160)


def test_effect_scale_weakens_every_phenotype_in_proportion(tmp_path: Path) -> None:
    """A harder screen for the demo: the same compounds, their phenotypes scaled."""
    from cellprof.errors import InputError
    from cellprof.example.synth import SynthConfig, synthesize, treatments

    full, half = treatments(SynthConfig()), treatments(SynthConfig(effect_scale=0.5))
    assert [t.compound for t in full] == [t.compound for t in half]
    for a, b in zip(full[1:], half[1:]):
        np.testing.assert_allclose(b.log_shift, 0.5 * a.log_shift)
    with pytest.raises(InputError, match="effect_scale"):
        synthesize(tmp_path / "screen", SynthConfig(effect_scale=0.0))


def test_more_moas_and_compounds_extend_the_default_screen(tmp_path: Path) -> None:
    """The demo's 36-treatment screen holds the default 16 treatments unchanged, adds two MOAs
    and a third compound per MOA, and keeps every MOA's compounds in two batches (NSCB)."""
    from cellprof.example.synth import treatments

    small, big = treatments(SynthConfig()), treatments(SynthConfig(moas=6, compounds_per_moa=3))
    assert len(small) == 1 + 16 and len(big) == 1 + 36
    by_key = {(t.compound, t.concentration): t for t in big}
    for t in small:
        np.testing.assert_array_equal(by_key[t.compound, t.concentration].log_shift, t.log_shift)
    result = synthesize(tmp_path / "screen", replace(TINY, moas=6, compounds_per_moa=3,
                                                     plates_per_batch=1))
    images, _ = _tables(result)
    treated = pd.read_csv(result.moa_table).query("compound != 'DMSO'")
    assert treated.moa.nunique() == 6 and (treated.groupby("moa").compound.nunique() == 3).all()
    assert (treated.groupby("compound").concentration.nunique() == 2).all()
    images["batch"] = images.Metadata_Plate.str.split("_").str[0]
    drugs = images[images.compound != "DMSO"]
    assert (drugs.groupby("moa").batch.nunique() == 2).all()
    assert "6 mechanisms" in (tmp_path / "screen" / "README.txt").read_text()


def test_twin_moas_share_their_look_alikes_largest_effect(tmp_path: Path) -> None:
    """Measured from the pixels: destabilizers arrest mitosis as stabilizers do, Aurora kinase
    inhibitors enlarge nuclei as DNA damage does; texture and shape tell each pair apart."""
    config = replace(PHENO, moas=6, batches=1)
    result = synthesize(tmp_path / "twins", config)
    images, nuclei = _tables(result)
    cells = pd.concat([_measure(row, nuclei[nuclei.ImageNumber == row.ImageNumber])
                       for row in images.itertuples()], ignore_index=True).merge(images,
                                                                                 on="ImageNumber")
    assert _ratio_to_dmso(cells, "Aurora kinase inhibitors", "area") > 1.2
    assert _ratio_to_dmso(cells, "DNA damage", "area") > 1.2
    bright = cells.groupby("Metadata_Plate").dna_centre.transform(
        lambda v: v > 1.7 * v[cells.loc[v.index, "moa"] == "DMSO"].median())
    cells = cells.assign(mitotic=bright & (cells.area < cells.area.median()))
    top = cells[cells.concentration == cells.groupby("compound").concentration.transform("max")]
    for moa in ("Microtubule stabilizers", "Microtubule destabilizers"):
        assert top[top.moa == moa].mitotic.mean() > 0.2, moa
    assert cells[cells.moa == "DMSO"].mitotic.mean() < 0.08
