"""The inputs of the hostile matrix (tests/test_hostile_matrix.py): one small synthetic screen
and the same screen in every shape ``cellprof crop`` reads.

:func:`build_truth` writes the screen once (a session fixture) with what every cell truly
is: its plate, well, site, object number, centre, compound, concentration and the pixels of
its field. Each :class:`Format` lays the screen out as its tables (:meth:`Format.frames`,
frames in the format's own column names, where a case damages them) and writes them into
the case's folder (:meth:`Format.write`): CellProfiler's Image.csv + Nuclei.csv, JUMP's
load_data.csv + objects, an ExportToDatabase SQLite file, a CytoTable Parquet file, one
multi-page TIFF per field with ``Frame_`` columns, one OME-TIFF per field named by its OME
channels, and a ``--singlecell`` folder of NPY, TIFF and PNG crops with a metadata table.
Every frame carries the truth's ``_image`` and ``_object`` (hidden: never written), so a
damage finds its rows whatever the format calls them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import tifffile

from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.singlecell import import_singlecell

CH = ("DNA", "Tubulin", "Actin")
SIZE = 16
FIELDS_PER_PLATE = 4
META = {"plate": "Metadata_Plate", "well": "Metadata_Well", "site": "Metadata_Site",
        "compound": "Metadata_Compound", "concentration": "Metadata_Concentration"}
#: Which of the truth's channels a store channel is (JUMP names its channels Orig*).
TRUTH_CHANNEL = {"DNA": 0, "Tubulin": 1, "Actin": 2, "OrigDNA": 0, "OrigER": 1, "OrigAGP": 2}


@dataclass(frozen=True)
class Truth:
    """What the screen is: ``fields`` (one row per field: ``image``, plate, well, site,
    compound, concentration, and the file of each channel), ``cells`` (every object:
    ``image``, ``object``, ``x``, ``y`` and its field's metadata, ``fits`` when its
    ``SIZE`` crop lies inside the field), ``pixels`` (image -> (3, H, W) uint16) and
    ``root``, where the stacks and crops of the other formats are."""

    fields: pd.DataFrame
    cells: pd.DataFrame
    pixels: dict[int, np.ndarray]
    root: Path

    def expected(self) -> pd.DataFrame:
        """The cells an undamaged input gives: every object whose crop fits its field."""
        return self.cells[self.cells["fits"]].drop(columns="fits").reset_index(drop=True)

    def window(self, image: int, x: float, y: float,
               pixels: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """The ``(3, SIZE, SIZE)`` window of a field centred as ``crop`` centres it."""
        field = (pixels or {}).get(image, self.pixels[image])
        x0, y0 = int(np.floor(x + 0.5)) - SIZE // 2, int(np.floor(y + 0.5)) - SIZE // 2
        return field[:, y0:y0 + SIZE, x0:x0 + SIZE]


def build_truth(root: Path) -> Truth:
    """Synthesize a small screen (2 plates, ``FIELDS_PER_PLATE`` fields each, a few cells a
    field) and lay out the stacks and crops the other formats point at."""
    from cellprof.example.synth import SynthConfig, synthesize

    res = synthesize(root / "screen", SynthConfig(field_size=128, cells_per_field=4, sites=1,
                                                  batches=1, plates_per_batch=2,
                                                  compression=None))
    images = pd.read_csv(res.image_table).groupby(META["plate"]).head(FIELDS_PER_PLATE)
    number = dict(zip(images["ImageNumber"], range(1, len(images) + 1)))
    fields = pd.DataFrame({"image": images["ImageNumber"].map(number).to_numpy(),
                           **{k: images[c].to_numpy() for k, c in META.items()}})
    for ch in CH:
        fields[f"file_{ch}"] = [str(Path(p) / f) for p, f in
                                zip(images[f"PathName_{ch}"], images[f"FileName_{ch}"])]
    objects = pd.read_csv(res.object_table)
    objects = objects[objects["ImageNumber"].isin(number)]
    cells = pd.DataFrame({"image": objects["ImageNumber"].map(number).to_numpy(),
                          "object": objects["ObjectNumber"].to_numpy(),
                          "x": objects["Location_Center_X"].to_numpy(),
                          "y": objects["Location_Center_Y"].to_numpy()})
    cells = cells.merge(fields[["image", *META]], on="image")
    pixels = {int(r.image): np.stack([tifffile.imread(getattr(r, f"file_{ch}")) for ch in CH])
              for r in fields.itertuples()}
    x0 = np.floor(cells["x"] + 0.5) - SIZE // 2
    y0 = np.floor(cells["y"] + 0.5) - SIZE // 2
    cells["fits"] = (x0 >= 0) & (y0 >= 0) & (x0 + SIZE <= 128) & (y0 + SIZE <= 128)
    truth = Truth(fields, cells, pixels, root)
    for image, stack in pixels.items():
        write_pages(root / "pages" / f"f{image}.tif", stack)
        write_ome(root / "ome" / f"f{image}.ome.tif", stack, CH)
    for r in truth.expected().itertuples():
        write_crop(root / "cells" / crop_name(r), truth.window(r.image, r.x, r.y))
    return truth


def crop_name(cell: object) -> str:
    """Where a cell's crop lies in the ``--singlecell`` folder: NPY, TIFF and PNG in turn."""
    ext = (".npy", ".tif", ".png")[cell.object % 3]
    return f"{cell.plate}/{cell.well}/c{cell.object}{ext}"


