"""The page's last part: one section per treatment, the control first, each with an id a
reader jumps to from the contents, the map or a neighbour's name. It says how the treatment
matched (its NSC and NSCB neighbours, hit or miss, its AP, its nearest treatments) and
shows its cells: real ones, their reconstructions and the way from the control's typical
cell to its own when a model is given (:mod:`cellprof.report.cells`), real ones alone
otherwise.
"""

from __future__ import annotations

import pandas as pd

from cellprof.prepare.tables import MOA
from cellprof.report import html as h
from cellprof.report.cells import CellPictures, Strip, TreatmentPictures
from cellprof.report.results import flags
from cellprof.report.sections import PageData, Section, neighbours_text, treatment_link

ZOOM = 2.0  # crops drawn at twice their pixels: 68 px reads as a cell on a laptop screen


def treatments(data: PageData) -> Section:
    """One section per treatment, the control first: its numbers and its pictures."""
    p = data.pictures
    t = data.main.run.treatments.set_index("treatment", drop=False)
    near = data.main.neighbours
    parts = [_intro(data)]
    labels = list(t.index.astype(str))
    if p is not None and p.control is not None:
        labels = [p.control, *labels]
    for label in labels:
        if label in t.index:
            r = t.loc[label]
            head = f"{label} — {r[MOA]}"
            nsc_hit, nscb_hit = flags(pd.Series([r["nsc_correct"], r["nscb_correct"]]))
            facts = (f"<p>NSC neighbour: {_hit(r['nsc_neighbour'], nsc_hit, data)}; "
                     f"NSCB neighbour: {_hit(r['nscb_neighbour'], nscb_hit, data)}; AP "
                     f"{h.num(r['ap']).html}. Nearest: "
                     f"{neighbours_text(near.get(label, []), data)}</p>")
        else:
            head, facts = f"{label} — control", "<p>The negative control.</p>"
        pics = p.treatments.get(label) if p is not None else None
        parts.append(f'<section class="treatment" id="{data.anchors[label]}">'
                     f'<h3>{h.esc(head)}<a class="top" href="#top">top</a></h3>{facts}'
                     f"{_pictures(label, pics, p)}</section>")
    index = ", ".join(f'<a href="#{data.anchors[x]}">{h.esc(x)}</a>' for x in labels)
    return Section("treatments", "Treatments one by one", "".join(parts),
                   toc=f'<p class="index">Treatments: {index}</p>')


def _hit(neighbour: object, hit: bool | None, data: PageData) -> str:
    if hit is None:
        return "none asked"
    word = '<span class="hit">hit</span>' if hit else '<span class="miss">miss</span>'
    return f"{treatment_link(data, str(neighbour)).html} {word}"


def _intro(data: PageData) -> str:
    """What the pictures are, the colour and display range of each stain, and any note."""
    p = data.pictures
    if p is None:
        return ('<p class="note">No cell pictures: pass --crops (the crop store the profiles '
                "were made from), and --model for reconstructions and typical cells.</p>")
    notes = "".join(f'<p class="note">{h.esc(n)}</p>' for n in p.notes)
    if p.scale is None:
        return notes
    stains = ", ".join(f'<span style="color:{p.colours[c]}">■</span> {h.esc(d)}'
                       for c, d in zip(p.channels, p.scale.describe(p.channels)))
    what = ("Per treatment: random cells as the model sees them, their reconstructions, and "
            "the way from the control's typical cell to the treatment's (each a decoded "
            "mean latent; t = " + ", ".join(f"{v:.2f}" for v in p.steps) + ")."
            if p.model else "Per treatment: random cells at their raw intensities (no model "
            "given: no reconstructions or typical cells).")
    return (f"<p>{what} Every picture on one scale per channel: {stains} "
            f"({h.esc(p.scale.source)}).</p>{notes}")


def _row(label: str, s: Strip | None, alt: str) -> str:
    if s is None:
        return ""
    return (f"<tr><th scope=row>{h.esc(label)}</th>"
            f"<td>{h.png_img(s.png, alt, width=s.width, zoom=ZOOM)}</td></tr>")


def _pictures(label: str, pics: TreatmentPictures | None, p: CellPictures | None) -> str:
    if p is None or p.scale is None:
        return ""
    if pics is None:
        return '<p class="note">No cells of this treatment in the crop store.</p>'
    first = (f"{label}'s typical cell" if label == p.control else
             f"{p.control} → {label}: typical cells")
    rows = (_row(f"cells ({pics.cells.n} of {pics.n_cells})", pics.cells, f"cells of {label}")
            + _row("reconstructions", pics.reconstructions, f"reconstructions of {label}")
            + _row(first, pics.path, first))
    return f'<table class="pictures"><tbody>{rows}</tbody></table>'
