"""The segmentation over the field: what ``crop --segment`` found, and what it cut.

A crop store says how many nuclei each field held and how many crops were kept, but not
whether the nuclei were nuclei: a wrong channel, a threshold lost in a dim field, or clumps
left unsplit all give plausible counts. One look at a few fields settles it, so after every
``crop --segment`` the CLI draws ``OUT.segmentation.png``: the first field, the busiest and
others spread over the plates and wells, each as its nucleus channel in grey with the
outlines of the nuclei found and the box of every crop kept (and, in another colour, the
nuclei not cropped, too near the edge).

The outlines are those crop cut for: each field is segmented again with the store's
settings by the same function (:func:`cellprof.prepare.segment.nucleus_labels`), whose
threshold is checked against the one the store kept; the boxes are the store's own cells.
The picture takes about 0.5 s for 512-px fields, 1.3 s for 1024-px ones (two shared cores;
segmenting again is most of it, drawing about 0.3 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from scipy import ndimage as ndi

from cellprof.errors import ImageError, InputError
from cellprof.formats import store
from cellprof.formats.safeio import atomic_path
from cellprof.formats.schema import (
    CENTER_X,
    CENTER_Y,
    FIELD_KEY,
    IMAGE_NUMBER,
    OBJECT_NUMBER,
    PLATE,
    SITE,
    STATUS,
    WELL,
    threshold_column,
)
from cellprof.prepare.crop import CropConfig, plan
from cellprof.prepare.fieldwork import FieldTask, load_field
from cellprof.prepare.illumination import correct
from cellprof.prepare.nuclei import nucleus_channel
from cellprof.prepare.segment import nucleus_labels
from cellprof.profile.measure import store_segment

FIELDS_DRAWN = 4
"""Fields in the picture: enough to see a dense and a sparse one, small enough to read."""
STRETCH = (1.0, 99.5)
"""Percentiles of a field drawn black and white: a few saturated nuclei do not dim the rest."""
COLORS = {"outline": "#ffd400", "kept": "#00c8ff", "dropped": "#ff3b3b"}
"""Nuclei found, crops kept, nuclei not cropped (their outline and the box they would have)."""


@dataclass(frozen=True)
class FieldView:
    """One field as the picture draws it."""

    title: str
    image: np.ndarray
    """``(H, W)`` nucleus channel, as segmented (illumination-corrected if the crop was)."""
    labels: np.ndarray
    """``(H, W)`` int32 nuclei found, labelled by ``ObjectNumber``; 0 the background."""
    kept: np.ndarray
    """``(n, 2)`` x, y of the top-left pixel of each crop kept."""
    dropped: np.ndarray
    """``(m, 2)`` the same for each nucleus found but not cropped."""
    dropped_numbers: np.ndarray
    """``(m,)`` the ``ObjectNumber`` (label) of each nucleus not cropped."""
    size: int
    """The crop side, px."""


def segmentation_path(crops: str | Path) -> Path:
    """Where the picture of a store goes: ``crops.h5.segmentation.png`` beside it."""
    crops = Path(crops)
    return crops.with_name(crops.name + ".segmentation.png")


def pick_fields(fields: pd.DataFrame, n: int = FIELDS_DRAWN) -> list[int]:
    """Rows of ``/fields`` to draw, in store order: the first field read, the one with the
    most nuclei, then fields spread evenly over the rest, of a plate and well not yet drawn
    while there are any."""
    ok = np.flatnonzero(fields[STATUS].astype(str).to_numpy() == "ok")
    if not len(ok) or n < 1:
        return []
    busiest = ok[int(np.argmax(fields["Count_Objects"].to_numpy()[ok]))]
    spread = ok[np.unique(np.linspace(0, len(ok) - 1, min(len(ok), 4 * n)).round()
                          .astype(int))]
    where = [c for c in (PLATE, WELL) if c in fields.columns]
    well = [tuple(r) for r in fields[where].astype(str).to_numpy()]
    picks = list(dict.fromkeys([ok[0], busiest]))[:n]
    for any_well in (False, True):
        for i in spread:
            if len(picks) < n and i not in picks and (
                    any_well or well[i] not in {well[p] for p in picks}):
                picks.append(i)
    return sorted(int(i) for i in picks)


def field_views(crops: str | Path, n: int = FIELDS_DRAWN) -> list[FieldView]:
    """The fields :func:`pick_fields` picks, segmented again as ``crop --segment`` did.

    Fields whose images cannot be read now are left out.

    Raises
    ------
    InputError
        When the store was not cut with ``--segment`` (its nuclei came from a table).
    """
    info = store.read_info(crops)
    segment = info.config.get("segment")
    if not segment:
        raise InputError(f"{crops}: not cut with --segment; its nuclei came from an object "
                         "table, so there is no segmentation to draw")
    channels = list(info.channels)
    k = nucleus_channel(channels, info.config.get("nucleus_channel"), True, [])
    fields = store.read_fields(crops)
    picks = pick_fields(fields, n)
    if not picks:
        return []
    # A field's cells are committed with it, so they follow each other in /fields order.
    ends = np.cumsum(fields["Count_Cropped"].to_numpy())
    illum = store.read_illumination(crops) if info.config.get("illumination") else {}
    config, planned = store_segment(info), _Planned(info)
    busiest = int(np.argmax(fields["Count_Objects"].where(fields[STATUS] == "ok", -1)))
    views = []
    for i in picks:
        row = fields.iloc[i]
        try:
            plane = _nucleus_plane(row, channels[k], k, planned)
        except ImageError:
            continue
        plate = str(row.get(PLATE, ""))
        if plate in illum:  # the crop segmented the corrected field
            plane = correct(plane, illum[plate][k])
        labels, level = nucleus_labels(plane, config)
        cells = _field_cells(crops, row, int(ends[i]) - int(row["Count_Cropped"]), int(ends[i]))
        views.append(_view(row, plane, labels, level, cells, info.crop_size,
                           threshold_column(channels[k]), busiest=i == busiest))
    return views


def save_segmentation(crops: str | Path, out: str | Path | None = None,
                      n: int = FIELDS_DRAWN) -> Path | None:
    """Draw :func:`field_views` of a ``crop --segment`` store to ``out`` (default
    :func:`segmentation_path`); None when no field could be read.

    Examples
    --------
    >>> save_segmentation("crops.h5")  # doctest: +SKIP
    PosixPath('crops.h5.segmentation.png')
    """
    views = field_views(crops, n)
    if not views:
        return None
    info = store.read_info(crops)
    return draw(views, out or segmentation_path(crops),
                f"{Path(crops).name}: nuclei found and {info.crop_size}-px crops cut")


def outlines(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W)`` bool: the pixels of each labelled object that touch another label or the
    background (4-neighbours), thickened to ``width`` px inwards and outwards."""
    edge = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        differ = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= differ
        edge[tuple(hi)] |= differ
    edge &= labels > 0
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1)
    return edge