def write_pages(path: Path, stack: np.ndarray) -> None:
    """A multi-page TIFF, one page per plane, written one by one (as many tools do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    for plane in stack:
        tifffile.imwrite(path, plane, append=True)


def write_ome(path: Path, stack: np.ndarray, names: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, stack, photometric="minisblack", ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": list(names)}})


def write_crop(path: Path, crop: np.ndarray) -> None:
    """One ``(3, H, W)`` crop as its suffix says: NPY ``(H, W, 3)``, a TIFF stack, an RGB
    PNG (8 or 16 bits a sample, as the crop's type)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, np.moveaxis(crop, 0, -1))
    elif path.suffix == ".tif":
        tifffile.imwrite(path, crop, photometric="minisblack")
    else:
        path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(np.moveaxis(crop, 0, -1))))


def read_crop_file(path: Path) -> np.ndarray:
    """A crop written by :func:`write_crop`, as ``(3, H, W)``."""
    if path.suffix == ".npy":
        return np.moveaxis(np.load(path), -1, 0)
    if path.suffix == ".tif":
        return tifffile.imread(path)
    return np.moveaxis(imagecodecs.png_decode(path.read_bytes()), -1, 0)


@dataclass
class Tables:
    """A case's inputs before they are written, in the format's own column names: the image
    table (for ``--singlecell``, the crop table) and the object table (None there)."""

    images: pd.DataFrame
    objects: pd.DataFrame | None
    dir: Path
    post: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    """A change to a single-cell table once its two halves are joined (Parquet)."""


@dataclass(frozen=True)
class Inputs:
    """A written case: its ``crop`` arguments, and the same run as a library call (for
    interrupting it from a progress callback)."""

    args: list[str]
    call: Callable[..., object]


