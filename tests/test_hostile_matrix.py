"""Issue 22's hostile matrix: every input ``cellprof crop`` reads, times every kind of damage a
careless or unlucky user does to it (tests/matrix_inputs.py builds the inputs).

Every case ends in one of two outcomes a user can trust, and the test says which:

* a non-zero exit with one ``error:`` line naming the file, table, column or row at fault,
  and no traceback; or
* exit 0 with a store that is, cell by cell, the synthetic screen the input was built from:
  plate, well, site, object, centre, compound, concentration, and every crop's pixels equal
  to its field's window; less exactly the cells the damage costs, each said in the issue log.

The targeted tests of the eleven reported cases are in test_hostile_inputs_a/b.py; this file
runs the same kinds of damage over all the formats, on one shared screen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Stop, stop_after
from matrix_inputs import (
    CH,
    FORMATS,
    META,
    SIZE,
    TABLE_FORMATS,
    TRUTH_CHANNEL,
    Format,
    Inputs,
    Tables,
    Truth,
    build_truth,
    rewrite_pixels,
    write_ome,
)
from test_hostile import one_line_error
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.formats import store

runner = CliRunner()
OBJECT_FORMATS = TABLE_FORMATS
ALL = tuple(FORMATS)


@pytest.fixture(scope="session")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    return build_truth(tmp_path_factory.mktemp("matrix"))


@dataclass
class Expect:
    """What a case must end in: ``refused`` (the words its one error line must hold), or
    exit 0 with ``cells`` (default: every cell whose crop fits), ``pixels`` (fields whose
    pixels the damage changed), exactly ``issues`` in the log and ``said`` in the output.
    ``before`` runs first (an interrupted run and an edit); ``concurrent`` starts a second
    run into the same output while the first is writing it."""

    refused: tuple[str, ...] = ()
    cells: pd.DataFrame | None = None
    pixels: dict[int, np.ndarray] = field(default_factory=dict)
    issues: dict[str, int] = field(default_factory=dict)
    said: tuple[str, ...] = ()
    before: Callable[[Inputs, Path], None] | None = None
    concurrent: bool = False
    logged: str | None = None
    """With ``refused``: exit 0 is as good, with ``cells`` and an issue naming this file."""


# --- helpers the damages share ----------------------------------------------------------------

def target(truth: Truth) -> int:
    """A field that is not the first, with at least two cells whose crops fit."""
    counts = truth.expected()["image"].value_counts()
    return int(min(i for i, n in counts.items() if i > 2 and n >= 2))


def a_cell(truth: Truth) -> tuple[int, int]:
    """(image, object) of a cell whose crop fits, in the target field."""
    cells = truth.expected()
    return target(truth), int(cells[cells["image"] == target(truth)]["object"].iloc[0])


def without(cells: pd.DataFrame, image: int, obj: int | None = None) -> pd.DataFrame:
    gone = (cells["image"] == image) & ((cells["object"] == obj) if obj is not None else True)
    return cells[~gone].reset_index(drop=True)


def object_row(t: Tables, image: int, obj: int) -> int:
    """The index (= position) of an object's row in the object (or crop) table."""
    table = key_table(t)
    hits = table.index[(table["_image"] == image) & (table["_object"] == obj)]
    return int(hits[0])


def line(index: int) -> str:
    """How messages name a table's row: its 1-based line in a CSV, after the header."""
    return f"row {index + 2}"


def set_image_column(t: Tables, column: str, image: int, value: object) -> None:
    """Set an image-level column of one field (every crop row of it, for --singlecell)."""
    t.images[column] = t.images[column].astype(object)
    t.images.loc[t.images["_image"] == image, column] = value


def key_table(t: Tables) -> pd.DataFrame:
    """The table whose rows are cells: the object table, or the crop table."""
    return t.objects if t.objects is not None else t.images


# --- the damages ------------------------------------------------------------------------------
# Each takes the format, the case's tables and the truth, damages the tables (or the files
# they point to) and says what the run must end in.

def drop_centre(fmt: Format, t: Tables, truth: Truth) -> Expect:
    t.objects = t.objects.drop(columns=[fmt.roles["x"]])
    return Expect(refused=(fmt.object_label.split(":")[0], "Location_Center_X"))


