"""The pictures of any lab's screen: a screen without treatment labels still gets its
reconstructions and samples, every figure of `cellprof show` is drawn on the real input cells'
intensity scale, and the training pictures say which cells they show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cellprof.report.plots as plots
import cellprof.report.show as show_module
from cellprof.cli import app
from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats import store
from cellprof.learn.config import DataConfig, ModelConfig, TrainConfig
from cellprof.learn.embed import embed
from cellprof.learn.runfolder import TrainingImages
from cellprof.learn.train import train
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.prepare.tables import join_moa, read_moa_table
from cellprof.report.plots import composite, intensity_scale, save_training_images
from cellprof.report.show import ShowConfig, show

runner = CliRunner()
TINY = dict(latent_dim=8, enc_filters=8, dec_filters=8, disc_channels=(8, 8, 8, 8, 1),
            ramp_start=2, ramp_length=2)
FAST = dict(batch_size=8, log_every=1, val_every=1000, image_every=1000,
            checkpoint_every=1000)

pytestmark = pytest.mark.usefixtures("one_thread")


def _crop_without(screen: Path, out: Path, columns: tuple[str, ...]) -> Path:
    """``screen`` cropped from its image table without ``columns``, as a lab whose table
    names no compound (or no dose) would crop it."""
    images = pd.read_csv(screen / "Image.csv")
    table = out.with_suffix(".csv")
    images.drop(columns=list(columns)).to_csv(table, index=False)
    crop_screen(table, out, objects=screen / "Nuclei.csv", config=CropConfig(size=36))
    return out


@pytest.fixture(scope="module")
def unlabelled(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, Path]:
    """(model.pt, crops.h5): the tiny model and its screen cropped without compounds."""
    ckpt, crops = tiny_model
    root = tmp_path_factory.mktemp("unlabelled")
    bare = _crop_without(crops.parent / "screen", root / "bare.h5",
                         ("Metadata_Compound", "Metadata_Concentration"))
    cells = store.read_cells(bare)
    assert (cells["Metadata_Compound"].fillna("") == "").all()  # what the test is about
    return ckpt, bare


class _Drawn:
    """Every grid a figure function draws: file name, rows of crops, and the scale."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        real = plots.save_grid

        def record(path: Any, rows: Any, channels: Any, **kwargs: Any) -> Path:
            self.calls[Path(path).name] = {"rows": [np.asarray(r) for r in rows], **kwargs}
            return real(path, rows, channels, **kwargs)

        monkeypatch.setattr(plots, "save_grid", record)  # save_strip and the training hook
        monkeypatch.setattr(show_module, "save_grid", record)


# --- 6. a screen without labels ----------------------------------------------------------


def test_show_without_compounds_draws_reconstructions_and_samples(unlabelled, tmp_path: Path
                                                                  ) -> None:
    ckpt, bare = unlabelled
    out = tmp_path / "fig"
    out.mkdir()
    (out / "typical_cells.png").write_bytes(b"left by an earlier run of a labelled screen")
    res = show(ckpt, bare, out, config=ShowConfig(cells_per_treatment=4))
    assert res.reconstruction_pages == (out / "reconstructions.png",)
    assert res.samples == out / "samples.png"
    for path in (*res.reconstruction_pages, res.samples):
        assert path.stat().st_size > 1000
    assert res.typical_cells is None and res.interpolation is None and res.treatments == []
    assert not (out / "typical_cells.png").exists()  # a stale figure would mislead
    # one line naming what is missing, where it was looked for, and how to point elsewhere
    (note,) = res.notes
    assert "\n" not in note and str(bare) in note
    for words in ("typical cells", "interpolation", "matching", "Metadata_Compound",
                  "--compound-column", "--control"):
        assert words in note, words