def _visible(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.loc[:, [not str(c).startswith("_") for c in frame.columns]]


def _metadata(truth: Truth, prefix: str = "") -> pd.DataFrame:
    return pd.DataFrame({f"{prefix}{c}": truth.fields[k] for k, c in META.items()})


@dataclass(frozen=True)
class Format:
    """One way of holding the screen. ``roles`` name its columns for the damages: ``x``,
    ``y`` (object centres), ``obj_key`` (the column pairing an object with its image),
    ``num_key`` (a numeric one), ``number`` (the object's number), the metadata (``plate``,
    ``well``, ``site``, ``compound``) and ``files``: (file column, path column) pairs."""

    name: str
    image_label: str
    object_label: str
    channels: tuple[str, ...]
    roles: dict[str, object] = field(default_factory=dict)
    pixels: str = "plane"   # how its files hold a field: plane, pages, ome or crop

    def frames(self, truth: Truth, folder: Path) -> Tables:
        return _FRAMES[self.name](self, truth, folder)

    def write(self, t: Tables) -> Inputs:
        return _WRITERS[self.name](self, t)

    def image_files(self, t: Tables, image: int) -> list[Path]:
        """The files a field's pixels are read from (its crops, for ``--singlecell``)."""
        rows = t.images[t.images["_image"] == image]
        if self.pixels == "crop":
            return [t.dir / "cells" / p for p in rows["crop_path"]]
        return list(dict.fromkeys(Path(r[p]) / r[f] for _, r in rows.iterrows()
                                  for f, p in self.roles["files"]))

    def privatize(self, t: Tables, image: int) -> list[Path]:
        """Give the case its own copy of a field's files (to damage), the table pointing at
        them."""
        if self.pixels == "crop":
            return self.image_files(t, image)
        rows = t.images["_image"] == image
        private = t.dir / "private"
        private.mkdir(exist_ok=True)
        for f, p in self.roles["files"]:
            for i in t.images.index[rows]:
                src = Path(t.images.at[i, p]) / t.images.at[i, f]
                if not (private / src.name).exists():
                    shutil.copy(src, private / src.name)
                t.images.at[i, p] = str(private)
        return self.image_files(t, image)


def _cp_objects(truth: Truth, x: str = "Location_Center_X", number: str = "ObjectNumber",
                image: str = "ImageNumber") -> pd.DataFrame:
    c = truth.cells
    return pd.DataFrame({"_image": c["image"], "_object": c["object"], image: c["image"],
                         number: c["object"], x: c["x"], x[:-1] + "Y": c["y"]})


def _per_channel(truth: Truth, prefix: str = "", names: tuple[str, ...] = CH) -> pd.DataFrame:
    out = {}
    for ch, name in zip(CH, names):
        paths = truth.fields[f"file_{ch}"].map(Path)
        out[f"{prefix}FileName_{name}"] = paths.map(lambda p: p.name)
        out[f"{prefix}PathName_{name}"] = paths.map(lambda p: str(p.parent))
    return pd.DataFrame(out)


def _cp_frames(fmt: Format, truth: Truth, folder: Path) -> Tables:
    images = pd.concat([pd.DataFrame({"_image": truth.fields["image"],
                                      "ImageNumber": truth.fields["image"]}),
                        _per_channel(truth), _metadata(truth)], axis=1)
    return Tables(images, _cp_objects(truth), folder)


def _stack_frames(fmt: Format, truth: Truth, folder: Path) -> Tables:
    image = truth.fields["image"]
    head = pd.DataFrame({"_image": image, "ImageNumber": image})
    if fmt.pixels == "pages":
        name = "f" + image.astype(str) + ".tif"
        files = pd.DataFrame({})
        for k, ch in enumerate(CH):
            files[f"FileName_{ch}"] = name
            files[f"PathName_{ch}"] = str(truth.root / "pages")
            files[f"Frame_{ch}"] = k
    else:
        files = pd.DataFrame({"FileName_Image": "f" + image.astype(str) + ".ome.tif",
                              "PathName_Image": str(truth.root / "ome")})
    return Tables(pd.concat([head, files, _metadata(truth)], axis=1), _cp_objects(truth), folder)


def _jump_frames(fmt: Format, truth: Truth, folder: Path) -> Tables:
    images = pd.concat([pd.DataFrame({"_image": truth.fields["image"],
                                      "Metadata_Source": "source_7"}), _metadata(truth),
                        _per_channel(truth, names=fmt.channels)], axis=1)
    c = truth.cells
    objects = pd.DataFrame({"_image": c["image"], "_object": c["object"],
                            **{META[k]: c[k] for k in ("plate", "well", "site")},
                            "Nuclei_Number_Object_Number": c["object"],
                            "Nuclei_Location_Center_X": c["x"],
                            "Nuclei_Location_Center_Y": c["y"]})
    return Tables(images, objects, folder)


def _database_frames(fmt: Format, truth: Truth, folder: Path) -> Tables:
    """ExportToDatabase's tables (``TableNumber`` + ``ImageNumber``, every column prefixed
    with its table); CytoTable's keys are prefixed ``Metadata_`` besides."""
    key = "Metadata_" if fmt.name == "parquet" else ""
    images = pd.concat([pd.DataFrame({"_image": truth.fields["image"], f"{key}TableNumber": 1,
                                      f"{key}ImageNumber": truth.fields["image"]}),
                        _per_channel(truth, "Image_"), _metadata(truth, "Image_")], axis=1)
    objects = _cp_objects(truth, "Nuclei_Location_Center_X",
                          f"{key}Nuclei_Number_Object_Number", f"{key}ImageNumber")
    objects.insert(2, f"{key}TableNumber", 1)
    return Tables(images, objects, folder)


def _singlecell_frames(fmt: Format, truth: Truth, folder: Path) -> Tables:
    shutil.copytree(truth.root / "cells", folder / "cells")
    c = truth.expected()
    rows = pd.DataFrame({"_image": c["image"], "_object": c["object"],
                         "crop_path": [crop_name(r) for r in c.itertuples()],
                         **{k: c[k] for k in META}, "cell_index": c["object"] - 1})
    return Tables(rows, None, folder)


def _crop_call(table: Path, objects: Path | None) -> Callable[..., object]:
    def call(out: Path, progress: Callable[..., None]) -> object:
        return crop_screen(table, out, objects=objects, config=CropConfig(size=SIZE),
                           progress=progress)
    return call


def _write_csvs(fmt: Format, t: Tables) -> Inputs:
    image, objects = t.dir / fmt.image_label, t.dir / fmt.object_label
    _visible(t.images).to_csv(image, index=False)
    _visible(t.objects).to_csv(objects, index=False)
    return Inputs([str(image), "--objects", str(objects)], _crop_call(image, objects))


def _sql_value(value: object) -> object:
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and np.isnan(value) else value


def _write_sqlite(fmt: Format, t: Tables) -> Inputs:
    """Untyped columns, so each value is stored as given (SQLite types values, not
    columns: one table can hold 3, '3' and 3.0 in one column)."""
    path = t.dir / "screen.sqlite"
    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as con:
        for name, frame in (("Per_Image", t.images), ("Per_Nuclei", t.objects)):
            frame = _visible(frame)
            columns = ", ".join(f'"{c}"' for c in frame.columns)
            con.execute(f'CREATE TABLE "{name}" ({columns})')
            con.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" * frame.shape[1])})',
                            [tuple(map(_sql_value, r)) for r in frame.itertuples(index=False)])
        con.commit()
    return Inputs([str(path)], _crop_call(path, None))


