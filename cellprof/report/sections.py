"""The sections of the report page, each a function from what the page knows to HTML.

Order follows the questions a biologist opening a screen's results asks: what was
profiled; how well do the profiles match mechanisms (the headline beside chance); which
mechanisms, and which are confused; where each treatment lies (a map, its nearest
neighbours); how the model trained; learned against hand-crafted; and, per treatment, what
its cells look like (:mod:`cellprof.report.treatment_sections`). docs/report.md says how to
read each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellprof import __version__
from cellprof.prepare.tables import COMPOUND, MOA
from cellprof.profile.retrieval import TREATMENT
from cellprof.report import html as h
from cellprof.report.cells import CellPictures
from cellprof.report.config import ReportConfig
from cellprof.report.models import ModelPair, ModelView
from cellprof.report.results import (
    MatchRun,
    Neighbour,
    chance,
    expected_ap,
    flags,
    nearest,
    profile_map,
)
from cellprof.report.sources import ProfileSource, StoreSummary, kind_of, training_budget


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str
    toc: str = ""
    """Extra HTML under the section's entry in the contents (the treatments' links)."""


@dataclass(frozen=True)
class Analysis:
    """One match run, what was profiled for it, and each treatment's nearest neighbours."""

    run: MatchRun
    sources: list[ProfileSource]
    neighbours: dict[str, list[Neighbour]]
    name: str | None = None
    """What the page calls these profiles when their kind would not tell them apart from
    the compared ones (:func:`distinct`)."""

    @property
    def kind(self) -> str:
        return kind_of(self.sources)

    @property
    def label(self) -> str:
        """The kind as the page names it: learned profiles of a model's initial weights
        (checkpoint step 0, as the demo's baseline) are the "untrained model"'s, so a page
        comparing them with a trained model's does not read "learned against learned"."""
        if self.name is not None:
            return self.name
        if self.kind == "learned" and all(s.get("checkpoint_step") == 0 for s in self.sources):
            return "untrained model"
        return self.kind


VARIANT_NAMES = {"vae": "plain VAE", "vae-gan": "VAE-GAN", "vae-gan-progressive": "full model"}
"""How the page names a model by its ``variant`` (docs/method.md's names)."""


def analysis(run: MatchRun, sources: list[ProfileSource], k: int) -> Analysis:
    return Analysis(run, sources, nearest(run.profiles, run.config.get("metric", "cosine"), k))


def distinct(a: Analysis, b: Analysis) -> tuple[Analysis, Analysis]:
    """``a`` and ``b`` named so a reader tells them apart: when both are, say, "learned" (a
    full model against a plain VAE, or two checkpoints of one run), each is named by what
    differs, its model's variant, else its checkpoint's step, else its file."""
    if a.label != b.label:
        return a, b

    def first(x: Analysis, key: str) -> Any:
        return x.sources[0].get(key) if x.sources else None

    variant = [(first(x, "model_config") or {}).get("variant") for x in (a, b)]
    step = [first(x, "checkpoint_step") for x in (a, b)]
    path = [x.sources[0].path if x.sources else Path("?") for x in (a, b)]
    if a.kind == b.kind == "learned" and variant[0] != variant[1]:
        names = [VARIANT_NAMES.get(str(v), str(v)) for v in variant]
    elif a.kind == b.kind == "learned" and step[0] != step[1]:
        names = [f"{a.label}, step {s}" for s in step]
    elif path[0].name != path[1].name:
        names = [p.name for p in path]
    elif f"{path[0].parent.name}/{path[0].name}" != f"{path[1].parent.name}/{path[1].name}":
        names = [f"{p.parent.name}/{p.name}" for p in path]
    else:
        names = [str(p) for p in path]
    return replace(a, name=names[0]), replace(b, name=names[1])


