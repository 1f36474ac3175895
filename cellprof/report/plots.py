"""Figures a biologist can read: crop grids, interpolation strips, confusion matrices.

Every figure is built on a :class:`matplotlib.figure.Figure` with its own Agg canvas,
never through ``pyplot``: no global backend is chosen or changed, no window opens, and
figures from worker threads do not share pyplot's state. Files are written atomically
(temporary name in the same folder, then rename), so a viewer never sees half a PNG.

Typical use::

    rgb = composite(crops, ["DNA", "Tubulin", "Actin"])        # (N, H, W, 3) in [0, 1]
    scale = intensity_scale(originals, what="input cells")     # the inputs' display range
    save_grid("recon.png", [originals, reconstructions], channels,
              row_labels=["input", "reconstruction"], scale=scale)
    save_confusion_matrix("nsc.png", moa_names, counts, title="NSC")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cellprof.formats.safeio import atomic_path

if TYPE_CHECKING:
    from cellprof.learn.runfolder import TrainingImages
    from cellprof.profile.match import MatchResult

# Fluorescence conventions: nuclear stains are shown blue, FITC/GFP-range green, TRITC red.
_CONVENTIONS = (
    (("dna", "dapi", "hoechst", "nuclei", "nucleus"), "blue"),
    (("tubulin", "green", "fitc", "gfp"), "lime"),  # pure green; "green" is #008000
    (("actin", "phalloidin", "red", "tritc"), "red"),
)
_FALLBACK = ("magenta", "cyan", "yellow", "grey")
_CROP_PX_PER_INCH = 68  # one paper-sized crop (68 px) per inch of figure, at 100 dpi
# (width, height) cap: a 16 x 8 grid of noisy 68-px crops measured 1.6 MB (pure noise: 2.3).
_MAX_GRID_INCHES = (15.0, 9.0)


def channel_colors(channels: Sequence[str],
                   colors: Mapping[str, str] | None = None) -> dict[str, tuple[float, ...]]:
    """RGB per channel: ``colors`` first, then naming conventions, then unused fallbacks."""
    colors = dict(colors or {})  # extra names (a project-wide palette) are ignored
    if len(channels) == 1 and not colors:
        return {channels[0]: (1.0, 1.0, 1.0)}  # one stain: grey scale, full brightness
    out: dict[str, tuple[float, ...]] = {}
    for name in (c for c in channels if c in colors):
        try:
            out[name] = to_rgb(colors[name])
        except ValueError:
            raise ValueError(f"colour for channel {name!r} must be a matplotlib colour "
                             f"such as 'blue' or '#00ff00', got {colors[name]!r}") from None
    for name in (c for c in channels if c not in out):
        wanted = [c for keys, c in _CONVENTIONS if any(k in name.lower() for k in keys)]
        # Two channels of one convention (e.g. GFP and Tubulin) would be indistinguishable.
        taken = set(out.values())
        free = [c for c in (*wanted[:1], *_FALLBACK) if to_rgb(c) not in taken]
        out[name] = to_rgb(free[0] if free else _FALLBACK[-1])
    return out


@dataclass(frozen=True)
class IntensityScale:
    """One display range per channel, shared by every panel drawn with it.

    Decoded cells (a treatment's mean latent decoded, an interpolation) are far dimmer and
    flatter than real cells: stretched over their own range (raw DNA ~0-0.09 against ~1.8
    in the model's inputs on the demo screen) two halves of one well look unlike, and a
    figure cannot be compared with the reconstructions beside real cells. Drawing them on
    the real inputs' range shows them as the model sees them.
    """

    low: tuple[float, ...]
    """Per channel, the value drawn black."""
    high: tuple[float, ...]
    """Per channel, the value drawn at full colour."""
    source: str = ""
    """What the range was taken from; stated in the figure."""

    def describe(self, channels: Sequence[str]) -> list[str]:
        """``"DNA 0–1.82"`` per channel: the legend's labels."""
        return [f"{name} {lo:.3g}–{hi:.3g}" for name, lo, hi in zip(channels, self.low,
                                                                     self.high)]


def intensity_scale(crops: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.8),
                    what: str = "") -> IntensityScale:
    """Each channel's ``percentiles`` over a batch of ``(N, C, H, W)`` crops (NaN ignored).

    Percentiles rather than min/max keep a few hot pixels from darkening everything.
    ``what`` names the crops (``"input cells"``) in the scale's ``source``.

    >>> s = intensity_scale(np.arange(100.0).reshape(1, 1, 10, 10), (0, 100))
    >>> s.low, s.high
    ((0.0,), (99.0,))
    """
    crops = np.asarray(crops)
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, "
                         f"got {percentiles}")
    if crops.ndim != 4:
        raise ValueError(f"crops must be (N, C, H, W), got shape {crops.shape}")
    lows, highs = [], []
    for k in range(crops.shape[1]):
        x = crops[:, k].astype(np.float32)
        finite = x[np.isfinite(x)]
        lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 0.0)
        lows.append(float(lo))
        highs.append(float(hi))
    source = f"{low:g}–{high:g}th percentile of {len(crops)} {what}" if what else ""
    return IntensityScale(tuple(lows), tuple(highs), source)


