"""Reading a field into a kept buffer gives what the general reader gives, for every kind
of image file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from cellprof.errors import ImageError
from cellprof.prepare.fieldwork import FieldBuffer, FieldTask, load_field, process_field

RNG = np.random.default_rng(7)


def _task(files: list[tuple[str, Path, int | None]],
          expected: tuple[int, int] | None = None) -> FieldTask:
    return FieldTask(key="1", image_number=1, row=2, meta={}, files=files,
                     table_file="Image.csv", expected_shape=expected)


def _planes(dtype: type, n: int = 3, shape: tuple[int, int] = (40, 56)) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.random((n, *shape)).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=(n, *shape)).astype(dtype)


def _one_file_per_channel(folder: Path, planes: np.ndarray, **kwargs) -> FieldTask:
    files = []
    for k, plane in enumerate(planes):
        path = folder / f"c{k}.tif"
        tifffile.imwrite(path, plane, **kwargs)
        files.append((f"C{k}", path, None))
    return _task(files)


FLAVOURS = {
    "16-bit zlib": (np.uint16, {"compression": "zlib"}),
    "8-bit": (np.uint8, {}),
    "float32": (np.float32, {}),
    "16-bit LZW, horizontal predictor": (np.uint16, {"compression": "lzw",
                                                      "predictor": True}),
    "16-bit zstd, tiled": (np.uint16, {"compression": "zstd", "tile": (16, 16)}),
    "big-endian 16-bit": (np.uint16, {"byteorder": ">"}),
    "OME-TIFF plane": (np.uint16, {"ome": True}),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_buffered_reading_equals_the_general_reader(tmp_path: Path, flavour: str) -> None:
    dtype, kwargs = FLAVOURS[flavour]
    planes = _planes(dtype)
    task = _one_file_per_channel(tmp_path, planes, **kwargs)
    buffer = FieldBuffer()
    got = load_field(task, buffer)
    assert got is buffer.get(got.shape, got.dtype), "decoded into the buffer"
    ref = load_field(task)
    np.testing.assert_array_equal(got, planes)
    np.testing.assert_array_equal(ref, planes)
    assert got.dtype == ref.dtype


def test_files_the_buffer_cannot_take_are_read_as_before(tmp_path: Path) -> None:
    """A channel stack with Frame_ numbers, interleaved RGB and PNG go through the general
    reader (the buffer path declines them), with the same result."""
    stack = _planes(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    rgb = _planes(np.uint8, 3).transpose(1, 2, 0).copy()
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    imsave(tmp_path / "a.png", rgb[..., 0], check_contrast=False)
    tasks = [
        _task([(c, tmp_path / "stack.tif", k) for k, c in enumerate("ABC")]),
        _task([(c, tmp_path / "rgb.tif", k) for k, c in enumerate("RGB")]),
        _task([("P", tmp_path / "a.png", None)]),
    ]
    expected = [stack, rgb.transpose(2, 0, 1), rgb[None, ..., 0]]
    buffer = FieldBuffer()
    for task, want in zip(tasks, expected, strict=True):
        np.testing.assert_array_equal(load_field(task, buffer), want)


def test_bad_fields_fail_with_the_general_readers_message(tmp_path: Path) -> None:
    planes = _planes(np.uint16)
    good = _one_file_per_channel(tmp_path, planes)
    tifffile.imwrite(tmp_path / "small.tif", planes[0, :30])
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    cases = {
        "missing": _task([*good.files[:2], ("X", tmp_path / "nope.tif", None)]),
        "broken": _task([*good.files[:2], ("X", tmp_path / "broken.tif", None)]),
        "sizes": _task([*good.files[:2], ("X", tmp_path / "small.tif", None)]),
        "table size": _task(good.files, expected=(41, 56)),
    }
    for name, task in cases.items():
        with pytest.raises(ImageError) as plain:
            load_field(task)
        with pytest.raises(ImageError) as buffered:
            load_field(task, FieldBuffer())
        assert str(buffered.value) == str(plain.value), name
        assert type(buffered.value) is type(plain.value), name


def test_one_buffer_serves_every_field_and_crops_are_copies(tmp_path: Path) -> None:
    """The buffer is allocated once for fields of one size; what a field's result holds
    stays as it was after the next field is read into the same buffer."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _one_file_per_channel(tmp_path / "a", _planes(np.uint16))
    second = _one_file_per_channel(tmp_path / "b", _planes(np.uint16))
    for task in (first, second):
        task.centres = np.array([[20.0, 15.0], [30.0, 25.0]])
        task.object_numbers = np.array([1, 2])
        task.object_rows = np.array([2, 3])
    buffer = FieldBuffer()
    args = (16, False, "uint16", ["C0", "C1", "C2"], None, 0)
    one = process_field(first, *args, buffer=buffer)
    held = buffer.get((3, 40, 56), np.dtype(np.uint16))
    two = process_field(second, *args, buffer=buffer)
    assert buffer.get((3, 40, 56), np.dtype(np.uint16)) is held
    np.testing.assert_array_equal(one.crops, process_field(first, *args).crops)
    np.testing.assert_array_equal(two.crops, process_field(second, *args).crops)
    assert not np.shares_memory(two.crops, held)
    assert one.field == process_field(first, *args).field