@dataclass(frozen=True)
class PageData:
    """Everything a section may show."""

    main: Analysis
    compare: Analysis | None
    crops: StoreSummary | None
    model: dict[str, Any] | None
    """The checkpoint's path, step and model_config, when a model is given."""
    run_folder: Path | None
    curves: tuple[bytes, int] | None
    pictures: CellPictures | None
    config: ReportConfig
    notes: list[str] = field(default_factory=list)
    anchors: dict[str, str] = field(default_factory=dict)
    """Treatment -> the id of its section."""
    pair: ModelPair | None = None
    """Both models' reconstructions of the same held-out cells, when both are at hand."""


def pct(x: float | None) -> str:
    """A share as "81.2%"; "–" when there is none."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.1%}"


def treatment_link(data: PageData, treatment: str) -> h.Cell:
    """A treatment's name, linked to its section when it has one."""
    anchor = data.anchors.get(treatment)
    return h.link(treatment, f"#{anchor}") if anchor else h.text(treatment)


def glance(data: PageData) -> str:
    """The first lines: what was matched, and the three figures beside chance."""
    m = data.main.run.metrics
    luck = chance(data.main.run.treatments)
    figures = [(name, pct(m.get(key)) if key != "map" else h.num(m.get(key)).html,
                f"chance {pct(luck[key]) if key != 'map' else h.num(luck[key]).html}"
                if m.get(key) is not None else "none asked (see the headline)")
               for key, name in (("nsc", "NSC"), ("nscb", "NSCB"), ("map", "mAP"))]
    return (f'<p class="sub">{h.esc(data.main.label)} profiles of {m.get("n_treatments")} '
            f'treatments ({m.get("n_compounds")} compounds, {m.get("n_moas")} MOAs)'
            f'{", pictures by the model" if data.model else ""}</p>' + h.glance(figures))


def profiled(data: PageData) -> Section:
    """What was profiled: inputs, treatments, model, normalisation, version and date."""
    m, cfg = data.main.run.metrics, data.main.run.config
    rows: list[tuple[str, str]] = []
    for s in data.main.sources:
        made = "".join(f"<small>{h.esc(k)}: {h.esc(v)}</small>" for k, v in _source_facts(s))
        rows.append(("profiles", f"<code>{h.esc(s.path)}</code>: {h.esc(s.describe)}{made}"))
    rows.append(("cells / features", f"{m.get('n_input_rows', 0):,} rows of "
                                      f"{m.get('n_input_features', 0):,} features; "
                                      f"{m.get('n_features', 0):,} used"))
    if data.crops is not None:
        c = data.crops
        plates = ", ".join(c.plates[:6]) + (" …" if len(c.plates) > 6 else "")
        rows.append(("crop store", h.esc(f"{c.path}: {c.n_cells:,} cells, {len(c.plates)} "
                                         f"plates ({plates}), channels "
                                         f"{', '.join(c.channels)} at {c.crop_size} px")))
    inputs = m.get("inputs", {})
    for key in ("image_table", "moa"):
        if inputs.get(key):
            rows.append((key.replace("_", " "), f"<code>{h.esc(inputs[key])}</code>"))
    control = cfg.get("control_query") or f"{COMPOUND} == {cfg.get('control')!r}"
    rows.append(("treatments", h.esc(
        f"{m.get('n_treatments')} treatments of {m.get('n_compounds')} compounds in "
        f"{m.get('n_moas')} MOAs, from {m.get('n_wells', 0)} wells; controls: {control} "
        f"({m.get('n_control_wells', 0)} wells)")))
    rows += _model_rows(data)
    norm, scope = cfg.get("normalize", "zscore"), cfg.get("scope", "plate")
    whose = "the whole screen" if scope == "screen" else f"each {scope}"
    rows.append(("normalisation", h.esc("none" if norm == "none" else
                                        f"{norm} against the control {cfg.get('normalize_at')}s"
                                        f" of {whose}")))
    rows.append(("aggregation / similarity", h.esc(
        f"{cfg.get('aggregate')} of cells → wells → treatments; {cfg.get('metric')} "
        "similarity")))
    for b in m.get("blocks", []):
        rows.append((f"block {b['name']}", h.esc(f"{b['width']} features × weight "
                                                 f"{b['weight']:.3g}")))
    for key, label in (("unlabelled_treatments", "without MOA (skipped)"),
                       ("single_compound_moas", "one-compound MOAs (not queried)")):
        if m.get(key):
            rows.append((label, h.esc(", ".join(map(str, m[key])))))
    for entry in m.get("dropped", []):
        rows.append(("rows dropped", h.esc(f"{entry['rows']} ({entry['reason']})")))
    rows.append(("written", h.esc(f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by "
                                  f"cellprof {__version__}, from {data.main.run.folder}")))
    return Section("profiled", "What was profiled", h.facts(rows))