def composite(crops: np.ndarray, channels: Sequence[str],
              colors: Mapping[str, str] | None = None,
              percentiles: tuple[float, float] = (0.5, 99.8),
              scale: IntensityScale | None = None) -> np.ndarray:
    """Blend multichannel crops into RGB images, one colour per stain.

    Each channel is contrast-stretched once over the *whole batch* (not per crop), so
    a dim cell stays dim next to a bright one and a treatment that lowers a stain is
    visible as darker crops; stretching each crop alone would hide exactly that.
    Percentiles rather than min/max keep a few hot pixels from darkening everything.
    A ``scale`` replaces the batch's own range, e.g. to draw decoded cells on the range of
    the real cells they came from.

    Parameters
    ----------
    crops : (N, C, H, W) array, any real dtype
        Raw uint16 intensities or normalised floats; NaN counts as background.
    channels : sequence of str, length C
        Stain names; they choose the default colours (DNA/DAPI/Hoechst/nuclei blue,
        tubulin/GFP/FITC green, actin/phalloidin/TRITC red, others magenta, cyan,
        yellow, grey). A single channel is shown in grey.
    colors : mapping of channel name to matplotlib colour, optional
        Overrides for some or all channels.
    percentiles : (low, high)
        Intensity percentiles mapped to 0 and 1 for each channel.
    scale : IntensityScale, optional
        Fixed per-channel range mapped to 0 and 1 instead (``percentiles`` unused).

    Returns
    -------
    (N, H, W, 3) float32 array in [0, 1]
        Coloured channels summed and clipped. A constant channel contributes black.

    Examples
    --------
    >>> composite(np.zeros((2, 3, 8, 8), np.uint16), ["DNA", "Tubulin", "Actin"]).shape
    (2, 8, 8, 3)
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1] != len(channels):
        raise ValueError(f"crops must be (N, C, H, W) with C = {len(channels)} channels "
                         f"{list(channels)}, got shape {crops.shape}")
    if scale is None:
        scale = intensity_scale(crops, percentiles)
    elif len(scale.low) != len(channels) or len(scale.high) != len(channels):
        raise ValueError(f"scale must give one range per channel ({len(channels)}), got "
                         f"{len(scale.low)}")
    rgb_of = channel_colors(channels, colors)
    n, _, h, w = crops.shape
    out = np.zeros((n, h, w, 3), np.float32)
    for k, name in enumerate(channels):
        x = crops[:, k].astype(np.float32)
        lo, hi = scale.low[k], scale.high[k]
        if hi <= lo:  # constant, empty or all-NaN channel: nothing to show, and no 0/0
            continue
        scaled = np.nan_to_num(np.clip((x - lo) / (hi - lo), 0.0, 1.0), nan=0.0)
        out += scaled[..., None] * np.asarray(rgb_of[name], np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def _write(fig: Figure, path: str | os.PathLike, dpi: float) -> Path:
    """Render ``fig`` to ``path`` atomically, creating parent folders."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    canvas = FigureCanvasAgg(fig)
    if fmt not in canvas.get_supported_filetypes():
        raise ValueError(f"figure path must end in .png (or another matplotlib format such "
                         f"as .pdf, .svg), got {path}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.1,
                    facecolor="white")
    return path


