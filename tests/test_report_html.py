"""The report page (`cellprof match --html`): one self-contained file whose every section a
biologist can find, with and without a model, and bad inputs refused before anything is
written. What a browser makes of it is tests/test_report_browser.py's."""

from __future__ import annotations

import base64
import dataclasses
import io
import itertools
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cellprof.cli import app
from cellprof.errors import CheckpointError, InputError, StoreError
from cellprof.formats.checkpoint import load_checkpoint, save_checkpoint
from cellprof.formats.profiles import profile_table
from cellprof.learn.embed import EmbedConfig, embed
from cellprof.prepare.crop import CropConfig, crop_screen
from cellprof.profile.match import MatchConfig
from cellprof.profile.measure import measure
from cellprof.profile.retrieval import average_precision
from cellprof.report import html
from cellprof.report.config import ReportConfig
from cellprof.report.page import match_report
from cellprof.report.results import chance, expected_ap, nearest, read_match

FAST = MatchConfig(permutations=20)
SMALL = ReportConfig(cells_per_treatment=3, steps=3)


@dataclass(frozen=True)
class Screen:
    model: Path
    crops: Path
    learned: Path
    handcrafted: Path


@pytest.fixture(scope="module")
def screen(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Screen:
    """The tiny synthetic screen (DMSO + 16 treatments), a 3-step model, and both profiles."""
    model, crops = tiny_model
    folder = tmp_path_factory.mktemp("report-profiles")
    learned = embed(model, crops, folder / "profiles.h5",
                    config=EmbedConfig(precision="fp32", tta="none")).out
    return Screen(model, crops, learned, measure(crops, folder / "classic.h5").out)


class Page(HTMLParser):
    """What a reader of the file meets: ids, links, images, sections and their images."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.images: dict[str, list[str]] = {}  # treatment section id -> its images' alt
        self.metric: dict[str, str] = {}  # data-metric -> data-key
        self._section: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"])
        if tag == "section" and "treatment" in (a.get("class") or ""):
            self._section = a["id"]
            self.images[a["id"]] = []
        self.hrefs += [a["href"]] if a.get("href") else []
        self.srcs += [a["src"]] if a.get("src") else []
        if tag == "img" and self._section:
            self.images[self._section].append(a.get("alt") or "")
        if a.get("data-metric"):
            self.metric[a["data-metric"]] = a.get("data-key") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None


def _pngs(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def _self_contained(text: str, page: Page) -> None:
    """Nothing fetched: every image inline, every link inside the file, no stylesheet or
    script from elsewhere."""
    assert page.srcs and all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert not [h for h in page.hrefs if re.match(r"(?i)https?:|//", h)]
    assert not re.search(r"(?i)<(link|script)[^>]+(href|src)=\"(https?:)?//", text)
    assert all(h.startswith("#") for h in page.hrefs if h != "data:,")
    assert {h[1:] for h in page.hrefs if h.startswith("#")} <= set(page.ids)


@pytest.fixture(scope="module")
def with_model(screen: Screen, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("page") / "results"
    res = match_report(screen.learned, out, FAST, crops=screen.crops, model=screen.model,
                       compare=[screen.handcrafted], config=SMALL)
    return res, res.path.read_text(encoding="utf-8")


def test_page_with_a_model_has_every_section(with_model, screen: Screen) -> None:
    res, text = with_model
    page = Page(text)
    assert res.path == res.match.out_dir / "report.html" and res.size == len(text.encode())
    assert res.sections == ["profiled", "headline", "moa", "confusion", "map", "neighbours",
                            "training", "compare", "treatments"]
    _self_contained(text, page)
    # the headline is metrics.json's, to the last digit
    metrics = json.loads((res.match.out_dir / "metrics.json").read_text())
    assert float(page.metric["nsc"]) == metrics["nsc"]
    assert float(page.metric["map"]) == metrics["map"]
    assert page.metric["nscb"] == ("" if metrics["nscb"] is None else repr(metrics["nscb"]))
    # every treatment, and the control first, has a section with its cells, their
    # reconstructions and the way from the control's typical cell to its own
    treatments = pd.read_csv(res.match.out_dir / "treatments.csv")["treatment"].tolist()
    assert list(res.treatments) == ["DMSO", *treatments] and len(treatments) == 16
    for label, anchor in res.treatments.items():
        assert page.images[anchor] == [f"cells of {label}", f"reconstructions of {label}",
                                       "DMSO's typical cell" if label == "DMSO" else
                                       f"DMSO → {label}: typical cells"], label
        assert re.search(rf'<h3>{re.escape(html.esc(label))} — ', text)
        assert f'href="#{anchor}"' in text.split("</nav>")[0]  # in the contents
    assert "learned (cellprof embed)" in text and "Learned against hand-crafted" in text
    assert "The same held-out cells" not in text  # hand-crafted profiles have no model
    assert 'alt="training curves"' in text
    # every picture decodes: rows of 36-px crops 2 px apart (the 3 frames of each path
    # 3 * 36 + 2 * 2 px wide, DMSO's typical cell alone 36), and the training curves
    images = _pngs(text)
    assert len(images) == 17 * 3 + 1
    crops = [im.size for im in images if im.size[1] == 36]
    assert len(crops) == 17 * 3 and all((w + 2) % 38 == 0 for w, _ in crops)
    assert crops.count((112, 36)) >= 16 and (36, 36) in crops


def test_neighbours_lead_with_the_nsc_neighbour(with_model) -> None:
    res, _ = with_model
    run = read_match(res.match.out_dir)
    near = nearest(run.profiles, "cosine", 3)
    asked = run.treatments[run.treatments["nsc_neighbour"].notna()]
    assert len(asked) > 0
    for _, row in asked.iterrows():
        first = near[row["treatment"]][0]
        assert first.treatment == row["nsc_neighbour"]
        assert first.hit == (row["nsc_neighbour_moa"] == row["Metadata_MOA"])


def test_hand_crafted_profiles_show_real_cells_alone(screen: Screen, tmp_path: Path) -> None:
    res = match_report(screen.handcrafted, tmp_path / "res", FAST, crops=screen.crops,
                       config=SMALL)
    text = res.path.read_text(encoding="utf-8")
    page = Page(text)
    _self_contained(text, page)
    assert "training" not in res.sections and "compare" not in res.sections
    assert "hand-crafted (cellprof measure)" in text
    for label, anchor in res.treatments.items():
        assert page.images[anchor] == [f"cells of {label}"], label
    assert "<th scope=row>reconstructions" not in text
    assert "no model given: no reconstructions or typical cells" in text


def test_external_table_without_crops_reads(screen: Screen, tmp_path: Path) -> None:
    table = tmp_path / "cells.csv"
    profile_table(screen.learned).to_csv(table, index=False)
    res = match_report(table, tmp_path / "res", FAST)
    text = res.path.read_text(encoding="utf-8")
    page = Page(text)
    assert not page.srcs and "external feature table" in text
    assert "No cell pictures: pass --crops" in text
    assert set(res.treatments.values()) <= set(page.ids) and len(res.treatments) == 16

def _untrained(screen: Screen, folder: Path) -> tuple[Path, Path]:
    """(checkpoint, profiles) of the tiny model's untrained weights, as the demo's baseline."""
    from cellprof.formats.store import read_info
    from cellprof.learn.model import ModelConfig
    from cellprof.learn.train import initial_checkpoint

    ckpt = load_checkpoint(screen.model)
    untrained = initial_checkpoint(folder / "untrained.pt",
                                   ModelConfig.from_dict(ckpt["model_config"]),
                                   read_info(screen.crops).channels, seed=1)
    profiles = embed(untrained, screen.crops, folder / "untrained.h5",
                     config=EmbedConfig(precision="fp32", tta="none")).out
    return untrained, profiles


def test_two_models_reconstruct_the_same_held_out_cells(screen: Screen, tmp_path: Path) -> None:
    """Learned against an untrained model's profiles: beside the scores, both models'
    reconstructions of the same held-out cells and each one's error on them, the error the
    demo prints (held_out_error on the fields the trained run held out)."""
    from cellprof.learn.train import held_out_error

    untrained, profiles = _untrained(screen, tmp_path)
    res = match_report(screen.learned, tmp_path / "res", FAST, crops=screen.crops,
                       model=screen.model, compare=[profiles], config=SMALL)
    text = res.path.read_text(encoding="utf-8")
    part = text.split('<section id="compare">')[1].split("</section>")[0]
    assert "Learned against untrained model" in text and "The same held-out cells" in part
    alts = re.findall(r'<img[^>]* alt="([^"]+)"', part)
    assert alts == ["held-out cells (3)", "learned (step 3): reconstructions",
                    "untrained model (step 0): reconstructions"]
    rows = _pngs(part)
    assert len(rows) == 3 and {im.size for im in rows} == {(3 * 36 + 2 * 2, 36)}
    seed = load_checkpoint(screen.model)["train_config"]["seed"]
    want = [held_out_error(m, screen.crops, seed=seed)["val_mse"]
            for m in (screen.model, untrained)]
    assert [float(v) for v in re.findall(r"<b>([0-9.]+)</b>", part)] == \
        pytest.approx(want, abs=1e-4)
    # the untrained model's reconstructions are not the trained one's
    assert not np.array_equal(np.asarray(rows[1]), np.asarray(rows[2]))


def test_two_trained_models_are_named_by_what_differs(screen: Screen, tmp_path: Path) -> None:
    """A full model against a plain VAE: not "learned against learned" but each model by its
    name, in the title, the tables, the maps and the reconstructions."""
    from cellprof.learn.model import ModelConfig
    from cellprof.learn.train import TrainConfig, train

    cfg = ModelConfig.from_dict(load_checkpoint(screen.model)["model_config"])
    vae = train(screen.crops, tmp_path / "vae",
                model_config=dataclasses.replace(cfg, variant="vae"),
                config=TrainConfig(steps=2, batch_size=8, val_every=1000, image_every=1000))
    profiles = embed(vae.checkpoint, screen.crops, tmp_path / "vae.h5",
                     config=EmbedConfig(precision="fp32", tta="none")).out
    res = match_report(screen.learned, tmp_path / "res", FAST, crops=screen.crops,
                       model=screen.model, compare=[profiles], config=SMALL)
    text = res.path.read_text(encoding="utf-8")
    assert "<h2>Full model against plain VAE</h2>" in text
    part = text.split('<section id="compare">')[1].split("</section>")[0]
    assert "mAP full model" in part and "mAP plain VAE" in part
    assert re.findall(r'<img[^>]* alt="([^"]+)"', part)[1:] == [
        "full model (step 3): reconstructions", "plain VAE (step 2): reconstructions"]


def test_cells_called_held_out_only_when_the_run_held_them_out(screen: Screen) -> None:
    """The page says "held-out" only of the fields the model's own run held out of this very
    store; a model trained on another store, or on every field, gets random cells and a
    caveat saying why they need not be unseen."""
    from cellprof.report.models import unseen
    from cellprof.report.sources import store_summary

    crops = store_summary(screen.crops)
    ckpt = load_checkpoint(screen.model)
    pool, caveat = unseen(ckpt, crops)
    assert caveat is None and len(pool) == ckpt["data"]["n_val"] < len(crops.cells)
    other = {**ckpt, "data": {**ckpt["data"], "store": "/elsewhere/crops.h5", "n_cells": 9}}
    pool, caveat = unseen(other, crops)
    assert len(pool) == len(crops.cells) and "/elsewhere/crops.h5 (9 cells)" in caveat
    every = {**ckpt, "data_config": {**ckpt["data_config"], "val_fraction": 0.0}}
    pool, caveat = unseen(every, crops)
    assert len(pool) == len(crops.cells) and "held no fields" in caveat


def test_compared_model_gone_leaves_the_scores_and_says_so(screen: Screen,
                                                           tmp_path: Path) -> None:
    untrained, profiles = _untrained(screen, tmp_path)
    untrained.unlink()
    res = match_report(screen.learned, tmp_path / "res", FAST, crops=screen.crops,
                       model=screen.model, compare=[profiles], config=SMALL)
    text = res.path.read_text(encoding="utf-8")
    assert "compare" in res.sections and "The same held-out cells" not in text
    assert any(f"{untrained.resolve()} is not at hand" in n for n in res.notes)



def test_training_curves_come_from_the_learned_profiles_run(screen: Screen,
                                                             tmp_path: Path) -> None:
    """Learned profiles name their model, so its run folder's curves are drawn even without
    --model."""
    res = match_report(screen.learned, tmp_path / "res", FAST)
    assert "training" in res.sections
    assert 'alt="training curves"' in res.path.read_text(encoding="utf-8")


def _forged(model: Path, tmp_path: Path, **changes) -> Path:
    ckpt = load_checkpoint(model)
    ckpt.pop("path")
    for key, value in changes.items():
        if key == "channels":
            ckpt["data"] = {**ckpt["data"], "channels": value}
        else:
            ckpt[key] = value
    return save_checkpoint(tmp_path / "forged" / "model.pt", ckpt)


def test_bad_inputs_get_one_line_and_write_nothing(screen: Screen, tmp_path: Path) -> None:
    out = tmp_path / "res"
    other_channels = _forged(screen.model, tmp_path, channels=["DNA", "GFP", "Actin"])
    with pytest.raises(CheckpointError, match=r"trained on channels DNA, GFP, Actin at 36 px, "
                                              r"but .*crops.h5 has DNA, Tubulin, Actin"):
        match_report(screen.learned, out, FAST, crops=screen.crops, model=other_channels)
    with pytest.raises(InputError, match=r"--run .*nowhere: no such run folder"):
        match_report(screen.learned, out, FAST, run=tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"no losses.csv: not a `cellprof train` run folder"):
        match_report(screen.learned, out, FAST, run=tmp_path)
    with pytest.raises(InputError, match=r"--model .*give --crops"):
        match_report(screen.learned, out, FAST, model=screen.model)
    other_step = _forged(screen.model, tmp_path / "b", step=99)
    with pytest.raises(InputError, match=r"embedded with .*step 3\), not --model .*step 99"):
        match_report(screen.learned, out, FAST, crops=screen.crops, model=other_step)
    assert not out.exists()


def test_crops_without_the_profiles_compound_column(screen: Screen, tmp_path: Path) -> None:
    """A table naming compounds in a column the crop store lacks: refused before matching,
    not after (the treatments' cells could not be found)."""
    table = tmp_path / "cells.csv"
    profile_table(screen.learned).rename(columns={"Metadata_Compound": "Metadata_pert_iname"}
                                         ).to_csv(table, index=False)
    out = tmp_path / "res"
    with pytest.raises(InputError, match=r"--compound-column Metadata_pert_iname: .*crops.h5: "
                                         r"the crop store's cells have no such column"):
        match_report(table, out, MatchConfig(permutations=20,
                                             compound_column="Metadata_pert_iname"),
                     crops=screen.crops)
    assert not out.exists()


def test_profiles_of_other_cells_than_the_crops(screen: Screen, tmp_path: Path) -> None:
    """Crops of two compounds: the profiles' other cells are not among them."""
    root = screen.crops.parent / "screen"
    images = pd.read_csv(root / "Image.csv")
    images[images["Metadata_Compound"].isin(["DMSO", "synthB1"])].to_csv(
        tmp_path / "Image.csv", index=False)
    small = crop_screen(tmp_path / "Image.csv", tmp_path / "small.h5",
                        objects=root / "Nuclei.csv", moa=root / "moa.csv",
                        config=CropConfig(size=36)).out
    out = tmp_path / "res"
    with pytest.raises(StoreError, match=r"profiles.h5: \d+ of its 134 cells are not cells of "
                                         r".*small.h5 .*give --crops the store"):
        match_report(screen.learned, out, FAST, crops=small)
    own = measure(small, tmp_path / "small_classic.h5").out
    with pytest.raises(StoreError, match=r"/classic.h5: \d+ of its 134"):  # compared ones too
        match_report(own, out, FAST, crops=small, compare=[screen.handcrafted])
    assert not out.exists()


def test_cli_writes_the_page_and_refuses_in_one_line(screen: Screen, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "res"
    args = ["match", str(screen.learned), "--out", str(out), "--permutations", "20"]
    bad = runner.invoke(app, [*args, "--crops", str(screen.crops), "--run",
                              str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1, bad.output
    assert "nowhere: no such run folder" in bad.output and not out.exists()
    ok = runner.invoke(app, [*args, "--html", "--cells", "2"])
    assert ok.exit_code == 0, ok.output
    assert "open first:" in ok.output and (out / "report.html").is_file()
    # matching again without the page removes the old one: its figures are no longer these
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and not (out / "report.html").exists()
    assert "removed" in again.output


def test_expected_ap_is_the_mean_over_every_ranking() -> None:
    for n, p in ((5, 2), (6, 1), (4, 4), (6, 3)):
        aps = [average_precision(-np.arange(n, dtype=float), np.array(order) < p)
               for order in itertools.permutations(range(n))]
        assert expected_ap(n, p) == pytest.approx(np.mean(aps), abs=1e-12), (n, p)
    assert np.isnan(expected_ap(5, 0))


def test_chance_from_the_labels_by_hand() -> None:
    """a1, a2 (MOA A, compounds a and a'), b1, b2 (MOA B) in two batches; c1 (MOA C alone in
    batch W1, so NSCB leaves it out)."""
    t = pd.DataFrame({
        "treatment": ["a1", "a2", "b1", "b2", "c1"],
        "Metadata_Compound": ["a", "a'", "b", "b'", "c"],
        "Metadata_MOA": ["A", "A", "B", "B", "C"],
        "batches": ["W1", "W2", "W1", "W2", "W1"],
        "nsc_correct": [True, False, True, True, None],
        "nscb_correct": [True, False, True, False, None],
        "nscb_excluded": [False, False, False, False, True],
        "ap": [1.0, 0.5, 1.0, 1.0, np.nan]})
    luck = chance(t)
    # NSC: each query has 4 other-compound candidates, one of its MOA
    assert luck["nsc"] == pytest.approx(1 / 4) and luck["nsc_per_compound"] == 0.25
    # NSCB: a1 (W1) may meet a2 and b2 (W2): one of two is its MOA; so for every query
    assert luck["nscb"] == pytest.approx(1 / 2)
    assert luck["map"] == pytest.approx(expected_ap(4, 1))


def test_html_pieces_escape_and_sort() -> None:
    taken: set[str] = set()
    assert html.anchor("taxol@0.3", taken) == "t-taxol-0-3"
    assert html.anchor("Taxol@0,3", taken) == "t-taxol-0-3-2"  # one id each
    table = html.table(["name", "mAP"], [[html.text("<b>&"), html.num(0.5)],
                                         [html.text("x"), html.num(None)]],
                       sortable=True, numeric=[1])
    assert "&lt;b&gt;&amp;" in table and 'class="sortable"' in table
    assert 'data-key="0.5"' in table and "<td class=\"n\" data-key=\"\">–</td>" in table