def _source_facts(s: ProfileSource) -> list[tuple[str, str]]:
    """What a profiles file says it was made from."""
    out = []
    if s.get("store"):
        out.append(("from", str(s.get("store"))))
    if s.kind == "learned":
        mc = s.get("model_config") or {}
        out.append(("model", f"{s.get('checkpoint')} (step {s.get('checkpoint_step')}, "
                             f"{mc.get('variant', '?')}, latent {mc.get('latent_dim', '?')}); "
                             f"test-time views: {s.get('tta') or 'none'}"))
    elif s.kind == "hand-crafted":
        out.append(("features", f"{s.get('method')} on {', '.join(s.get('channels') or [])}"))
    elif s.kind == "combined":
        out += [(f"block {src.get('block')}", f"{src.get('profile_kind')}, {src.get('width')} "
                 f"features, from {src.get('path')}") for src in s.get("sources") or []]
    if s.get("created"):
        out.append(("made", str(s.get("created"))))
    return out


def _model_rows(data: PageData) -> list[tuple[str, str]]:
    rows = []
    if data.model is not None:
        mc = data.model.get("model_config", {})
        rows.append(("model (pictures)", h.esc(
            f"{data.model['path']}: {mc.get('variant', '?')}, latent {mc.get('latent_dim')}, "
            f"{mc.get('image_size')} px, step {data.model.get('step')}")))
    if data.run_folder is not None:
        rows += [(k, h.esc(v)) for k, v in training_budget(data.run_folder)]
    return rows


def headline(data: PageData) -> Section:
    """NSC, NSCB and mAP, per treatment and per compound, beside chance."""
    body = _headline_table([data.main] + ([data.compare] if data.compare else []))
    m = data.main.run.metrics
    excluded = ", ".join(m.get("nscb_excluded_moas", [])) or "none"
    body += (f"<p>NSC: is each treatment's nearest treatment of another compound of the same "
             f"MOA ({m.get('n_nsc_queries', 0)} queries)? NSCB: also of another batch "
             f"({m.get('n_nscb_queries', 0)} queries; MOAs in one batch left out: "
             f"{h.esc(excluded)}). mAP: how well similarity ranks every same-MOA treatment "
             "first. <span class=chance>Chance</span> is what a random neighbour (a random "
             "ranking) would score with these labels.</p>")
    return Section("headline", "Headline: do profiles match mechanisms?", body)


def _per_compound_map(t: pd.DataFrame) -> float:
    ap = t[["ap", COMPOUND]].dropna()
    return float(ap.groupby(COMPOUND)["ap"].mean().mean()) if len(ap) else float("nan")


def _headline_table(analyses: list[Analysis]) -> str:
    head = ["", *[f"{a.label}: per treatment" for a in analyses],
            *[f"{a.label}: per compound" for a in analyses], "chance (per treatment)",
            "chance (per compound)"]
    main = analyses[0]
    luck = chance(main.run.treatments)
    rows = []
    for key, label in (("nsc", "NSC"), ("nscb", "NSCB"), ("map", "mAP")):
        fmt = ".3f" if key == "map" else ".1%"
        per_t = [h.Cell(*_metric(a.run.metrics.get(key), fmt), css="n", name=key if i == 0
                        else "") for i, a in enumerate(analyses)]
        per_c = [h.num(a.run.metrics.get(f"{key}_per_compound") if key != "map" else
                       _per_compound_map(a.run.treatments), fmt) for a in analyses]
        rows.append([h.text(label), *per_t, *per_c, h.num(luck[key], fmt, css="n chance"),
                     h.num(luck.get(f"{key}_per_compound"), fmt, css="n chance")])
    return h.table(head, rows, numeric=range(1, len(head)))