def draw(views: list[FieldView], path: str | Path, title: str) -> Path:
    """Write the fields as one PNG, two a row, atomically.

    Panels are placed by hand, not by a layout engine: one render instead of two (a
    quarter of the picture's time for 1024-px fields), and titles never overlap a panel."""
    cols = min(len(views), 2)
    rows = math.ceil(len(views) / cols)
    side = max(max(v.image.shape) for v in views)
    inches = min(max(side / 100, 3.2), 5.12)  # a 256-px field drawn at 320 px, 1024 at 512
    gap, head, top, foot = 0.15, 0.4, 0.35, 0.35  # inches: between, panel title, title, legend
    width, height = cols * (inches + gap) + gap, top + rows * (inches + head) + foot
    fig = Figure(figsize=(width, height))
    for j, view in enumerate(views):
        r, c = divmod(j, cols)
        bottom = height - top - (r + 1) * (inches + head)
        ax = fig.add_axes((((gap + c * (inches + gap)) / width, bottom / height,
                            inches / width, inches / height)))
        _panel(ax, view, math.ceil(max(view.image.shape) / (inches * 100)))
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    handles = [Line2D([], [], color=COLORS["outline"], lw=2, label="nucleus found"),
               Line2D([], [], color=COLORS["kept"], lw=1.5, label="crop kept"),
               Line2D([], [], color=COLORS["dropped"], lw=1.5, ls="--",
                      label="nucleus not cropped (too near the edge)")]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.02 / height),
               ncol=3, frameon=False, fontsize=8)
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="white")
    return path


