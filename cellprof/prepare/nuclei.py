"""Which channel holds the nuclei, and how big they are, before ``crop --segment`` runs.

Segmenting the wrong channel still finds objects: a cell stain's blobs, a sparse marker's few
bright cells. Its crops are then centred off the nuclei without a word (with the cell stain
first, 23% of crops were centred on a nucleus), so the nuclei are looked for in the channel
named like a DNA stain, and a crop with no such channel, or several, asks which.

A crop size fits one magnification: the paper's 68 px crops hold one BBBC021 nucleus, whose
median equivalent diameter is 33 px (:func:`cellprof.prepare.segment.find_nuclei` on 600 of
its 68-px crops, ``../shared/data/bbbc021``; 10th-90th percentile 24-39 px), i.e. 2.1 times
the nucleus. The same 68 px on 10-px nuclei holds about ten cells and loses a quarter of them
at a 512-px field's edges. So the nuclei of a few fields are measured first (or read from
an object table of nuclei, CellProfiler's ``AreaShape_Area``); a crop size
more than :data:`MOST` times, or less than :data:`LEAST` times, their median diameter is
said, and ``size="auto"`` takes :data:`AUTO` times it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cellprof.errors import ImageError, InputError
from cellprof.prepare.fieldwork import FieldTask, load_field
from cellprof.prepare.segment import SegmentConfig, find_nuclei
from cellprof.prepare.tables import NUCLEAR_STAINS, is_nuclear

AUTO = 2.0
"""``size="auto"``: the crop side in median nucleus diameters (BBBC021's 68 px / 33 px)."""
LEAST, MOST = 1.5, 4.0
"""A crop side outside these many median nucleus diameters is said: under 1.5 a crop cuts
through larger nuclei (BBBC021's 90th percentile diameter is 1.2 times its median); over 4
it holds several cells, its neighbours as much as the cell (BBBC021's 68-px crops, 2.1
diameters, hold a median of 2 nuclei or parts of nuclei)."""
SMALLEST = 36
"""The smallest ``auto`` crop: the default model's 5x5 kernels need 36 px."""
MEASURED_FIELDS = 8
"""Fields segmented to measure the nuclei, spread over the screen (about 50 ms each at
512 x 512 px)."""


def nucleus_channel(channels: list[str], asked: str | None, segment: bool,
                    notes: list[str]) -> int:
    """The index of the channel to segment: ``asked`` (``--nucleus-channel``), else the one
    channel named like a DNA stain (said in ``notes``); 0 when nothing is segmented.

    Raises
    ------
    InputError
        When ``asked`` is no channel, or nothing is asked and no channel, or several, are
        named like a DNA stain.
    """
    if asked is not None:
        if asked not in channels:
            raise InputError(f"--nucleus-channel {asked!r} is not a channel of the image "
                             f"table (channels: {', '.join(channels)})")
        if segment:
            notes.append(f"nuclei segmented in channel {asked} (--nucleus-channel)")
        return channels.index(asked)
    if not segment:
        return 0
    nuclear = [c for c in channels if is_nuclear(c)]
    if len(nuclear) == 1:
        notes.append(f"nuclei segmented in channel {nuclear[0]}, the one named like a DNA "
                     "stain; choose another with --nucleus-channel")
        return channels.index(nuclear[0])
    which = (f"several channels are named like a DNA stain ({', '.join(nuclear)})" if nuclear
             else f"no channel is named like a DNA stain ({', '.join(NUCLEAR_STAINS[:5])} …)")
    raise InputError(f"--segment: {which}; name the channel holding the nuclei with "
                     f"--nucleus-channel (channels: {', '.join(channels)})")


@dataclass(frozen=True)
class NucleusSize:
    """The nuclei of the fields measured: median equivalent diameter (px), how many, and
    how densely they lie."""

    diameter: float
    n_nuclei: int
    n_fields: int
    field_shape: tuple[int, int] | None
    """(height, width) of a field; None when the image table does not say."""
    per_px: float
    """Nuclei per square pixel of field (NaN without the field's shape)."""
    source: str = "segmented"
    """``segmented`` (measured here) or ``table`` (the object table's AreaShape_Area)."""

    @property
    def said(self) -> str:
        """Where the diameter comes from, for messages."""
        if self.source == "table":
            return (f"median equivalent diameter of the object table's {self.n_nuclei} nuclei "
                    f"(AreaShape_Area) in {self.n_fields} fields")
        return (f"median equivalent diameter of {self.n_nuclei} nuclei in {self.n_fields} "
                "fields")


def table_nuclei(tasks: list[FieldTask]) -> NucleusSize | None:
    """The nuclei's size from the object table's ``AreaShape_Area`` (CellProfiler's
    MeasureObjectSizeShape), as the tasks carry it; None when it does not have it."""
    with_areas = [t for t in tasks if t.nucleus_areas is not None and len(t.nucleus_areas)]
    every = np.concatenate([t.nucleus_areas for t in with_areas]) if with_areas else np.zeros(0)
    every = every[np.isfinite(every) & (every > 0)]
    if not len(every):
        return None
    shape = next((t.expected_shape for t in with_areas if t.expected_shape), None)
    per_px = len(every) / (len(with_areas) * shape[0] * shape[1]) if shape else float("nan")
    return NucleusSize(float(np.median(np.sqrt(4 * every / np.pi))), len(every),
                       len(with_areas), shape, per_px, "table")


def measure_nuclei(tasks: list[FieldTask], nucleus: int, segment: SegmentConfig,
                   n_fields: int = MEASURED_FIELDS) -> NucleusSize | None:
    """Segment up to ``n_fields`` fields spread evenly over ``tasks`` (their nucleus
    channel only) and measure their nuclei; None when none of them has a nucleus.

    The equivalent diameter is CellProfiler's ``AreaShape_EquivalentDiameter``, the
    diameter of the disc of the nucleus's area. Unreadable fields are skipped here; the
    crop reports them.
    """
    picks = np.unique(np.linspace(0, len(tasks) - 1, min(n_fields, len(tasks))).round())
    areas, shape, read = [], (0, 0), 0
    for i in picks.astype(int):
        task = tasks[i]
        try:
            plane = load_field(replace(task, files=[task.files[nucleus]]))[0]
        except ImageError:
            continue
        areas.append(find_nuclei(plane, segment)["AreaShape_Area"].to_numpy(np.float64))
        shape, read = plane.shape, read + 1
    every = np.concatenate(areas) if areas else np.zeros(0)
    if not len(every):
        return None
    return NucleusSize(float(np.median(np.sqrt(4 * every / np.pi))), len(every), read,
                       (int(shape[0]), int(shape[1])), len(every) / (read * shape[0] * shape[1]))


def auto_size(diameter: float) -> int:
    """:data:`AUTO` median diameters, to a multiple of 4 px, at least :data:`SMALLEST`
    (and at most 1024, the largest crop)."""
    return int(min(1024, max(SMALLEST, 4 * np.floor(AUTO * diameter / 4 + 0.5))))


def size_advice(size: int, nuclei: NucleusSize) -> str | None:
    """What is wrong with crops of ``size`` px for these nuclei, or None when nothing is."""
    ratio = size / nuclei.diameter
    if LEAST <= ratio <= MOST:
        return None
    said = (f"nuclei measure {nuclei.diameter:.0f} px across ({nuclei.said}), and --size "
            f"{size} is {ratio:.1f} times that")
    if ratio > MOST and nuclei.field_shape is None:
        said += f", more than {MOST:g}: a crop holds several cells"
    elif ratio > MOST:
        h, w = nuclei.field_shape
        lost = 1 - max(0.0, 1 - size / h) * max(0.0, 1 - size / w)
        said += (f", more than {MOST:g}: a crop holds about {nuclei.per_px * size * size:.0f} "
                 f"nuclei, and about {lost:.0%} of cells lie too near a {w}x{h} field's edge "
                 "for one (--edge skip)")
    else:
        said += f", less than {LEAST:g}: crops cut through the nuclei"
    return said + (f"; --size auto would crop {auto_size(nuclei.diameter)} px "
                   f"({AUTO:g} diameters, docs/cli.md#crop)")


def fit_to_nuclei(tasks: list[FieldTask], channels: list[str], asked: str | None,
                  segment: SegmentConfig | None, size: int | str, notes: list[str]
                  ) -> tuple[int, int]:
    """The nucleus channel's index and the crop side in px for a crop run: with
    ``segment``, the nuclei of a few fields are measured, a crop ``size`` far from their
    size is said in ``notes``, and ``size="auto"`` is made :func:`auto_size` of them.

    Raises
    ------
    InputError
        From :func:`nucleus_channel`; for ``size="auto"`` without ``segment`` (only nuclei
        it finds are measured), or when the fields measured hold no nucleus.
    """
    nucleus = nucleus_channel(channels, asked, segment is not None, notes)
    if segment is None:
        nuclei = table_nuclei(tasks)
        if size == "auto" and nuclei is None:
            raise InputError("--size auto measures the nuclei --segment finds, or reads their "
                             "AreaShape_Area from an object table of nuclei: add --segment, "
                             "or give --size in pixels")
    else:
        nuclei = measure_nuclei(tasks, nucleus, segment)
    if size == "auto":
        if nuclei is None:
            raise InputError(f"--size auto: no nuclei found in channel {channels[nucleus]} "
                             f"of the {min(MEASURED_FIELDS, len(tasks))} fields measured; give "
                             "--size in pixels")
        chosen = auto_size(nuclei.diameter)
        notes.append(f"--size auto: {chosen} px crops, {AUTO:g} times the nuclei's median "
                     f"diameter of {nuclei.diameter:.1f} px ({nuclei.said}), to a multiple of "
                     f"4, at least {SMALLEST}")
        return nucleus, chosen
    advice = size_advice(int(size), nuclei) if nuclei is not None else None
    if advice:
        notes.append(advice)
    return nucleus, int(size)