def _metric(value: float | None, fmt: str) -> tuple[str, str]:
    """(shown text, exact key) of a metrics.json number."""
    if value is None:
        return "–", ""
    return format(value, fmt), repr(float(value))


def per_moa(data: PageData) -> Section:
    """mAP of each MOA with its permutation p and FDR q, best first."""
    t = data.main.run.treatments
    luck = {}
    for moa, rows in t[t["ap"].notna()].groupby(MOA):
        comp = t[COMPOUND].astype(str).to_numpy()
        values = [expected_ap((comp != c).sum(), ((comp != c) & (t[MOA] == moa)).sum())
                  for c in rows[COMPOUND].astype(str)]
        luck[str(moa)] = float(np.mean(values))
    rows = [[h.text(r[MOA]), h.num(r["n_compounds"], "d"), h.num(r["n_queries"], "d"),
             h.num(r["map"]), h.num(luck.get(str(r[MOA])), ".3f", css="n chance"),
             h.num(r["p_value"], ".3g"), h.num(r["q_value"], ".3g")]
            for _, r in data.main.run.per_moa.iterrows()]
    n = data.main.run.metrics.get("map_permutations", 0)
    body = h.table(["MOA", "compounds", "queries", "mAP", "chance", "p", "q (FDR)"], rows,
                   sortable=True, numeric=range(1, 7), scroll=len(rows) > 15)
    body += (f"<p>p: how often {n} shuffles of the MOA labels score as high (the smallest "
             f"possible is {1 / (n + 1):.3g}); q: Benjamini-Hochberg over MOAs.</p>"
             if n else "<p>No permutations were drawn (--permutations 0): no p-values.</p>")
    return Section("moa", "Mechanisms: mAP per MOA", body)


def confusion(data: PageData) -> Section:
    """The NSC confusion matrix as a coloured table (rows: true MOA)."""
    c = data.main.run.confusion
    if c.empty:
        return Section("confusion", "NSC confusion", "<p>No NSC query.</p>")
    labels = [str(x) for x in c.index]
    m = c.to_numpy(np.float64)
    totals = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    head = "".join(f'<th class=n scope="col" title="{h.esc(x)}">{i + 1}</th>'
                   for i, x in enumerate(labels))
    body = []
    for i, label in enumerate(labels):
        cells = "".join(
            f'<td class=n style="background:rgba(31,119,180,{frac[i, j]:.2f});'
            f'{"color:#fff;" if frac[i, j] > 0.55 else ""}'
            f'{"font-weight:700;" if i == j else ""}">{int(m[i, j])}</td>'
            for j in range(len(labels)))
        right = pct(frac[i, i]) if totals[i, 0] else "–"
        body.append(f"<tr><th scope=row>{i + 1}. {h.esc(label)}</th>{cells}"
                    f"<td class=n>{right}</td></tr>")
    table = (f"<table><thead><tr><th>true MOA \\ neighbour's MOA</th>{head}<th class=n>NSC"
             f"</th></tr></thead><tbody>{''.join(body)}</tbody></table>")
    return Section("confusion", "NSC confusion: which mechanisms are taken for which",
                   f'<div class="scroll">{table}</div><p>Rows: each query treatment\'s MOA; '
                   "columns (numbered as the rows): the MOA of its nearest treatment of "
                   "another compound; shade: the share of the row. The diagonal is the hits."
                   "</p>")


def _map_svg(analysis: Analysis, data: PageData, colour_of: dict[str, str]) -> str:
    p = analysis.run.profiles
    points, var = profile_map(p, analysis.run.config.get("metric", "cosine"))
    names = p[TREATMENT].astype(str).tolist()
    return h.scatter([tuple(x) for x in points], names, p[MOA].astype(str).tolist(),
                     [f"#{data.anchors[t]}" if t in data.anchors else None for t in names],
                     colour_of, axes=(f"PC1 ({var[0]:.0%} of variance)",
                                      f"PC2 ({var[1]:.0%})"))