def _panel(ax, view: FieldView, step: int) -> None:  # noqa: ANN001 - a matplotlib Axes
    """One field: grey nucleus channel, outlines painted into the pixels (exact at any
    count of nuclei), crop boxes as rectangles on the pixel grid.

    A field larger than its panel is drawn every ``step`` px, its outlines ``step`` px
    wide so none falls between the pixels kept (and matplotlib resamples a quarter of
    the pixels: 0.07 s less a 1024-px field)."""
    lo, hi = np.percentile(view.image, STRETCH)
    grey = np.clip((view.image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(view.image)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    dropped = np.isin(view.labels, view.dropped_numbers)
    for which, color in ((np.where(dropped, view.labels, 0), "dropped"),
                         (np.where(dropped, 0, view.labels), "outline")):
        rgb[outlines(which, step)] = np.round(np.array(to_rgb(COLORS[color])) * 255)
    h, w = view.image.shape
    ax.imshow(rgb[::step, ::step], interpolation="nearest",
              extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    for corners, color, style in ((view.kept, COLORS["kept"], "-"),
                                  (view.dropped, COLORS["dropped"], "--")):
        boxes = [Rectangle((x - 0.5, y - 0.5), view.size, view.size) for x, y in corners]
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=color,
                                          linewidth=0.7, linestyle=style))
    ax.set(xlim=(-0.5, w - 0.5), ylim=(h - 0.5, -0.5), xticks=[], yticks=[])
    ax.set_title(view.title, fontsize=8)


class _Planned:
    """The crop's own field tasks, planned again from its image table only when a field's
    nucleus plane cannot be read from its file alone (a plane of a stack)."""

    def __init__(self, info: store.StoreInfo) -> None:
        self.info, self._tasks = info, None

    def task(self, key: str) -> FieldTask | None:
        """The field ``key``'s task as the crop planned it; None when the plan lacks it."""
        if self._tasks is None:
            c = self.info.config
            cfg = CropConfig(size=self.info.crop_size, channels=_tuple(c.get("channels")),
                             object_name=c.get("object_name"), segment=store_segment(self.info),
                             plates=_tuple(c.get("plates")), tables=_tuple(c.get("tables")))
            try:
                tasks = plan(c["image_table"], None, cfg, c.get("root"))[0]
            except InputError:
                tasks = []
            self._tasks = {t.key: t for t in tasks}
        return self._tasks.get(key)


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


def _nucleus_plane(row: pd.Series, channel: str, k: int, planned: _Planned) -> np.ndarray:
    """The field's nucleus channel, read from the file ``/fields`` names (a single-plane
    image), else as the crop read it (its plan's plane of a stack)."""
    path = Path(str(row[f"PathName_{channel}"])) / str(row[f"FileName_{channel}"])
    task = FieldTask(key=str(row[FIELD_KEY]), image_number=int(row[IMAGE_NUMBER]), row=-1,
                     meta={}, files=[(channel, path, None)], table_file="")
    try:
        return load_field(task)[0]
    except ImageError:
        planned_task = planned.task(str(row[FIELD_KEY]))
        if planned_task is None:
            raise
        return load_field(replace(planned_task, files=[planned_task.files[k]]))[0]


def _field_cells(crops: str | Path, row: pd.Series, start: int, end: int) -> pd.DataFrame:
    """The field's cells: rows ``start:end`` of ``/cells`` (committed with the field, in
    ``/fields`` order); matched on the field's keys when a store was written otherwise."""
    cells = store.read_cells(crops, slice(start, end))
    if (cells[IMAGE_NUMBER] == row[IMAGE_NUMBER]).all():
        return cells
    cells = store.read_cells(crops)
    keys = [c for c in (PLATE, IMAGE_NUMBER, WELL, SITE) if c in cells.columns]
    return cells[(cells[keys].astype(str) == row[keys].astype(str).to_numpy()).all(axis=1)]


def _view(row: pd.Series, plane: np.ndarray, labels: np.ndarray, level: float | None,
          cells: pd.DataFrame, size: int, column: str, busiest: bool) -> FieldView:
    """A field's drawing: the crops kept from its cells, the nuclei found and not cut from
    its labels, and a title naming the field, the counts and any disagreement."""
    corner = (np.floor(cells[[CENTER_X, CENTER_Y]].to_numpy(np.float64) + 0.5) - size // 2)
    n = int(labels.max())
    missing = np.setdiff1d(np.arange(1, n + 1), cells[OBJECT_NUMBER].to_numpy())
    area = np.bincount(labels.ravel(), minlength=n + 1)
    yy, xx = np.indices(labels.shape)
    cx = np.bincount(labels.ravel(), xx.ravel(), n + 1)[missing] / area[missing]
    cy = np.bincount(labels.ravel(), yy.ravel(), n + 1)[missing] / area[missing]
    lost = np.floor(np.stack([cx, cy], axis=1) + 0.5) - size // 2
    name = " · ".join(str(row[c]) for c in (PLATE, WELL) if c in row.index and str(row[c]))
    site = f" · site {row[SITE]}" if SITE in row.index else ""
    edge, rejected = int(row.get("Count_EdgeSkipped", 0)), int(row.get("Count_Rejected", 0))
    said = (f"{name}{site}{' (most nuclei)' if busiest else ''}\n{n} nuclei found, "
            f"{len(cells)} crops kept" + (f", {edge} too near the edge" if edge else "")
            + (f", {rejected} rejected" if rejected else ""))
    stored = row.get(column)
    if level is not None and stored is not None and not np.isclose(level, float(stored),
                                                                    rtol=1e-5):
        said += f"\nthreshold {level:.4g}, the crop's {float(stored):.4g}: image changed?"
    return FieldView(said, plane, labels, corner.reshape(-1, 2), lost.reshape(-1, 2), missing,
                     size)
