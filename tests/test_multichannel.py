"""Multi-channel files without ``Frame_`` columns: named by OME metadata or ``--channels``,
never guessed, never 0 cells with exit 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import CHANNELS, disc_value, write_tiny_screen
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import InputError
from cellprof.formats import store
from cellprof.prepare.crop import CropConfig, crop_screen

runner = CliRunner()


def _one_file_column(root: Path, ome_names: list[str] | None = None) -> Path:
    """The tiny screen as (3, H, W) TIFFs (planes DNA, Tubulin, Actin) named by one
    ``FileName_Image`` column and no ``Frame_`` columns; OME-TIFFs when ``ome_names``."""
    tiny = write_tiny_screen(root, multichannel=True)
    img = tiny.images
    if ome_names is not None:
        for path in {Path(p) / f for p, f in zip(img["PathName_DNA"], img["FileName_DNA"],
                                                strict=True)}:
            data = tifffile.imread(path)
            tifffile.imwrite(path, data, photometric="minisblack", ome=True,
                             metadata={"axes": "CYX", "Channel": {"Name": ome_names}})
    table = img.drop(columns=[c for c in img.columns if c.startswith(
        ("Frame_", "FileName_", "PathName_"))]).assign(
        FileName_Image=img["FileName_DNA"], PathName_Image=img["PathName_DNA"])
    table.to_csv(tiny.image_table, index=False)
    return tiny.image_table


def _centres_say_channels(out: Path, channels: tuple[str, ...]) -> None:
    crops, cells = store.read_crops(out), store.read_cells(out)
    assert len(cells) == 12
    for k, ch in enumerate(channels):
        truth = CHANNELS.index(ch)
        assert crops[:, k, 8, 8].tolist() == [disc_value(truth, j) for j in cells["ObjectNumber"]]


def test_unnamed_stack_needs_channel_names(tmp_path: Path) -> None:
    table = _one_file_column(tmp_path / "s")
    objects = table.parent / "Nuclei.csv"
    with pytest.raises(InputError, match=r"holds 3 planes .* --channels \(3 names\)"):
        crop_screen(table, tmp_path / "c.h5", objects=objects, config=CropConfig(size=16))
    res = runner.invoke(app, ["crop", str(table), "--objects", str(objects), "--size", "16",
                              "--out", str(tmp_path / "c.h5")])
    assert res.exit_code == 1 and "--channels" in res.output
    assert not (tmp_path / "c.h5").exists()


def test_channels_option_names_the_planes_in_file_order(tmp_path: Path) -> None:
    table = _one_file_column(tmp_path / "s")
    out = tmp_path / "c.h5"
    res = runner.invoke(app, ["crop", str(table), "--objects", str(table.parent / "Nuclei.csv"),
                              "--channels", "DNA,Tubulin,Actin", "--size", "16", "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.count("took them in file order as DNA, Tubulin, Actin") == 1
    assert store.read_info(out).channels == CHANNELS
    _centres_say_channels(out, CHANNELS)


def test_ome_channel_names_are_used(tmp_path: Path) -> None:
    table = _one_file_column(tmp_path / "s", ome_names=list(CHANNELS))
    out = tmp_path / "c.h5"
    summary = crop_screen(table, out, objects=table.parent / "Nuclei.csv",
                          config=CropConfig(size=16))
    assert store.read_info(out).channels == CHANNELS
    assert any("OME metadata" in n for n in summary.notes)
    _centres_say_channels(out, CHANNELS)
    # and --channels then picks among those names, in its own order
    crop_screen(table, tmp_path / "two.h5", objects=table.parent / "Nuclei.csv",
                config=CropConfig(size=16, channels=("Actin", "DNA")))
    _centres_say_channels(tmp_path / "two.h5", ("Actin", "DNA"))


def test_channel_columns_sharing_a_stack_match_ome_names_or_refuse(tmp_path: Path) -> None:
    tiny = write_tiny_screen(tmp_path / "s", multichannel=True)
    no_frames = tiny.images.drop(columns=[c for c in tiny.images.columns
                                          if c.startswith("Frame_")])
    no_frames.to_csv(tiny.image_table, index=False)
    with pytest.raises(InputError, match="add Frame_<channel>"):
        crop_screen(tiny.image_table, tmp_path / "c.h5", objects=tiny.objects,
                    config=CropConfig(size=16))
    for path in set(tiny.images["PathName_DNA"] + "/" + tiny.images["FileName_DNA"]):
        tifffile.imwrite(path, tifffile.imread(path), photometric="minisblack", ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)}})
    # the table lists the channels in another order than the file holds them
    no_frames[["ImageNumber", "FileName_Actin", "PathName_Actin", "FileName_DNA",
               "PathName_DNA", "Metadata_Plate", "Metadata_Well"]].to_csv(
        tiny.image_table, index=False)
    out = tmp_path / "c.h5"
    crop_screen(tiny.image_table, out, objects=tiny.objects, config=CropConfig(size=16))
    assert store.read_info(out).channels == ("Actin", "DNA")
    _centres_say_channels(out, ("Actin", "DNA"))
    assert isinstance(pd.read_csv(tiny.image_table), pd.DataFrame)
    assert np.all(store.read_fields(out)["Status"] == "ok")