def profile_map_section(data: PageData) -> Section:
    """The treatment profiles on their first two principal components, coloured by MOA."""
    moas = sorted(data.main.run.profiles[MOA].astype(str).unique())
    colour_of = h.colours(moas)
    body = _map_svg(data.main, data, colour_of) + h.legend(colour_of)
    metric = data.main.run.config.get("metric", "cosine")
    body += ("<p>Each dot is a treatment profile (as matched: normalised"
             + (", scaled to unit length as " + metric + " compares them"
                if metric in ("cosine", "correlation") else "")
             + "), placed by its first two principal components. Hover a dot for its name; "
             "click it for its section. Dots of one colour close together: an MOA the "
             "profiles recognise. Two dimensions keep only part of the variance: the "
             "neighbours below are computed in all of them.</p>")
    return Section("map", "Map of the treatments", body)


def neighbours_text(neighbours: list[Neighbour], data: PageData) -> str:
    """"name (MOA) hit; …" of a treatment's nearest neighbours, each name a link."""
    return "; ".join(
        f'{treatment_link(data, n.treatment).html} ({h.esc(n.moa)}) '
        f'<span class="{"hit" if n.hit else "miss"}">{"hit" if n.hit else "miss"}</span>'
        for n in neighbours)


def neighbours(data: PageData) -> Section:
    """Per treatment: NSC and NSCB neighbours marked hit or miss, AP, the next nearest."""
    t = data.main.run.treatments
    near = data.main.neighbours
    rows = []
    for (_, r), nsc_hit, nscb_hit in zip(t.iterrows(), flags(t["nsc_correct"]),
                                         flags(t["nscb_correct"])):
        treatment = str(r["treatment"])
        rows.append([treatment_link(data, treatment), h.text(r[MOA]),
                     h.text(r["nsc_neighbour"] if nsc_hit is not None else "–"), h.mark(nsc_hit),
                     h.text(r["nscb_neighbour"] if nscb_hit is not None else "–"),
                     h.mark(nscb_hit), h.num(r["ap"]),
                     h.Cell(neighbours_text(near.get(treatment, []), data))])
    order = sorted(range(len(rows)), key=lambda i: (str(t[MOA].iloc[i]),
                                                    str(t["treatment"].iloc[i])))
    body = h.table(["treatment", "MOA", "NSC neighbour", "NSC", "NSCB neighbour", "NSCB", "AP",
                    f"{data.config.neighbours} nearest of other compounds"],
                   [rows[i] for i in order], sortable=True, numeric=[6], scroll=len(rows) > 15)
    body += ("<p>Sorted by MOA; click a column head to sort by it. A miss whose neighbour "
             "has a related mechanism is a near miss; several misses to one MOA show in the "
             "confusion matrix above.</p>")
    return Section("neighbours", "Nearest neighbours, treatment by treatment", body)


def training(data: PageData) -> Section | None:
    """The run's curves and budget; a note when the model's run folder is not at hand."""
    if data.run_folder is None:
        if data.model is None and data.main.kind != "learned":
            return None
        return Section("training", "Training", '<p class="note">The run folder (with '
                       "losses.csv) is not at hand: pass --run with the folder `cellprof "
                       "train --out` wrote to see the training curves.</p>")
    body = h.facts([(k, h.esc(v)) for k, v in training_budget(data.run_folder)])
    if data.curves is not None:
        png, width = data.curves
        body += h.png_img(png, "training curves", css="curves", width=width, zoom=0.75)
    body += ("<p>Each loss term against the training step (blue), and the reconstruction "
             "error of held-out cells (red), from <code>"
             f"{h.esc(data.run_folder / 'losses.csv')}</code>. Training that has not levelled "
             "off may not have learnt what there is to learn; a held-out error rising while "
             "the pixel loss falls is overfitting.</p>")
    return Section("training", "Training", body)


