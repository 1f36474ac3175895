"""Reading microscope images as they come: 8/16-bit, compressed, multi-page, multi-channel.

Every reader returns planes as ``(P, H, W)``; which plane is which channel is decided by
the image table (:mod:`cellprof.prepare.crop`) or by each file's own OME channel names
(:func:`ome_plane`), never guessed from pixel data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import tifffile

from cellprof.errors import ImageError, MissingChannel, MissingImage

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}


def read_planes(path: str | Path) -> np.ndarray:
    """All planes of an image file as ``(P, H, W)``, dtype as stored.

    TIFFs (any compression tifffile/imagecodecs decode: LZW, deflate, zstd, packbits …)
    may hold one plane, several pages, a ``(P, H, W)`` stack or interleaved samples
    ``(H, W, S)``; 16-bit PNGs go through imagecodecs (:func:`_png16`), other formats
    through scikit-image.

    Raises
    ------
    MissingImage, ImageError
        When the file is missing or cannot be decoded, naming it and why.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingImage(f"{path}: image not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                data, axes = series.asarray(), series.axes
                if len(tif.series) > 1 and all(s.shape == series.shape for s in tif.series):
                    # Pages written one by one (common for channel stacks) form one series
                    # each; the channels are all of them.
                    data = np.stack([s.asarray() for s in tif.series])
                    axes = "I" + axes
        else:
            data = _png16(path)
            if data is None:
                from skimage.io import imread

                data = imread(path)
            axes = "YXS" if data.ndim == 3 and data.shape[-1] in (3, 4) else ""
    except Exception as exc:  # decoders raise many types; the user needs the file and why
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return _as_planes(np.asarray(data), axes, path)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png16(path: Path) -> np.ndarray | None:
    """A 16-bit PNG's pixels as stored, through imagecodecs' libpng; None for any other
    file. scikit-image reads PNGs with Pillow, which reads a 16-bit RGB(A) PNG as 8-bit
    (5000 becomes 19): crops stored that way would lose their scale without a word."""
    with open(path, "rb") as fh:
        head = fh.read(26)  # signature, IHDR length and type, width, height, bit depth
    if len(head) < 25 or not head.startswith(_PNG_MAGIC) or head[24] != 16:
        return None
    import imagecodecs

    return imagecodecs.png_decode(path.read_bytes())


@contextmanager
def single_plane_tiff(path: Path) -> Iterator[tifffile.TiffPageSeries | None]:
    """The one 2-D plane of a TIFF that holds nothing else, open for decoding into the
    caller's array (``series.asarray(out=...)``), the file closed afterwards.

    Yields None for every other file (missing, unreadable, several planes or samples,
    another byte order than this machine's): :func:`read_planes` reads those and says what
    is wrong with them. Nearly every plate image is such a plane, and decoding it into an
    array the caller keeps between fields is what lets ``crop`` read a field faster than
    one :func:`read_planes` call per channel (see :class:`cellprof.prepare.fieldwork.FieldBuffer`).
    """
    tif = None
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            tif = tifffile.TiffFile(path)
        except Exception:  # reported by read_planes
            tif = None
    if tif is None:
        yield None
        return
    with tif:
        try:
            series = tif.series[0] if len(tif.series) == 1 else None
        except Exception:  # reported by read_planes
            series = None
        if (series is None or len(series.shape) != 2 or series.axes != "YX"
                or not series.dtype.isnative):
            series = None
        yield series


def channel_names(path: str | Path) -> list[str] | None:
    """The channel names an OME-TIFF's metadata gives, in plane order; None when the file
    is not OME or names no channels (or not all of them)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata if tif.is_ome else None
    except Exception:  # unreadable here is reported when the field is read
        return None
    if not xml:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None
    names = [e.get("Name") for e in pixels if e.tag.endswith("}Channel")]
    return names if names and all(names) else None


def ome_plane(path: Path, name: str, n_planes: int, names: list[str] | None) -> int:
    """The plane of ``path`` that its own OME metadata (``names``, from
    :func:`channel_names`) calls ``name``.

    Files of one screen need not store their channels in one order, so each file's planes
    are looked up by its own names, never by the first file's order.

    Raises
    ------
    MissingChannel
        When the file names no channels for its ``n_planes`` planes, or none called
        ``name``, listing the names it has.
    """
    if names is None or len(names) != n_planes:
        have = f"its OME channel names: {', '.join(names)}" if names else "no OME channel names"
        raise MissingChannel(f"{path}: holds {n_planes} planes and {have}, so none can be "
                             f"taken as channel {name}; name its planes in its OME metadata, "
                             "or give the image table Frame_<channel> columns")
    if name not in names:
        raise MissingChannel(f"{path}: has no channel {name} (its OME channel names: "
                             f"{', '.join(names)}); the screen's channels come from the first "
                             "file's names: correct this file's names, or give the image table "
                             "Frame_<channel> columns")
    return names.index(name)


def _as_planes(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    if len(axes) == data.ndim:
        axes = "".join(a for a, n in zip(axes, data.shape, strict=True) if n != 1)
    data = np.squeeze(data)
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3:
        # Interleaved samples (RGB) are last; stacks are first.
        if axes.endswith("S") or (not axes and data.shape[-1] <= 4 < data.shape[0]):
            return np.moveaxis(data, -1, 0)
        return data
    raise ImageError(f"{path}: expected a 2-D image or a stack of 2-D planes, "
                     f"got shape {data.shape}")


def resolve_image(pathname: object, filename: object, *, root: Path | None,
                  table_dir: Path) -> tuple[Path, list[Path]]:
    """Where an image table's file is on this machine.

    Tables carry paths from the machine that ran CellProfiler (``/Users/…/images``) or
    relative ones (BBBC021's ``Week4/Week4_27481``). Candidates, in order: the path as
    written (relative ones against the table's folder), then under ``root``: the relative
    path, its last folder, and the bare file name. Returns the first that exists (or the
    first candidate) and the list tried, for the error message.
    """
    fname = str(filename)
    pname = "" if pathname is None or (isinstance(pathname, float) and np.isnan(pathname)) \
        else str(pathname)
    if pname.startswith("file:"):
        pname = pname[len("file:"):].lstrip("/")
        pname = "/" + pname
    parts = PureWindowsPath(pname).parts if "\\" in pname else PurePosixPath(pname).parts
    as_written = Path(pname) / fname if pname else Path(fname)
    cands = [as_written if as_written.is_absolute() else table_dir / as_written]
    if root is not None:
        rel = [p for p in parts if p not in ("/", "\\") and not p.endswith(":\\")]
        for k in range(len(rel)):
            cands.append(root.joinpath(*rel[k:], fname))
        cands.append(root / fname)
    seen: list[Path] = []
    for c in cands:
        if c not in seen:
            seen.append(c)
    for c in seen:
        if c.is_file():
            return c, seen
    # Nothing exists: report the path the user most likely meant.
    return (seen[1] if root is not None and len(seen) > 1 else seen[0]), seen


def intensity_stats(plane: np.ndarray) -> dict[str, float]:
    """Per-image statistics later normalisation needs.

    Extremes come from every pixel; mean, spread and percentiles from every 4th row and
    column (a 1024 x 1024 field still gives 65,536 samples, which put the mean within
    0.4% of a standard deviation): exact figures would cost more than reading the field,
    and normalisation needs no more precision than this. Unsigned integer planes (nearly
    every microscope's) take them from a histogram of the samples, at a fifth of the cost.
    """
    sample = plane[::4, ::4]
    if plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:
        mean, std, (p1, p50, p99) = _histogram_stats(sample)
    else:
        sample = sample.astype(np.float32)
        mean, std = float(sample.mean(dtype=np.float64)), float(sample.std(dtype=np.float64))
        p1, p50, p99 = np.percentile(sample, [1, 50, 99])
    return {
        "MeanIntensity": mean,
        "StdIntensity": std,
        "MinIntensity": float(plane.min()),
        "MaxIntensity": float(plane.max()),
        "Percentile01": float(p1),
        "MedianIntensity": float(p50),
        "Percentile99": float(p99),
    }


def _histogram_stats(sample: np.ndarray) -> tuple[float, float, list[float]]:
    """Mean, standard deviation and the 1st, 50th and 99th percentiles of an unsigned
    integer ``sample`` (numpy's default linear interpolation), from its value counts."""
    counts = np.bincount(sample.ravel())
    values = np.arange(len(counts), dtype=np.float64)
    n = sample.size
    # Elementwise products, not `@`: a float dot product goes to BLAS, whose threads then
    # spin for a while and take the other core from the next worker's image decoding.
    mean = float((counts * values).sum()) / n
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / n))
    rank = np.cumsum(counts)  # rank[v]: how many samples are <= v
    out = []
    for q in (1, 50, 99):
        pos = q / 100 * (n - 1)
        lo = int(np.floor(pos))
        below, above = np.searchsorted(rank, [lo, min(lo + 1, n - 1)], side="right")
        out.append(float(below + (pos - lo) * (above - below)))
    return mean, std, out