def save_grid(path: str | os.PathLike, rows: Sequence[np.ndarray], channels: Sequence[str],
              row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
              title: str | None = None, colors: Mapping[str, str] | None = None,
              scale: IntensityScale | None = None) -> Path:
    """Write a grid of crops, one row per array, as a PNG.

    All rows share one contrast stretch, so e.g. reconstructions are shown on the same
    intensity scale as the originals above them and a too-dim decoder is visible.
    Shorter rows are padded with white (no cell); a legend states each stain's colour, and
    with a ``scale`` the range drawn and where it comes from.

    Parameters
    ----------
    path : path-like
        Output file (``.png``); parent folders are created.
    rows : sequence of (n, C, H, W) arrays
        Crops of each row; ``n`` may differ between rows, C, H, W may not.
    channels : sequence of str, length C
        Stain names, for colours and the legend (see :func:`composite`).
    row_labels, col_labels : sequence of str, optional
        Text left of each row / above each column (one per row / per widest row's crop).
    title : str, optional
    colors : mapping of channel name to matplotlib colour, optional
    scale : IntensityScale, optional
        The display range per channel, e.g. the real cells' for decoded ones.

    Returns
    -------
    Path
        The written file.
    """
    rows = [np.asarray(r) for r in rows]
    ncol = max((len(r) for r in rows), default=0)
    if ncol == 0 or any(r.ndim != 4 or r.shape[1:] != rows[0].shape[1:] for r in rows):
        raise ValueError(f"rows must be (n, C, H, W) arrays with equal C, H, W and at least "
                         f"one crop, got shapes {[r.shape for r in rows]}")
    for labels, want, what in ((row_labels, len(rows), "row_labels (one per row)"),
                               (col_labels, ncol, "col_labels (one per column)")):
        if labels is not None and len(labels) != want:
            raise ValueError(f"{what} must have {want} entries, got {len(labels)}")
    rgb = composite(np.concatenate(rows), channels, colors, scale=scale)
    _, _, h, w = rows[0].shape
    gap = max(2, max(h, w) // 17)
    mosaic = np.ones((len(rows) * (h + gap) - gap, ncol * (w + gap) - gap, 3), np.float32)
    starts = np.cumsum([0] + [len(r) for r in rows])
    for i, r in enumerate(rows):
        for j in range(len(r)):
            y, x = i * (h + gap), j * (w + gap)
            mosaic[y:y + h, x:x + w] = rgb[starts[i] + j]
    width, height = mosaic.shape[1] / _CROP_PX_PER_INCH, mosaic.shape[0] / _CROP_PX_PER_INCH
    shrink = min(1.0, _MAX_GRID_INCHES[0] / width, _MAX_GRID_INCHES[1] / height)
    fig = Figure(figsize=(width * shrink, height * shrink))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.spines[:].set_visible(False)
    ax.tick_params(length=0, top=False, bottom=False, labelbottom=False,
                   labeltop=col_labels is not None, labelleft=row_labels is not None)
    ax.set_yticks([i * (h + gap) + h / 2 - 0.5 for i in range(len(rows))],
                  row_labels or [], fontsize=10)
    # Slant column labels that would overlap: ~0.075 inch per character at 9 pt.
    widest = max((len(str(c)) for c in col_labels or []), default=0)
    long = widest * 0.075 > (w + gap) / _CROP_PX_PER_INCH * shrink
    ax.set_xticks([j * (w + gap) + w / 2 - 0.5 for j in range(ncol)],
                  col_labels or [], fontsize=9, rotation=45 if long else 0,
                  ha="left" if long else "center", rotation_mode="anchor")
    labels = scale.describe(channels) if scale is not None else channels
    handles = [Patch(facecolor=c, edgecolor="0.4", label=label) for c, label in
               zip(channel_colors(channels, colors).values(), labels)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              ncol=min(len(handles), 6), frameon=False, fontsize=9, handlelength=1.2,
              title=f"display range per channel: {scale.source}"
              if scale is not None and scale.source else None, title_fontsize=9)
    if title:
        ax.set_title(title, fontsize=12)
    return _write(fig, path, dpi=100)


def save_strip(path: str | os.PathLike, crops: np.ndarray, channels: Sequence[str],
               labels: Sequence[str] | None = None, title: str | None = None,
               colors: Mapping[str, str] | None = None,
               scale: IntensityScale | None = None) -> Path:
    """Write one row of crops, e.g. a latent interpolation from DMSO to a treatment.

    Same conventions as :func:`save_grid` (one contrast stretch or ``scale``, legend,
    atomic write); ``labels`` go above the crops, e.g. the interpolation weights.
    """
    return save_grid(path, [crops], channels, col_labels=labels, title=title, colors=colors,
                     scale=scale)


def save_confusion_matrix(path: str | os.PathLike, labels: Sequence[str], matrix: np.ndarray,
                          title: str | None = None, normalize: bool = True) -> Path:
    """Write a confusion matrix (true class rows x predicted class columns) as a PNG.

    Cells show the counts; colour shows the fraction of each true class (row-normalised)
    when ``normalize``, so a rare mechanism that is always right is as dark as a common
    one, which raw counts would hide. The title gains the overall accuracy.

    Parameters
    ----------
    path : path-like
        Output file (``.png``); parent folders are created.
    labels : sequence of str, length K
        Class names (long names such as "Microtubule destabilizers" are fine).
    matrix : (K, K) array of non-negative counts
    title : str, optional
    normalize : bool
        Colour by row fraction (True) or by raw count (False).

    Returns
    -------
    Path
        The written file.
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = len(labels)
    if m.shape != (k, k):
        raise ValueError(f"matrix must be square with one row and column per label, i.e. "
                         f"({k}, {k}) for {k} labels, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("matrix must hold finite, non-negative counts")
    totals = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    shown = frac if normalize else m
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    side = max(4.0, 0.55 * k)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    integral = np.all(m == np.round(m))
    fontsize = 10 if k <= 8 else 8
    for i in range(k):
        for j in range(k):
            text = f"{m[i, j]:.0f}" if integral else f"{m[i, j]:.3g}"
            color = "white" if shown[i, j] > 0.55 * vmax else "black" if m[i, j] else "0.65"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="Predicted", ylabel="True")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03,
                 label="fraction of true class" if normalize else "count")
    if (total := m.sum()) > 0:
        right = np.trace(m)
        title = "\n".join(filter(None, [title, f"accuracy {right / total:.1%} "
                                               f"({right:.4g} / {total:.4g})"]))
    ax.set_title(title or "", fontsize=11)
    return _write(fig, path, dpi=150)


def save_match_figures(result: MatchResult) -> Path:
    """Draw a match run's NSC confusion matrix beside its tables (``confusion_nsc.png``),
    from the counts :func:`cellprof.profile.match.run_match` wrote; records the path in
    ``result.paths["confusion"]``."""
    cfg = result.metrics.get("config", {})
    title = f"NSC, {cfg.get('normalize')} ({cfg.get('scope')}) / {cfg.get('metric')}"
    labels = [str(label) for label in result.confusion.index]
    path = save_confusion_matrix(result.out_dir / "confusion_nsc.png", labels,
                                 result.confusion.to_numpy(), title=title)
    result.paths["confusion"] = path
    return path


def save_training_images(folder: Path, images: TrainingImages) -> None:
    """A training run's pictures at one step (the ``pictures`` hook of
    :func:`cellprof.learn.train.train`): ``recon_<step>.png``, held-out cells (training
    cells when none are held out) over their reconstructions, and ``samples_<step>.png``,
    cells decoded from random latents; both on the real cells' range, so a dim decoder
    looks dim."""
    channels, step = list(images.channels), images.step
    scale = intensity_scale(images.held_out, what=images.cells)
    save_grid(folder / f"recon_{step:07d}.png", [images.held_out, images.reconstruction],
              channels, row_labels=[images.cells, "reconstruction"], title=f"step {step}",
              scale=scale)
    half = len(images.samples) // 2
    save_grid(folder / f"samples_{step:07d}.png", [images.samples[:half], images.samples[half:]],
              channels, title=f"random samples, step {step}", scale=scale)