def comparison(data: PageData) -> Section | None:
    """The two analyses side by side: headline, per-MOA mAP, per-treatment hits, maps."""
    if data.compare is None:
        return None
    a, b = data.main, data.compare
    body = _headline_table([a, b])
    ma = a.run.per_moa.set_index(MOA)["map"]
    mb = b.run.per_moa.set_index(MOA)["map"]
    moas = sorted(set(ma.index) | set(mb.index), key=lambda m: -np.nan_to_num(ma.get(m, 0)))
    body += h.table(["MOA", f"mAP {a.label}", f"mAP {b.label}", "difference"],
                    [[h.text(m), h.num(ma.get(m)), h.num(mb.get(m)),
                      h.num(ma.get(m, np.nan) - mb.get(m, np.nan), "+.3f")] for m in moas],
                    sortable=True, numeric=[1, 2, 3], caption="mAP per MOA")
    hits = {}
    for name, x in (("a", a), ("b", b)):
        hits[name] = dict(zip(x.run.treatments["treatment"].astype(str),
                              flags(x.run.treatments["nsc_correct"])))
    both = [t for t in hits["a"] if hits["a"][t] is not None and hits["b"].get(t) is not None]
    count = {k: sum(1 for t in both if (hits["a"][t], hits["b"][t]) == k)
             for k in ((True, True), (True, False), (False, True), (False, False))}
    body += (f"<p>NSC, treatment by treatment ({len(both)} asked of both): both hit "
             f"{count[(True, True)]}, only {h.esc(a.label)} {count[(True, False)]}, only "
             f"{h.esc(b.label)} {count[(False, True)]}, neither {count[(False, False)]}.</p>")
    colour_of = h.colours(sorted(a.run.profiles[MOA].astype(str).unique()))
    body += (f'<div class="side"><figure>{_map_svg(a, data, colour_of)}<figcaption>'
             f"{h.esc(a.label)}</figcaption></figure><figure>{_map_svg(b, data, colour_of)}"
             f"<figcaption>{h.esc(b.label)}</figcaption></figure></div>")
    if data.pair is not None:
        body += _pair(data.pair)
    return Section("compare", f"{a.label.capitalize()} against {b.label}", body)


def _pair(p: ModelPair) -> str:
    """The same held-out cells, then each model's reconstructions, and each one's error."""
    zoom = 2.0  # as the treatments' pictures

    def row(label: str, png: bytes, width: int) -> str:
        return (f"<tr><th scope=row>{h.esc(label)}</th>"
                f"<td>{h.png_img(png, label, width=width, zoom=zoom)}</td></tr>")

    def name(v: ModelView) -> str:
        said = v.step is None or f"step {v.step}" in v.label
        return v.label + ("" if said else f" (step {v.step})")

    what = "held-out cells" if p.caveat is None else "cells"
    rows = row(f"{what} ({p.cells.n})", p.cells.png, p.cells.width) + "".join(
        row(f"{name(v)}: reconstructions", v.reconstructions.png, v.reconstructions.width)
        for v in p.views)
    a, b = p.views
    times = f", {b.mse / a.mse:.1f} times as large" if b.mse > a.mse > 0 else ""
    why = (": where mechanisms differ in their average cell image, random convolutional "
           "features match them as well as trained ones, and what training bought shows here"
           if 0 in (a.step, b.step) else "; what each keeps of a cell shows here")
    where = ("Cells of the fields the first model's run held out of training (seed "
             f"{p.seed}), so neither model trained on them" if p.caveat is None else
             f"Random cells of the crop store; {h.esc(p.caveat)}")
    return (f"<h3>The same {what} through both models</h3>"
            f'<table class="pictures"><tbody>{rows}</tbody></table>'
            f"<p>{where}. Reconstruction error (mean squared error per pixel, crops scaled as "
            f"each model sees them, over {p.measured} of these {p.pool} cells): "
            f"{h.esc(name(a))} <b>{a.mse:.4f}</b>, {h.esc(name(b))} <b>{b.mse:.4f}</b>{times}. "
            "Two models can match mechanisms equally well and still see cells very "
            f"differently{why}. "
            f"Pictures on one scale per channel ({h.esc(p.scale)}).</p>")
