"""`measure` measures the nucleus `crop --segment` cut each crop for, not the clump it touches.

The screen: small nuclei (radius 4-6.5 px, ~50-130 px), most of them in touching chains of
2-5, of unequal brightness, blurred and noisy. The area `crop` found for each nucleus is
`find_nuclei`'s on the field (the function `crop --segment` calls), joined to the store's
cells on image and object number.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from cellprof.formats import store
from cellprof.formats.profiles import profile_attrs, read_profiles
from cellprof.formats.schema import threshold_column
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.segment import THRESHOLD, SegmentConfig, find_nuclei
from cellprof.profile.classic import classical_features
from cellprof.profile.measure import measure, store_segment

CHANNELS = ("DNA", "Actin")
SIDE = 192
CROP = 40


def chains(rng: np.random.Generator, n_chains: int = 9) -> list[tuple[float, float, float]]:
    """(y, x, radius) of nuclei in chains of 1-5, each touching the last (centres 0.8-0.95
    of the radii's sum apart), chains at least 6 px apart and 8 px inside the field."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(500):
        if n_chains == 0:
            break
        chain = [(rng.uniform(20, SIDE - 20), rng.uniform(20, SIDE - 20), rng.uniform(4, 6.5))]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(0, 5)):
            y, x, r = chain[-1]
            r2, heading = rng.uniform(4, 6.5), heading + rng.normal(0, 0.6)
            step = rng.uniform(0.8, 0.95) * (r + r2)
            chain.append((y + step * np.sin(heading), x + step * np.cos(heading), r2))
        inside = all(8 < y < SIDE - 8 and 8 < x < SIDE - 8 for y, x, _ in chain)
        apart = all(np.hypot(y - py, x - px) >= r + pr + 6
                    for y, x, r in chain for py, px, pr in placed)
        if inside and apart:
            placed += chain
            n_chains -= 1
    return placed


def field(rng: np.random.Generator) -> np.ndarray:
    """(SIDE, SIDE) uint16 DNA: discs of 1,500-4,000 counts over 300, optics blur, shot noise."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    signal = np.zeros((SIDE, SIDE))
    for y, x, r in chains(rng):
        disc = ((yy - y) ** 2 + (xx - x) ** 2 <= r * r) * rng.uniform(1500, 4000)
        signal = np.maximum(signal, disc)
    image = rng.poisson(300 + ndi.gaussian_filter(signal, 0.8)) + rng.normal(0, 20, signal.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_screen(root: Path, n_fields: int = 6, seed: int = 0) -> Path:
    """Image.csv and one TIFF per field and channel (Actin: half the DNA, a stand-in)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for i in range(n_fields):
        dna = field(rng)
        row = {"ImageNumber": i + 1, "Metadata_Plate": "P1", "Metadata_Well": f"B{i + 2:02d}",
               "Metadata_Site": 1}
        for ch, plane in zip(CHANNELS, (dna, dna // 2), strict=True):
            tifffile.imwrite(root / f"f{i}_{ch}.tif", plane)
            row.update({f"FileName_{ch}": f"f{i}_{ch}.tif", f"PathName_{ch}": str(root)})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "Image.csv", index=False)
    return root / "Image.csv"


@pytest.fixture(scope="module")
def touching(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """(crops.h5, profiles.h5, crop's nuclei of every field) of the touching-nuclei screen."""
    root = tmp_path_factory.mktemp("touching")
    table = write_screen(root / "screen")
    crops = root / "crops.h5"
    crop_screen(table, crops, config=CropConfig(size=CROP, segment=SegmentConfig()))
    found = []
    for _, row in pd.read_csv(table).iterrows():
        nuclei = find_nuclei(tifffile.imread(root / "screen" / row["FileName_DNA"]))
        found.append(nuclei.assign(ImageNumber=row["ImageNumber"],
                                   Threshold=nuclei.attrs[THRESHOLD]))
    return crops, measure(crops, root / "classic.h5").out, pd.concat(found)


def test_measured_nucleus_is_the_one_crop_found(touching) -> None:
    crops, profiles, found = touching
    meta, feats, names = read_profiles(profiles)
    measured = pd.DataFrame(feats, columns=names)["AreaShape_Area"].to_numpy()
    cells = meta.merge(found, on=["ImageNumber", "ObjectNumber"], how="left",
                       suffixes=("", "_found"))
    ratio = measured / cells["AreaShape_Area"].to_numpy()
    assert len(cells) >= 80 and np.isfinite(ratio).all()
    # 1.00 of 124 cells here; 0.09 measuring the clump, 0.74 split at each crop's own Otsu.
    assert np.mean(np.abs(ratio - 1) <= 0.1) >= 0.95
    assert ratio.max() < 1.5
    assert profile_attrs(profiles)["nucleus_threshold"] == "crop's"


def test_store_keeps_the_threshold_crop_found_nuclei_at(touching) -> None:
    crops, _, found = touching
    fields = store.read_fields(crops).set_index("ImageNumber")
    expected = found.groupby("ImageNumber")["Threshold"].first()
    np.testing.assert_allclose(fields.loc[expected.index, threshold_column("DNA")], expected)
    assert fields[threshold_column("Actin")].isna().all()  # not segmented in


def test_a_crop_of_a_chain_measures_its_centre_nucleus_without_a_stored_threshold() -> None:
    """Imported crops (no segmentation, so no threshold): the chain is still split."""
    yy, xx = np.mgrid[0:CROP, 0:CROP]
    centre = (CROP - 1) / 2
    dna = np.full((CROP, CROP), 300.0)
    for dx in (-10.0, 0.0, 10.0):  # three discs of radius 6 px, 10 px apart: one clump
        dna[(yy - centre) ** 2 + (xx - centre - dx) ** 2 <= 36] = 3000.0
    x = np.stack([dna, dna / 2])[None]
    f = classical_features(x, list(CHANNELS))
    assert f.loc[0, "AreaShape_Area"] == pytest.approx(np.pi * 36, rel=0.2)  # not 3 discs
    assert f.loc[0, "AreaShape_MajorAxisLength"] < 16
    whole = classical_features(x, list(CHANNELS), segment=SegmentConfig(split_touching=False))
    assert whole.loc[0, "AreaShape_Area"] > 2.5 * np.pi * 36


def test_measure_splits_with_the_settings_the_store_was_segmented_with(touching) -> None:
    crops, _, _ = touching
    info = store.read_info(crops)
    assert store_segment(info) == SegmentConfig()
    cut = replace(info, config={"segment": {"min_distance": 9, "a_later_setting": 1}})
    assert store_segment(cut) == SegmentConfig(min_distance=9)
    imported = replace(info, config={"mode": "singlecell"})
    assert store_segment(imported) == SegmentConfig()


def test_measure_defaults_to_the_channel_crop_segmented_or_named_like_dna() -> None:
    """A store whose first channel is a cell stain: measure segments the DNA channel that
    crop segmented (its threshold is stored), else the one named like a DNA stain."""
    from cellprof.profile.measure import default_nucleus

    fields = pd.DataFrame({"Metadata_Plate": ["P"], "ImageNumber": [1],
                           threshold_column("Actin"): [np.nan],
                           threshold_column("Tubulin"): [120.0]})
    assert default_nucleus(fields, ("Actin", "Tubulin")) == "Tubulin"
    assert default_nucleus(fields.iloc[:, :2], ("Actin", "Hoechst33342")) == "Hoechst33342"
    assert default_nucleus(fields.iloc[:, :2], ("A", "B")) == "A"