def _write_parquet(fmt: Format, t: Tables) -> Inputs:
    keys = ["Metadata_TableNumber", "Metadata_ImageNumber"]
    table = _visible(t.objects).merge(_visible(t.images), on=keys, how="left")
    if t.post is not None:
        table = t.post(table)
    path = t.dir / "cells.parquet"
    table.to_parquet(path, index=False)
    return Inputs([str(path)], _crop_call(path, None))


def _write_singlecell(fmt: Format, t: Tables) -> Inputs:
    meta, folder = t.dir / "metadata.csv", t.dir / "cells"
    _visible(t.images).to_csv(meta, index=False)

    def call(out: Path, progress: Callable[..., None]) -> object:
        return import_singlecell(folder, meta, out, channels=CH, progress=progress)
    return Inputs(["--singlecell", str(folder), "--metadata", str(meta), "--channels",
                   ",".join(CH)], call)


_CP_ROLES = {"x": "Location_Center_X", "y": "Location_Center_Y", "obj_key": "ImageNumber",
             "num_key": "ImageNumber", "number": "ObjectNumber", **META,
             "files": [(f"FileName_{c}", f"PathName_{c}") for c in CH]}
_DB = {k: f"Image_{v}" for k, v in META.items()}
_JUMP = ("OrigDNA", "OrigER", "OrigAGP")
FORMATS = {f.name: f for f in (
    Format("cp_csv", "Image.csv", "Nuclei.csv", CH, _CP_ROLES),
    Format("jump", "load_data.csv", "nuclei.csv", _JUMP, {
        **_CP_ROLES, "x": "Nuclei_Location_Center_X", "y": "Nuclei_Location_Center_Y",
        "obj_key": META["well"], "num_key": META["site"],
        "number": "Nuclei_Number_Object_Number",
        "files": [(f"FileName_{c}", f"PathName_{c}") for c in _JUMP]}),
    Format("sqlite", "screen.sqlite:Per_Image", "screen.sqlite:Per_Nuclei", CH, {
        **_CP_ROLES, **_DB, "x": "Nuclei_Location_Center_X", "y": "Nuclei_Location_Center_Y",
        "number": "Nuclei_Number_Object_Number",
        "files": [(f"Image_FileName_{c}", f"Image_PathName_{c}") for c in CH]}),
    Format("parquet", "cells.parquet", "cells.parquet", CH, {
        **_CP_ROLES, **_DB, "x": "Nuclei_Location_Center_X", "y": "Nuclei_Location_Center_Y",
        "obj_key": "Metadata_ImageNumber", "num_key": "Metadata_ImageNumber",
        "number": "Metadata_Nuclei_Number_Object_Number",
        "files": [(f"Image_FileName_{c}", f"Image_PathName_{c}") for c in CH]}),
    Format("pages", "Image.csv", "Nuclei.csv", CH, {
        **_CP_ROLES}, pixels="pages"),
    Format("ome", "Image.csv", "Nuclei.csv", CH, {
        **_CP_ROLES, "files": [("FileName_Image", "PathName_Image")]}, pixels="ome"),
    Format("singlecell", "metadata.csv", "metadata.csv", CH, {
        **{k: k for k in META}, "number": "cell_index", "num_key": "site",
        "obj_key": "site"}, pixels="crop"),
)}
_FRAMES = {"cp_csv": _cp_frames, "jump": _jump_frames, "sqlite": _database_frames,
           "parquet": _database_frames, "pages": _stack_frames, "ome": _stack_frames,
           "singlecell": _singlecell_frames}
_WRITERS = {"cp_csv": _write_csvs, "jump": _write_csvs, "sqlite": _write_sqlite,
            "parquet": _write_parquet, "pages": _write_csvs, "ome": _write_csvs,
            "singlecell": _write_singlecell}
TABLE_FORMATS = tuple(n for n in FORMATS if n != "singlecell")


def rewrite_pixels(fmt: Format, path: Path, change: Callable[[np.ndarray], np.ndarray],
                   names: tuple[str, ...] = CH) -> None:
    """Rewrite an image (or crop) file of ``fmt`` with ``change`` applied to its
    ``(P, H, W)`` planes, in the same layout; its time set apart from the old one's, so
    even a file of the same size and second is seen to have changed."""
    from cellprof.formats.images import read_planes

    if fmt.pixels == "crop":
        write_crop(path, change(read_crop_file(path)))
    elif fmt.pixels == "pages":
        write_pages(path, change(read_planes(path)))
    elif fmt.pixels == "ome":
        write_ome(path, change(read_planes(path)), names)
    else:
        tifffile.imwrite(path, change(read_planes(path))[0])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_007))