def test_show_without_compounds_groups_the_reconstructions_by_plate(
        unlabelled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, bare = unlabelled
    drawn = _Drawn(monkeypatch)
    show(ckpt, bare, tmp_path / "fig", config=ShowConfig(cells_per_treatment=3))
    plates = sorted(store.read_cells(bare)["Metadata_Plate"].unique())
    recon = drawn.calls["reconstructions.png"]
    assert recon["row_labels"] == [a for p in plates for a in (f"plate {p}", "reconstruction")]
    assert [len(r) for r in recon["rows"]] == [3] * 2 * len(plates)
    assert [len(r) for r in drawn.calls["samples.png"]["rows"]] == [8, 8]


def test_cli_show_without_compounds_prints_the_note(unlabelled, tmp_path: Path) -> None:
    ckpt, bare = unlabelled
    res = runner.invoke(app, ["show", str(ckpt), str(bare), "-o", str(tmp_path / "fig"),
                              "--cells", "2"])
    assert res.exit_code == 0, res.output
    assert "note: typical cells, interpolation and matching need treatment labels" \
        in res.output
    assert (tmp_path / "fig" / "samples.png").exists()


def test_treatment_means_without_compounds_say_what_they_need(unlabelled) -> None:
    ckpt, bare = unlabelled
    with pytest.raises(InputError, match="need treatment labels.*Metadata_Compound"):
        show_module.treatment_means(ckpt, bare)


def test_match_without_compounds_names_the_column_and_the_option(unlabelled, tmp_path: Path
                                                                 ) -> None:
    ckpt, bare = unlabelled
    profiles = embed(ckpt, bare, tmp_path / "profiles.h5").out
    moa = tmp_path / "moa.csv"
    pd.DataFrame({"compound": ["DMSO", "taxol"], "concentration": [0.0, 0.3],
                  "moa": ["DMSO", "Microtubule stabilizers"]}).to_csv(moa, index=False)
    for extra in ([], ["--moa", str(moa)]):
        res = runner.invoke(app, ["match", str(profiles), "-o", str(tmp_path / "rep"), *extra])
        assert res.exit_code == 1, res.output
        line = res.output.strip()
        assert line.startswith("error: ") and "\n" not in line, line  # one line
        flat = " ".join(line.split())
        assert "matching needs a compound column" in flat, flat
        assert "Metadata_Compound" in flat and "--compound-column" in flat, flat
        assert "pass a moa table" not in flat  # --moa cannot help without compounds
        assert "np.float64" not in flat and "nan" not in flat.lower().split(), flat
    assert not (tmp_path / "rep" / "metrics.json").exists()


def test_a_moa_table_that_matches_nothing_shows_plain_numbers(tmp_path: Path) -> None:
    fields = pd.DataFrame({"Metadata_Compound": ["taxol", "DMSO"],
                           "Metadata_Concentration": [np.float64(0.3), np.float64(np.nan)]})
    path = tmp_path / "moa.csv"
    pd.DataFrame({"compound": ["aspirin"], "concentration": [1.0], "moa": ["pain"]}).to_csv(
        path, index=False)
    moa = read_moa_table(path)
    with pytest.raises(InputError, match=r"the image table has taxol at 0\.3\)") as err:
        join_moa(fields, moa, path)
    assert "np.float64" not in str(err.value)
    with pytest.raises(InputError, match=r"has DMSO at n/a\)"):
        join_moa(fields.iloc[::-1], moa, path)


# --- 7. one intensity scale, the inputs' ---------------------------------------------------


def test_every_figure_is_drawn_on_the_input_cells_scale(
        tiny_model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """typical_cells.png and interpolation.png hold decoded means, far flatter than cells:
    drawn on their own range they exaggerate. All figures share the scale of the real input
    cells shown in reconstructions.png: their 0.5-99.8th percentile per channel."""
    ckpt, crops = tiny_model
    drawn = _Drawn(monkeypatch)
    res = show(ckpt, crops, tmp_path / "fig", config=ShowConfig(cells_per_treatment=3))
    pages = [p.name for p in res.reconstruction_pages]
    names = [*pages, "samples.png", "typical_cells.png", "interpolation.png"]
    assert sorted(drawn.calls) == sorted(names)
    inputs = np.concatenate([r for p in pages for r in drawn.calls[p]["rows"][::2]])
    inputs = np.unique(inputs.reshape(len(inputs), -1), axis=0).reshape(-1, *inputs.shape[1:])
    assert 2 * len(res.treatments) < len(inputs) <= 3 * len(res.treatments)  # each cell once
    want_low = np.percentile(inputs, 0.5, axis=(0, 2, 3))
    want_high = np.percentile(inputs, 99.8, axis=(0, 2, 3))
    for name in names:
        scale = drawn.calls[name]["scale"]
        assert scale == res.scale, name
        np.testing.assert_allclose(scale.low, want_low, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(scale.high, want_high, rtol=1e-5, err_msg=name)
    assert "percentile of" in res.scale.source and "input cells" in res.scale.source
    # what the decoded means would have been stretched over, had they their own range
    typical = np.concatenate(drawn.calls["typical_cells.png"]["rows"])
    own = intensity_scale(typical)
    assert not np.allclose(own.high, res.scale.high)


def test_a_scale_maps_its_range_to_black_and_full_colour() -> None:
    """composite() with a scale draws lo black and hi at full colour whatever the batch
    holds: a dim decoded cell stays dim beside the real ones."""
    dim = np.full((1, 1, 4, 4), 0.05, np.float32)
    dim[0, 0, 0, 0] = 0.1
    scale = plots.IntensityScale((0.0,), (1.0,), "test")
    rgb = composite(dim, ["DNA"], scale=scale)
    np.testing.assert_allclose(rgb[0, 1, 1], 0.05, rtol=1e-6)
    np.testing.assert_allclose(rgb[0, 0, 0], 0.1, rtol=1e-6)
    assert composite(dim, ["DNA"]).max() == pytest.approx(1.0)  # its own range: stretched
    s = intensity_scale(np.arange(200.0).reshape(2, 1, 10, 10), (0, 100), what="cells")
    assert (s.low, s.high) == ((0.0,), (199.0,))
    assert s.source == "0–100th percentile of 2 cells"
    assert s.describe(["DNA"]) == ["DNA 0–199"]
    with pytest.raises(ValueError, match="one range per channel"):
        composite(np.zeros((1, 2, 4, 4)), ["DNA", "Actin"], scale=scale)


def test_no_at_nan_in_labels_when_concentrations_are_missing(
        tiny_model: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, crops = tiny_model
    doseless = _crop_without(crops.parent / "screen", tmp_path / "doseless.h5",
                             ("Metadata_Concentration",))
    drawn = _Drawn(monkeypatch)
    res = show(ckpt, doseless, tmp_path / "fig", config=ShowConfig(cells_per_treatment=2))
    compounds = set(store.read_cells(doseless)["Metadata_Compound"]) - {"DMSO"}
    assert res.treatments == ["DMSO", *sorted(compounds)]
    labels = [str(x) for call in drawn.calls.values()
              for x in (*(call.get("row_labels") or []), *(call.get("col_labels") or []),
                        call.get("title") or "")]
    assert not [x for x in labels if "nan" in x.lower().replace("nanoseconds", "")], labels
    assert "@" not in "".join(drawn.calls["typical_cells.png"]["row_labels"])


# --- 8. training: failed runs, labels, the preview ----------------------------------------


def test_a_train_that_fails_before_its_first_checkpoint_leaves_no_folder(
        synthetic_store: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a crop store")
    out = tmp_path / "runs" / "a"
    with pytest.raises(StoreError):
        train(junk, out, model_config=ModelConfig(**TINY), config=TrainConfig(steps=2, **FAST))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(InputError, match="--val-fraction"):  # a bad option
        train(synthetic_store, out, model_config=ModelConfig(**TINY),
              config=TrainConfig(steps=2, **FAST), data_config=DataConfig(val_fraction=0.99))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(synthetic_store, out, resume=True)
    assert not (tmp_path / "runs").exists()
    # a folder the user made stays, and holds nothing the failed run made
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(StoreError):
        train(junk, mine, model_config=ModelConfig(**TINY), config=TrainConfig(steps=2, **FAST))
    assert mine.is_dir() and not list(mine.iterdir())


def test_a_run_that_fails_after_starting_but_before_a_checkpoint_is_removed(
        synthetic_store: Path, tmp_path: Path) -> None:
    def broken(folder: Path, images: TrainingImages) -> None:
        raise RuntimeError("the picture hook broke")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="hook broke"):
        train(synthetic_store, out, model_config=ModelConfig(**TINY),
              config=TrainConfig(steps=3, **{**FAST, "image_every": 1}), pictures=broken)
    assert not out.exists()
    mine = tmp_path / "mine"  # a folder the user made: kept, without the failed run's files
    mine.mkdir()
    with pytest.raises(RuntimeError, match="hook broke"):
        train(synthetic_store, mine, model_config=ModelConfig(**TINY),
              config=TrainConfig(steps=3, **{**FAST, "image_every": 1}), pictures=broken)
    assert mine.is_dir() and not list(mine.iterdir())
    # after a checkpoint the run is kept: --resume continues it
    with pytest.raises(RuntimeError, match="hook broke"):
        train(synthetic_store, out, model_config=ModelConfig(**TINY),
              config=TrainConfig(steps=4, **{**FAST, "image_every": 3, "checkpoint_every": 2}),
              pictures=broken)
    assert (out / "checkpoints" / "last.pt").exists() and (out / "losses.csv").exists()


def _training_pictures(store_path: Path, out: Path, val_fraction: float,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[TrainingImages, _Drawn]:
    shown: list[TrainingImages] = []

    def keep(folder: Path, images: TrainingImages) -> None:
        shown.append(images)
        save_training_images(folder, images)

    drawn = _Drawn(monkeypatch)
    train(store_path, out, model_config=ModelConfig(**TINY),
          config=TrainConfig(steps=1, **{**FAST, "image_every": 1}),
          data_config=DataConfig(val_fraction=val_fraction), pictures=keep)
    return shown[-1], drawn


def test_without_held_out_cells_the_pictures_say_training_cells(
        synthetic_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, drawn = _training_pictures(synthetic_store, tmp_path / "all", 0.0, monkeypatch)
    assert images.cells == "training cells"
    assert drawn.calls["recon_0000001.png"]["row_labels"] == ["training cells",
                                                              "reconstruction"]
    images, drawn = _training_pictures(synthetic_store, tmp_path / "split", 0.2, monkeypatch)
    assert drawn.calls["recon_0000001.png"]["row_labels"] == ["held-out cells",
                                                              "reconstruction"]
    # the samples are drawn on the shown cells' range, as the reconstructions are
    recon, samples = drawn.calls["recon_0000001.png"], drawn.calls["samples_0000001.png"]
    assert samples["scale"] == recon["scale"] == intensity_scale(images.held_out,
                                                                 what="held-out cells")


@pytest.mark.parametrize("val_fraction", [0.0, 0.2])
def test_the_training_preview_spreads_its_cells_over_the_store(
        synthetic_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        val_fraction: float) -> None:
    """Neighbouring cells of one field overlap and look like duplicates: the 8 cells shown
    come from across the store, from different fields."""
    images, _ = _training_pictures(synthetic_store, tmp_path / "run", val_fraction,
                                   monkeypatch)
    cells = store.read_cells(synthetic_store)
    rows = np.asarray(images.rows)
    assert len(rows) == len(images.held_out) == 8
    fields = cells.iloc[rows]["ImageNumber"]
    assert fields.nunique() >= 6 and np.diff(rows).min() > 1, fields.tolist()
    assert rows.max() - rows.min() > len(cells) // 2  # from the whole store, not one corner
