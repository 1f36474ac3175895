"""Figures: colours follow the stains, files are real, readable PNGs and appear atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

from cellprof.report.plots import composite, save_confusion_matrix, save_grid, save_strip

CHANNELS = ("DNA", "Tubulin", "Actin")


def cells(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3, 16, 16) uint16: a bright nucleus (DNA only) on a dim, noisy background."""
    rng = np.random.default_rng(seed)
    x = rng.integers(100, 200, (n, 3, 16, 16)).astype(np.uint16)
    x[:, 0, 5:11, 5:11] = 3000
    x[:, 1:, 5:11, 5:11] = 100
    return x


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_composite_shape_range_and_constant_channel_is_black_not_nan():
    x = cells(4)
    x[:, 1] = 7  # Tubulin constant: percentile stretch would be 0/0
    rgb = composite(x, CHANNELS)
    assert rgb.shape == (4, 16, 16, 3) and rgb.dtype == np.float32
    assert np.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[..., 1].max() == 0  # Tubulin is green and contributes nothing
    assert np.isfinite(composite(np.zeros((2, 3, 8, 8)), CHANNELS)).all()


def test_only_the_blue_channel_follows_dna():
    x = np.full((3, 3, 8, 8), 500.0)
    x[:, 0] = np.arange(64).reshape(8, 8)  # only the DNA stain varies
    channels = ("Actin", "DNA", "Tubulin")
    rgb = composite(x[:, [2, 0, 1]], channels)  # DNA deliberately not first
    spread = rgb.reshape(-1, 3).std(axis=0)
    assert spread[2] > 0.2 and spread[0] == 0 and spread[1] == 0


def test_composite_stretches_over_the_batch_so_dim_cells_stay_dim():
    x = cells(2)
    x[1] //= 4
    rgb = composite(x, CHANNELS)
    assert rgb[1, 8, 8, 2] < 0.5 * rgb[0, 8, 8, 2]


@pytest.mark.parametrize("names, want", [
    (["Hoechst33342", "GFP", "Phalloidin-TRITC"], [(0, 0, 1), (0, 1, 0), (1, 0, 0)]),
    (["ER", "Mito", "DAPI"], [(1, 0, 1), (0, 1, 1), (0, 0, 1)]),
    (["GFP", "Tubulin"], [(0, 1, 0), (1, 0, 1)]),  # second green stain must differ
])
def test_default_colours_follow_fluorescence_conventions(names, want):
    for k in range(len(names)):
        x = np.zeros((1, len(names), 4, 4))
        x[0, k, 0, 0] = 1.0
        rgb = composite(x, names, percentiles=(0, 100))
        np.testing.assert_allclose(rgb[0, 0, 0], want[k], err_msg=names[k])


def test_single_channel_is_grey_and_colours_can_be_overridden():
    g = composite(cells(2)[:, :1], ["DNA"])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    r = composite(cells(2), CHANNELS, colors={"DNA": "red"})
    assert r[0, 8, 8, 0] > 0.9  # the bright nucleus is now red


def test_composite_rejects_channel_count_mismatch():
    with pytest.raises(ValueError, match=r"C = 2 channels.*\(1, 3, 16, 16\)"):
        composite(cells(1), ["DNA", "Actin"])


def test_save_grid_writes_a_non_blank_png_for_ragged_rows(tmp_path: Path):
    out = save_grid(tmp_path / "figs" / "recon.png", [cells(5), cells(2, seed=1)], CHANNELS,
                    row_labels=["input", "reconstruction"],
                    col_labels=[f"cell {i}" for i in range(5)], title="Stage 1")
    assert out == tmp_path / "figs" / "recon.png"
    img = read_png(out)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100
    assert img[..., :3].std() > 0.1  # cells, labels and white padding, not one flat colour
    blue = (img[..., 2] > 0.7) & (img[..., :2].max(axis=-1) < 0.3)
    assert blue.sum() > 400  # 7 blue nuclei of ~9x9 px; the legend swatch alone is ~100


def test_save_grid_shows_all_rows_on_one_intensity_scale(tmp_path: Path):
    bright = cells(3)
    blue = [read_png(save_grid(tmp_path / f"{name}.png", [bright, second], CHANNELS))[..., 2]
            for name, second in (("dim", bright // 4), ("same", bright))]
    assert blue[0].shape == blue[1].shape
    # A decoder 4x too dim must look dimmer than the input, not be stretched to match it.
    assert blue[1].sum() - blue[0].sum() > 50  # measured: ~137 shared, ~1 if per row


def test_save_grid_rejects_mismatched_rows_and_labels(tmp_path: Path):
    with pytest.raises(ValueError, match="equal"):
        save_grid(tmp_path / "g.png", [cells(2), cells(2)[:, :, :8]], CHANNELS)
    with pytest.raises(ValueError, match="row_labels.*2 entries, got 1"):
        save_grid(tmp_path / "g.png", [cells(2), cells(1)], CHANNELS, row_labels=["a"])
    assert list(tmp_path.iterdir()) == []


def test_save_strip_writes_png(tmp_path: Path):
    labels = [f"{a:.2f}" for a in np.linspace(0, 1, 6)]
    img = read_png(save_strip(tmp_path / "strip.png", cells(6), CHANNELS, labels, "DMSO → taxol"))
    assert img.shape[1] > 2 * img.shape[0]  # one row: wide, not tall


def test_confusion_matrix_png_and_shape_check(tmp_path: Path):
    labels = ["DMSO", "Microtubule destabilizers", "Microtubule stabilizers"]
    counts = np.array([[5, 1, 0], [0, 7, 2], [0, 0, 0]])  # empty row: no 0/0 warning
    img = read_png(save_confusion_matrix(tmp_path / "cm.png", labels, counts, title="NSC"))
    assert img.shape[0] > 100 and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match=r"\(3, 3\) for 3 labels, got shape \(2, 3\)"):
        save_confusion_matrix(tmp_path / "bad.png", labels, counts[:2])
    with pytest.raises(ValueError, match="non-negative"):
        save_confusion_matrix(tmp_path / "bad.png", labels, -counts)
    assert not (tmp_path / "bad.png").exists()


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path, monkeypatch):
    target = tmp_path / "grid.png"
    save_grid(target, [cells(3)], CHANNELS)
    save_grid(target, [cells(3)], CHANNELS)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    before = target.read_bytes()

    def crash(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(OSError, match="disk full"):
        save_grid(target, [cells(1)], CHANNELS)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    assert target.read_bytes() == before  # the old figure survives a failed write
