"""End to end on the synthetic screen, as `cellprof demo` runs it, sized for a test."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cellprof.errors import InputError
from cellprof.example.demo import DemoConfig, run_demo
from cellprof.example.synth import SynthConfig
from cellprof.formats.store import read_info
from cellprof.learn.model import ModelConfig

SMALL = DemoConfig(synth=SynthConfig(field_size=224, cells_per_field=20, sites=1),
                   crop_size=48, steps=120, batch_size=16,
                   model=ModelConfig(latent_dim=32, enc_filters=16, dec_filters=16))


def test_synth_crop_train_embed_match_show_beats_chance(tmp_path: Path) -> None:
    """The pipeline's profiles match MOAs across compounds well above chance (4 MOAs,
    2 compounds x 2 concentrations each: a random neighbour is right 2/14 of the time)."""
    torch.set_num_threads(2)
    res = run_demo(tmp_path / "demo", config=SMALL)
    metrics = json.loads((res.report.out_dir / "metrics.json").read_text())
    assert metrics["n_treatments"] == 16 and metrics["n_moas"] == 4
    chance = res.chance_nsc
    assert chance == pytest.approx(2 / 14)
    print(f"NSC {res.report.nsc:.3f} NSCB {res.report.nscb:.3f} chance {chance:.3f}")
    assert res.report.nsc >= chance + 0.35
    for png in (res.figures.typical_cells, res.figures.interpolation,
                res.report.paths["confusion"]):
        assert png.stat().st_size > 5_000
    assert (res.outdir / "run" / "model.pt").exists()
    assert res.page == res.report.out_dir / "report.html" and res.page.stat().st_size > 50_000
    page = res.page.read_text()
    assert f"{metrics['nsc']:.3f}"[:4] in page or f"{metrics['nsc']:.0%}" in page
    # The untrained model's profiles, matched the same way, are what training is judged by,
    # and the page sets them beside the trained model's.
    assert "Learned against untrained model" in page
    base = json.loads((res.report.out_dir / "compare" / "metrics.json").read_text())
    assert res.baseline is not None and base["nsc"] == pytest.approx(res.baseline.nsc)
    assert base["n_treatments"] == 16
    assert base["config"]["normalize_at"] == metrics["config"]["normalize_at"] == "cell"
    untrained = torch.load(res.outdir / "baseline" / "untrained.pt", weights_only=True)
    trained = torch.load(res.outdir / "run" / "model.pt", weights_only=True)
    assert untrained["step"] == 0 and trained["step"] == SMALL.steps
    assert untrained["model_config"]["image_size"] == SMALL.crop_size
    # ... and its reconstructions of the run's held-out fields are worse than the trained ones.
    assert res.baseline_error["val_mse"] > 2 * res.training.val["val_mse"] > 0
    # The page shows both models' reconstructions of those held-out cells, with the errors
    # the demo prints.
    part = page.split('<section id="compare">')[1].split("</section>")[0]
    assert "The same held-out cells through both models" in part
    assert [float(v) for v in re.findall(r"<b>([0-9.]+)</b>", part)] == pytest.approx(
        [res.training.val["val_mse"], res.baseline_error["val_mse"]], abs=1e-4)


def test_demo_without_baseline_has_no_untrained_model(tmp_path: Path) -> None:
    """`cellprof demo --no-baseline`: no untrained model embedded, matched or on the page."""
    torch.set_num_threads(2)
    res = run_demo(tmp_path / "demo", config=replace(SMALL, steps=8, baseline=False))
    assert res.baseline is None and res.baseline_error is None
    assert not (res.outdir / "baseline").exists()
    assert not (res.report.out_dir / "compare").exists()
    assert "untrained" not in res.page.read_text()


def test_demo_crops_at_the_size_crop_size_auto_picks_for_its_screen(tmp_path: Path) -> None:
    """The demo's 44 px are two nucleus diameters of its screen: what `crop --size auto`
    measures, as 68 px are for BBBC021's nuclei."""
    from cellprof.example.config import DEMO_SCREEN
    from cellprof.example.synth import synthesize
    from cellprof.prepare.crop import CropConfig, crop_screen
    from cellprof.prepare.segment import SegmentConfig

    screen = synthesize(tmp_path / "screen", replace(DEMO_SCREEN, plates_per_batch=1, sites=1))
    crops = crop_screen(screen.image_table, tmp_path / "crops.h5",
                        config=CropConfig(size="auto", segment=SegmentConfig()))
    assert read_info(crops.out).crop_size == DemoConfig().crop_size == 44


def test_demo_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "results.txt").write_text("precious")
    with pytest.raises(InputError, match="--force"):
        run_demo(tmp_path / "demo", config=SMALL)
    assert (tmp_path / "demo" / "results.txt").read_text() == "precious"
