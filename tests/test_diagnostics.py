"""The frame score: rings of the mean image that stand out from their neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from cellprof.learn.diagnostics import frame_report, ring_index, ring_means, ring_standout


def blobs(n: int = 50, size: int = 68, seed: int = 0) -> np.ndarray:
    """Centred Gaussian cells of random width and brightness, like max-normalised crops."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    sig = rng.uniform(8, 16, size=(n, 3, 1, 1))
    x = np.exp(-(yy ** 2 + xx ** 2) / (2 * sig ** 2)) + rng.normal(0, 0.02, (n, 3, size, size))
    return np.clip(x, 0, None)


def test_ring_index_counts_pixels_from_the_nearest_edge() -> None:
    r = ring_index(68)
    assert r.max() == 33 and (r == 0).sum() == 4 * 67 and (r == 33).sum() == 4
    assert np.array_equal(r, r.T) and np.array_equal(r, r[::-1])


def test_ring_means_of_a_constant_stack_are_constant() -> None:
    m = ring_means(np.full((3, 2, 20, 20), 0.25))
    assert m.shape == (2, 10) and np.allclose(m, 0.25)


def test_smooth_cells_have_no_frame_and_a_drawn_frame_is_found() -> None:
    cells = blobs()
    framed = cells.copy()
    r = ring_index(68)
    framed[:, :, r == 8] += 0.1  # what the full model draws: a bright ring 8 px in
    clean = frame_report(cells, cells)
    assert clean.ratio == pytest.approx(1.0)
    bad = frame_report(framed, cells)
    assert bad.worst_ring == 8
    assert bad.ratio > 5 * clean.ratio
    assert ring_standout(framed)[:, 8 - 2].min() > 10 * ring_standout(cells).mean()


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="images must be"):
        ring_means(np.zeros((2, 3, 10, 12)))
    with pytest.raises(ValueError, match="rings"):
        ring_standout(np.zeros((2, 1, 20, 20)), rings=(2, 14))