def drop_object_key(fmt: Format, t: Tables, truth: Truth) -> Expect:
    key = fmt.roles["obj_key"]
    if fmt.name == "parquet":  # one table: its objects' rows lose the key
        t.post = lambda table: table.drop(columns=[key])
    else:
        t.objects = t.objects.drop(columns=[key])
    return Expect(refused=(fmt.object_label.split(":")[-1], key.removeprefix("Metadata_")))


def drop_path(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The folder column of the first channel: its files are looked for beside the table."""
    if fmt.pixels == "crop":
        t.images = t.images.drop(columns=["crop_path"])
        return Expect(refused=("metadata.csv", "crop_path"))
    t.images = t.images.drop(columns=[fmt.roles["files"][0][1]])
    n = len(truth.fields)
    return Expect(refused=("no cells were cropped", f"every one of the {n} fields failed",
                           f"missing_image {n}"))


def lower_case_centre(fmt: Format, t: Tables, truth: Truth) -> Expect:
    if fmt.pixels == "crop":
        t.images = t.images.rename(columns={"crop_path": "Crop_Path"})
        return Expect(refused=("metadata.csv", "crop_path"))
    t.objects = t.objects.rename(columns={fmt.roles[k]: fmt.roles[k].lower() for k in "xy"})
    return Expect(refused=(fmt.object_label.split(":")[0], "Location_Center_X"))


def lower_case_metadata(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """``metadata_compound``: what a user's export or a hand edit makes of the name."""
    old = fmt.roles["compound"]
    new = old.replace("Metadata_Compound", "metadata_compound") if "Metadata_" in old \
        else old.upper()
    t.images = t.images.rename(columns={old: new})
    return Expect()


def prefix_variant(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The other CellProfiler naming style of each column: ``Image_`` prefixes taken off or
    put on, ``Nuclei_`` on centres, a channel suffix on metadata, ``Metadata_`` on keys."""
    if fmt.name in ("sqlite", "parquet"):
        t.images = t.images.rename(columns=lambda c: c.removeprefix("Image_"))
    elif fmt.name == "jump":
        first = fmt.channels[0]
        t.images = t.images.rename(columns={c: f"{c}_{first}" for c in t.images.columns
                                            if c in META.values()})
        t.objects = t.objects.rename(columns=lambda c: c.removeprefix("Nuclei_"))
    elif fmt.pixels == "crop":
        t.images = t.images.rename(columns={k: f"Image_{c}" for k, c in META.items()})
    else:
        t.images = t.images.rename(columns=lambda c: c if c.startswith("_") else f"Image_{c}")
        t.objects = t.objects.rename(columns={
            "Location_Center_X": "Nuclei_Location_Center_X",
            "Location_Center_Y": "Nuclei_Location_Center_Y",
            "ImageNumber": "Metadata_ImageNumber"})
    return Expect()


def _twin(fmt: Format, t: Tables, truth: Truth, differ: bool) -> Expect:
    """A column twice: in a CSV under one name; in a database or Parquet file (whose
    columns are unique) under both naming styles, ``Image_Metadata_Well`` and
    ``Metadata_Well``. ``differ``: the copies disagree in one row."""
    image, obj = a_cell(truth)
    if fmt.name in ("sqlite", "parquet"):
        col, frame = fmt.roles["well"], t.images
        twin = frame[col].where(frame["_image"] != image, "H12") if differ else frame[col]
        frame.insert(frame.columns.get_loc(col) + 1, col.removeprefix("Image_"), twin)
        label, name = fmt.image_label, col.removeprefix("Image_")
    else:
        crops = t.objects is None
        frame = key_table(t)
        col = fmt.roles["compound" if crops else "x"]
        twin = frame[col].copy()
        if differ:
            twin[object_row(t, image, obj)] = "other" if crops else 64.0
        frame = pd.concat([frame, twin], axis=1)
        t.images, t.objects = (frame, None) if crops else (t.images, frame)
        label, name = fmt.object_label, col
    return Expect(refused=(label.split(":")[0], name)) if differ else Expect()


def twin_column_same(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _twin(fmt, t, truth, differ=False)


def twin_column_differs(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _twin(fmt, t, truth, differ=True)


def repeated_image_row(fmt: Format, t: Tables, truth: Truth) -> Expect:
    image, obj = a_cell(truth)
    if fmt.pixels == "crop":
        row = object_row(t, image, obj)
        t.images = pd.concat([t.images, t.images.loc[[row]]], ignore_index=True)
        return Expect(refused=("metadata.csv", t.images.at[row, "crop_path"], "listed 2 times",
                               f"rows {row + 2}, {len(t.images) + 1}"))
    t.images = pd.concat([t.images, t.images[t.images["_image"] == image]], ignore_index=True)
    if fmt.name == "parquet":  # one table: the image's objects are listed twice, each logged
        n = int((truth.cells["image"] == image).sum())
        return Expect(issues={"duplicate_object": n})
    if fmt.name == "jump":
        well = truth.fields.set_index("image").at[image, "well"]
        return Expect(refused=(fmt.image_label, "2 rows share", f"Metadata_Well={well}"))
    number = f"1-{image}" if fmt.name == "sqlite" else f"{image}"
    return Expect(refused=(fmt.image_label, f"image {number} appears twice"))


def repeated_object_row(fmt: Format, t: Tables, truth: Truth) -> Expect:
    image, obj = a_cell(truth)
    row = object_row(t, image, obj)
    t.objects = pd.concat([t.objects, t.objects.loc[[row]]], ignore_index=True)
    return Expect(issues={"duplicate_object": 1})


def _bad_key(fmt: Format, t: Tables, truth: Truth, value: float) -> Expect:
    image, obj = a_cell(truth)
    key = fmt.roles["num_key"] if np.isinf(value) else fmt.roles["obj_key"]
    row = object_row(t, image, obj)
    if fmt.name == "parquet":  # the object's row keeps its image's columns, not its number
        t.post = lambda table: table.assign(**{key: table[key].where(table.index != row, value)})
    else:
        table = key_table(t)
        table[key] = table[key].astype(object)
        table.at[row, key] = value
    if fmt.name == "jump" and np.isinf(value):
        # text keys: an inf site is a site no image has, logged with the values both have
        return Expect(cells=without(truth.expected(), image, obj), issues={"unknown_image": 1})
    bare = META.get(key, key).removeprefix("Metadata_")
    what = "is empty" if np.isnan(value) else "is inf, not a whole number"
    return Expect(refused=(fmt.object_label.split(":")[-1], bare, what, line(row)))


def nan_object_key(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _bad_key(fmt, t, truth, np.nan)


def inf_object_key(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _bad_key(fmt, t, truth, np.inf)


def _bad_centre(fmt: Format, t: Tables, truth: Truth, value: float) -> Expect:
    image, obj = a_cell(truth)
    t.objects.at[object_row(t, image, obj), fmt.roles["x"]] = value
    return Expect(cells=without(truth.expected(), image, obj), issues={"missing_centre": 1})


def nan_centre(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _bad_centre(fmt, t, truth, np.nan)


def inf_centre(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _bad_centre(fmt, t, truth, np.inf)


def nan_compound(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """A field without a compound is kept, unlabelled (``match`` counts and drops it)."""
    image = target(truth)
    set_image_column(t, fmt.roles["compound"], image, np.nan)
    cells = truth.expected()
    cells.loc[cells["image"] == image, "compound"] = ""
    return Expect(cells=cells)


def _empty_field_key(fmt: Format, t: Tables, truth: Truth, role: str) -> Expect:
    """A field whose well (or site) is empty: its cells would be profiled in no well, or
    in a well named "nan"; refused, naming the column and where."""
    image = target(truth)
    set_image_column(t, fmt.roles[role], image, np.nan)
    return Expect(refused=(fmt.image_label.split(":")[0], META[role], "empty"))


def nan_well(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _empty_field_key(fmt, t, truth, "well")


def nan_site(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return _empty_field_key(fmt, t, truth, "site")


def mixed_key_types(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """A numeric key written 3, "3.0" and 3.0 in turn (SQLite keeps each type; a CSV, text;
    Parquet, a text column): the same image for each."""
    key = fmt.roles["num_key"]
    spell = (lambda v: v, lambda v: f"{v}.0", float)
    if fmt.name == "parquet":
        t.post = lambda table: table.assign(**{key: [
            f"{v}.0" if i % 2 else str(v) for i, v in enumerate(table[key])]})
        return Expect()
    table = key_table(t)
    table[key] = [spell[i % 3](int(v)) for i, v in enumerate(table[key])]
    return Expect()


def swapped_planes(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """One field's file stores its planes in another order, and says so: in its own
    ``Frame_`` columns (multi-page TIFF) or its OME channel names."""
    image = target(truth)
    (path,) = fmt.privatize(t, image)
    order = [2, 0, 1]
    rewrite_pixels(fmt, path, lambda s: s[order], names=tuple(CH[k] for k in order))
    if fmt.pixels == "pages":
        rows = t.images["_image"] == image
        for plane, k in enumerate(order):
            t.images.loc[rows, f"Frame_{CH[k]}"] = plane
    return Expect()


def swapped_planes_unsaid(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The ``Frame_`` columns say DNA is plane 0 of every file; one file's own OME names
    say its plane 0 is Actin. Cropping it by the table would swap DNA and Actin in its
    cells: its field must fail, logged (or the run be refused), naming the file."""
    image = target(truth)
    (path,) = fmt.privatize(t, image)
    write_ome(path, truth.pixels[image][::-1], CH[::-1])
    return Expect(refused=(path.name, "Actin", "Frame_"), logged=path.name,
                  cells=without(truth.expected(), image))


def eight_bit_channel(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """One channel's file of one field is 8-bit, the field's others 16-bit: its cells
    would hold that channel on a 256 times smaller scale than every other cell's."""
    image = target(truth)
    path = fmt.privatize(t, image)[2]
    rewrite_pixels(fmt, path, lambda s: (s // 256).astype(np.uint8))
    return Expect(refused=(path.name, "8-bit"), logged=path.name,
                  cells=without(truth.expected(), image))


def _depth(fmt: Format, t: Tables, truth: Truth, image: int) -> tuple[Path, dict]:
    files = fmt.privatize(t, image)
    for path in files[:1] if fmt.pixels == "crop" else files:
        rewrite_pixels(fmt, path, lambda s: (s // 256).astype(np.uint8))
    return files[0], {image: (truth.pixels[image] // 256).astype(np.uint8)}


def eight_bit_field(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """One field (one crop) 8-bit among 16-bit ones: its cells would be on a 256 times
    smaller scale."""
    path, _ = _depth(fmt, t, truth, target(truth))
    if fmt.pixels == "crop":
        return Expect(refused=(path.name, "8-bit", "16-bit", "one bit depth"))
    return Expect(cells=without(truth.expected(), target(truth)),
                  issues={"mixed_bit_depth": 1})


def eight_bit_first_field(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The first field 8-bit: it sets the screen's type, every other field is logged."""
    _, pixels = _depth(fmt, t, truth, 1)
    cells = truth.expected()
    return Expect(cells=cells[cells["image"] == 1].reset_index(drop=True), pixels=pixels,
                  issues={"mixed_bit_depth": len(truth.fields) - 1})


def missing_image_file(fmt: Format, t: Tables, truth: Truth) -> Expect:
    image, obj = a_cell(truth)
    files = fmt.privatize(t, image)
    if fmt.pixels == "crop":
        gone = t.dir / "cells" / t.images.at[object_row(t, image, obj), "crop_path"]
        gone.unlink()
        return Expect(cells=without(truth.expected(), image, obj), issues={"missing_image": 1})
    files[0].unlink()
    return Expect(cells=without(truth.expected(), image), issues={"missing_image": 1})


def missing_image_row(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The image table lost a field's row; its objects are still listed."""
    image = target(truth)
    t.images = t.images[t.images["_image"] != image].reset_index(drop=True)
    n = int((truth.cells["image"] == image).sum())
    if fmt.name == "parquet":  # its objects' rows name no files, plate or well
        return Expect(refused=(fmt.image_label, "Metadata_Plate is empty in ImageNumber"))
    return Expect(cells=without(truth.expected(), image), issues={"unknown_image": n})


def _interrupted(inputs: Inputs, out: Path) -> None:
    """Run the case's crop and stop it once two fields are committed, as Ctrl-C would."""
    with pytest.raises(Stop):
        inputs.call(out, stop_after(2))
    assert Path(f"{out}.partial").exists()


def kill_and_rerun(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return Expect(before=_interrupted, said=("2 resumed",))


def kill_edit_table_rerun(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The first field's compound corrected between the kill and the rerun."""
    def before(inputs: Inputs, out: Path) -> None:
        _interrupted(inputs, out)
        set_image_column(t, fmt.roles["compound"], 1, "corrected")
        fmt.write(t)

    cells = truth.expected()
    cells.loc[cells["image"] == 1, "compound"] = "corrected"
    return Expect(cells=cells, before=before, said=("starting over", "changed"))


def kill_edit_images_rerun(fmt: Format, t: Tables, truth: Truth) -> Expect:
    """The first field's images (crops) corrected between the kill and the rerun."""
    files = fmt.privatize(t, 1)

    def before(inputs: Inputs, out: Path) -> None:
        _interrupted(inputs, out)
        for path in files:
            rewrite_pixels(fmt, path, lambda s: s + 7)

    return Expect(pixels={1: truth.pixels[1] + 7}, before=before,
                  said=("starting over", "changed"))


def concurrent_run(fmt: Format, t: Tables, truth: Truth) -> Expect:
    return Expect(concurrent=True)


DAMAGES: dict[str, tuple[Callable[[Format, Tables, Truth], Expect], tuple[str, ...]]] = {
    "drop_centre": (drop_centre, OBJECT_FORMATS),
    "drop_object_key": (drop_object_key, OBJECT_FORMATS),
    "drop_path": (drop_path, ALL),
    "lower_case_centre": (lower_case_centre, ALL),
    "lower_case_metadata": (lower_case_metadata, ALL),
    "prefix_variant": (prefix_variant, ALL),
    "twin_column_same": (twin_column_same, ALL),
    "twin_column_differs": (twin_column_differs, ALL),
    "repeated_image_row": (repeated_image_row, ALL),
    "repeated_object_row": (repeated_object_row, OBJECT_FORMATS),
    "nan_object_key": (nan_object_key, ALL),
    "inf_object_key": (inf_object_key, ALL),
    "nan_centre": (nan_centre, OBJECT_FORMATS),
    "inf_centre": (inf_centre, OBJECT_FORMATS),
    "nan_compound": (nan_compound, ALL),
    "nan_well": (nan_well, ALL),
    "nan_site": (nan_site, ALL),
    "mixed_key_types": (mixed_key_types, ALL),
    "swapped_planes": (swapped_planes, ("pages", "ome")),
    "swapped_planes_unsaid": (swapped_planes_unsaid, ("pages",)),
    "eight_bit_channel": (eight_bit_channel, ("cp_csv", "jump", "sqlite", "parquet")),
    "eight_bit_field": (eight_bit_field, ALL),
    "eight_bit_first_field": (eight_bit_first_field, TABLE_FORMATS),
    "missing_image_file": (missing_image_file, ALL),
    "missing_image_row": (missing_image_row, OBJECT_FORMATS),
    "kill_and_rerun": (kill_and_rerun, ALL),
    "kill_edit_table_rerun": (kill_edit_table_rerun, ALL),
    "kill_edit_images_rerun": (kill_edit_images_rerun, ALL),
    "concurrent_run": (concurrent_run, ALL),
}
KNOWN: dict[tuple[str, str], str] = {}
"""(format, damage) cases that fail for a bug outside the files this suite may fix."""


def _cases() -> list:
    cases = []
    for damage, (_, formats) in DAMAGES.items():
        for fmt in formats:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[fmt, damage])] \
                if (fmt, damage) in KNOWN else []
            cases.append(pytest.param(fmt, damage, id=f"{fmt}-{damage}", marks=marks))
    return cases


# --- the check every exit-0 case ends in -------------------------------------------------------

def assert_store_matches_truth(out: Path, truth: Truth, expect_cells: pd.DataFrame, *,
                               channels: tuple[str, ...] = CH, centres: bool = True,
                               pixels: dict[int, np.ndarray] | None = None) -> None:
    """The store holds exactly ``expect_cells`` (rows of :meth:`Truth.expected`, edited as
    the damage edits them), each once: same plate, well, site, object, compound and
    concentration, its centre (where the input has centres), and crops equal to its field's
    window (``pixels`` overrides fields the damage changed), channel by channel."""
    assert store.read_info(out).channels == channels
    cells, crops = store.read_cells(out), store.read_crops(out)
    got = pd.DataFrame({k: cells[c] for k, c in META.items()})
    got["object"] = cells["ObjectNumber"].to_numpy()
    assert pd.api.types.is_integer_dtype(got["site"]), got["site"].head()
    keys = ["plate", "well", "site", "object"]
    assert not got.duplicated(keys).any(), got[got.duplicated(keys, keep=False)]
    want = expect_cells.assign(row=-1)
    both = got.assign(row=np.arange(len(got))).merge(want.drop(columns="row"), on=keys,
                                                     how="outer", indicator=True,
                                                     suffixes=("", "_truth"))
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"][keys + ["_merge"]]
    assert (both["compound"].fillna("") == both["compound_truth"].fillna("")).all()
    np.testing.assert_array_equal(both["concentration"], both["concentration_truth"])
    rows = both["row"].to_numpy()
    if centres:
        np.testing.assert_allclose(cells["Location_Center_X"].to_numpy()[rows], both["x"])
        np.testing.assert_allclose(cells["Location_Center_Y"].to_numpy()[rows], both["y"])
    order = [TRUTH_CHANNEL[c] for c in channels]
    for r, image, x, y in zip(rows, both["image"], both["x"], both["y"]):
        np.testing.assert_array_equal(crops[r], truth.window(image, x, y, pixels)[order],
                                      err_msg=f"cell {got.loc[r].to_dict()}")


def _issues(out: Path) -> dict[str, int]:
    issues = store.read_issues(out)
    return {str(k): int(v) for k, v in issues["kind"].value_counts().items()}


def _refused(res, words: tuple[str, ...], out: Path) -> None:
    one_line_error(res, *words)
    assert "cellprof --debug" not in res.output, res.output  # an error cellprof foresaw
    assert not out.exists()  # refused before writing, or an empty store not kept


@pytest.mark.parametrize("fmt_name, damage", _cases())
def test_hostile_matrix(truth: Truth, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                        fmt_name: str, damage: str) -> None:
    fmt = FORMATS[fmt_name]
    t = fmt.frames(truth, tmp_path)
    expect = DAMAGES[damage][0](fmt, t, truth)
    inputs = fmt.write(t)
    out = tmp_path / "c.h5"
    args = ["crop", *inputs.args, "--size", str(SIZE), "--out", str(out)]
    if expect.before is not None:
        expect.before(inputs, out)
    if expect.concurrent:  # the second run, started from the first's progress callback,
        second = []        # opens the output's lock anew: flock refuses it as another process

        def progress(stage: str, done: int, total: int) -> None:
            if done == 2 and not second:
                second.append(runner.invoke(app, args))

        inputs.call(out, progress)
        one_line_error(second[0], str(out), "another cellprof process")
        res = None
    else:
        with caplog.at_level(logging.WARNING, logger="cellprof"):
            res = runner.invoke(app, args)
        if expect.refused and not (expect.logged and res.exit_code == 0):
            _refused(res, expect.refused, out)
            return
        assert res.exit_code == 0, res.output
    cells = truth.expected() if expect.cells is None else expect.cells
    assert_store_matches_truth(out, truth, cells, channels=fmt.channels,
                               centres=fmt.pixels != "crop", pixels=expect.pixels)
    if expect.logged:
        reasons = store.read_issues(out)["reason"]
        assert reasons.str.contains(expect.logged, regex=False).any(), reasons.tolist()
    else:
        assert _issues(out) == expect.issues
    said = " ".join(((res.output if res else "") + caplog.text).split())
    for words in expect.said:
        assert words in said, said


def test_the_check_catches_wrong_stores(truth: Truth, tmp_path: Path) -> None:
    """The check above fails on a store whose cells differ from the truth in any one of
    the ways it looks at: a missing cell, a compound, a centre, a crop's pixels."""
    fmt = FORMATS["cp_csv"]
    inputs = fmt.write(fmt.frames(truth, tmp_path))
    out = tmp_path / "c.h5"
    inputs.call(out, None)
    cells = truth.expected()
    assert_store_matches_truth(out, truth, cells)
    image, obj = a_cell(truth)
    cell = (cells["image"] == image) & (cells["object"] == obj)
    for wrong in (without(cells, image, obj), cells.assign(
            compound=cells["compound"].where(~cell, "other")),
            cells.assign(x=cells["x"].where(~cell, cells["x"] + 1))):
        with pytest.raises(AssertionError):
            assert_store_matches_truth(out, truth, wrong)
    with pytest.raises(AssertionError):
        assert_store_matches_truth(out, truth, cells, pixels={image: truth.pixels[image] + 1})
    with pytest.raises(AssertionError):
        assert_store_matches_truth(out, truth, cells, channels=CH[::-1])
