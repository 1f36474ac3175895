"""The pieces of the report page: escaped text, inline images, sortable tables, an SVG map.

The page must open from a mail attachment, on a machine without network: nothing it shows is
fetched (no CDN, no server, no file beside it). Images are ``data:image/png;base64`` URIs,
the map is inline SVG, the style sheet and the one small script (sort a table by a click on
a column head) are inline. With scripts off every table still reads, in the order written,
and every point of the map still names its treatment (its SVG ``<title>``). No numpy, no
matplotlib here: text in, text out, so each piece is tested on strings.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Tableau's 20 colours, then grey: distinct on screen and in print; MOAs beyond 20 repeat.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;
 margin:0 auto;max-width:1100px;padding:0 1.2em 4em}
h1{font-size:1.6em;margin:1em 0 .2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
h3{margin:1.6em 0 .3em}.sub{color:#555;margin-top:0}
nav.toc{background:#f5f5f5;padding:.6em 1em;border-radius:6px}
nav.toc ol{margin:.2em 0;padding-left:1.4em;columns:2}nav.toc li{margin:.1em 0}
nav.toc .index{font-size:.9em;margin:.4em 0 0}
.glance{display:flex;flex-wrap:wrap;gap:1em;margin:.8em 0 1em}
.glance div{border:1px solid #ddd;border-radius:6px;padding:.4em .9em;min-width:9em}
.glance .name{display:block;color:#555;font-size:.85em}
.glance .big{display:block;font-size:1.7em;font-weight:700}
.glance .chance{font-size:.85em}
dl.facts dd small{display:block;color:#555}
table.pictures th{width:15em;font-weight:600}
table{border-collapse:collapse;margin:.6em 0;font-size:.93em}
th,td{padding:.25em .6em;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f0f0f0;position:sticky;top:0}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#aaa}
.scroll{max-height:32em;overflow:auto;border:1px solid #e3e3e3}
.hit{color:#137333;font-weight:600}.miss{color:#b3261e;font-weight:600}
.chance{color:#666}.note{color:#6b4e00;background:#fff8e1;padding:.3em .6em}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.15em 1.2em}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}
img.cells{image-rendering:pixelated;max-width:100%;height:auto;display:block}
figure{margin:.5em 0 1em}figcaption{color:#555;font-size:.9em}
.legend{display:flex;flex-wrap:wrap;gap:.2em 1em;font-size:.9em;margin:.3em 0}
.sw{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.3em}
.side{display:grid;grid-template-columns:1fr 1fr;gap:1.5em}
svg.map{max-width:100%;height:auto}svg.map circle{stroke:#fff;stroke-width:.6}
svg.map a:hover circle{stroke:#000;stroke-width:2}
section.treatment{border-top:1px solid #ddd;margin-top:1.5em}
a.top{font-size:.85em;font-weight:normal;margin-left:.6em}
"""

# Sorts a table.sortable by the clicked column (numbers as numbers, by each cell's
# data-key when it has one); a second click reverses. Written as data: nothing is fetched.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  t.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var down = th.getAttribute("aria-sort") === "ascending";
      t.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      function key(r) {
        var c = r.cells[col], k = c ? (c.getAttribute("data-key") || c.textContent) : "";
        var x = parseFloat(k);
        return isNaN(x) || !/^\\s*-?[\\d.]/.test(k) ? [1, k.toLowerCase()] : [0, x];
      }
      rows.sort(function (a, b) {
        var p = key(a), q = key(b), s = p[0] - q[0] || (p[1] < q[1] ? -1 : p[1] > q[1]);
        return down ? -s : s;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(text: object) -> str:
    """``text`` safe inside HTML, quotes included (attribute values too)."""
    return html.escape(str(text), quote=True)


def anchor(name: str, taken: set[str]) -> str:
    """An element id for ``name`` ("taxol@0.3" -> "t-taxol-0-3"), unique within ``taken``
    (which it joins); ids of letters, digits and dashes survive every mail client."""
    base = "t-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x")
    out, k = base, 2
    while out in taken:
        out, k = f"{base}-{k}", k + 1
    taken.add(out)
    return out


def png_img(png: bytes, alt: str, css: str = "cells", zoom: float = 1.0,
            width: int | None = None) -> str:
    """An ``<img>`` holding ``png`` inline; ``width`` (the image's pixels) times ``zoom`` is
    its drawn width (crops of 36-68 px read better at twice their size)."""
    data = base64.b64encode(png).decode("ascii")
    size = f' width="{round(width * zoom)}"' if width else ""
    return f'<img class="{css}" alt="{esc(alt)}"{size} src="data:image/png;base64,{data}">'


@dataclass(frozen=True)
class Cell:
    """One table cell: its HTML (already escaped), its sort key and CSS class."""

    html: str
    key: str | None = None
    """What the column sorts by when not the text (a number behind a formatted one)."""
    css: str = ""
    name: str = ""
    """A ``data-metric`` name, for a reader (or a test) that looks a figure up."""


def text(value: object, css: str = "") -> Cell:
    return Cell(esc(value), css=css)


def num(value: float | int | None, fmt: str = ".3f", css: str = "n") -> Cell:
    """A number formatted as ``fmt``; "–" for None or NaN (sorted last)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Cell("–", key="", css=css)
    return Cell(format(value, fmt), key=repr(float(value)), css=css)


def link(label: object, href: str, css: str = "") -> Cell:
    return Cell(f'<a href="{esc(href)}">{esc(label)}</a>', key=str(label), css=css)


def mark(hit: bool | None) -> Cell:
    """Hit or miss of a neighbour's MOA, in words as well as colour (print, colour-blind)."""
    if hit is None:
        return Cell("–", key="")
    return Cell("hit", css="hit") if hit else Cell("miss", css="miss")


def table(head: Sequence[str], rows: Sequence[Sequence[Cell]], *, sortable: bool = False,
          numeric: Sequence[int] = (), caption: str = "", scroll: bool = False) -> str:
    """A table; ``numeric`` column heads are right-aligned like their numbers. ``sortable``
    tables sort by a click on a head (the inline script); without scripts they read as
    written, so write them in a useful order."""
    heads = "".join(f'<th{_attr("class", "n" if i in numeric else "")} scope="col">'
                    f"{esc(h)}</th>" for i, h in enumerate(head))
    body = ["<tr>" + "".join(f'<td{_attr("class", c.css)}{_attr("data-key", c.key)}'
                             f'{_attr("data-metric", c.name or None)}>{c.html}</td>'
                             for c in row) + "</tr>" for row in rows]
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    out = (f'<table{_attr("class", "sortable" if sortable else "")}>{cap}<thead><tr>{heads}'
           f"</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return f'<div class="scroll">{out}</div>' if scroll else out


def _attr(name: str, value: str | None) -> str:
    """`` name="value"``, or nothing for None (and for an empty class)."""
    if value is None or (name == "class" and not value):
        return ""
    return f' {name}="{esc(value)}"'


def facts(pairs: Sequence[tuple[str, str]]) -> str:
    """A definition list of (label, HTML value) pairs."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="facts">{items}</dl>'


def colours(names: Sequence[str]) -> dict[str, str]:
    """One palette colour per name, in the order given."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def legend(colour_of: dict[str, str]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><span class="sw" style="background:{c}"></span>{esc(n)}</span>'
        for n, c in colour_of.items()) + "</div>"


def scatter(points: Sequence[tuple[float, float]], names: Sequence[str],
            groups: Sequence[str], hrefs: Sequence[str | None], colour_of: dict[str, str],
            *, size: tuple[int, int] = (640, 460), axes: tuple[str, str] = ("", "")) -> str:
    """An inline SVG scatter plot: one dot per name, coloured by its group, named on hover
    (``<title>``, which needs no script) and linked to ``hrefs`` (its section)."""
    w, h, pad = size[0], size[1], 28
    xs, ys = [p[0] for p in points], [p[1] for p in points]

    def scale(v: float, lo: float, hi: float, length: int) -> float:
        return pad + (length - 2 * pad) * ((v - lo) / (hi - lo) if hi > lo else 0.5)
    dots = []
    for (x, y), name, group, href in zip(points, names, groups, hrefs):
        cx = scale(x, min(xs, default=0), max(xs, default=1), w)
        cy = h - scale(y, min(ys, default=0), max(ys, default=1), h)
        dot = (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{colour_of[group]}">'
               f"<title>{esc(name)} ({esc(group)})</title></circle>")
        dots.append(f'<a href="{esc(href)}">{dot}</a>' if href else dot)
    labels = (f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle" font-size="12">'
              f"{esc(axes[0])}</text>"
              f'<text x="12" y="{h / 2}" font-size="12" text-anchor="middle" '
              f'transform="rotate(-90 12 {h / 2})">{esc(axes[1])}</text>')
    return (f'<svg class="map" viewBox="0 0 {w} {h}" '
            f'width="{w}" height="{h}" role="img" aria-label="map of treatment profiles">'
            f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fafafa" stroke="#ddd"/>'
            f"{labels}{''.join(dots)}</svg>")


def glance(figures: Sequence[tuple[str, str, str]]) -> str:
    """The page's first lines: ``(name, value, beside it)`` in large type."""
    return '<div class="glance">' + "".join(
        f'<div><span class="name">{esc(n)}</span><span class="big">{esc(v)}</span>'
        f'<span class="chance">{esc(c)}</span></div>' for n, v, c in figures) + "</div>"


def page(title: str, top: str, toc: Sequence[tuple[str, str]], body: str,
         index: str = "") -> str:
    """The whole document: head (inline style, no external resource, an empty icon so the
    browser asks for none), title, ``top`` (HTML: the figures at a glance), the contents
    (``(id, heading)`` of each section, then ``index``, e.g. links to every treatment), the
    body and the script."""
    items = "".join(f'<li><a href="#{esc(i)}">{esc(h)}</a></li>' for i, h in toc)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f'<h1 id="top">{esc(title)}</h1>{top}'
            f'<nav class="toc" aria-label="contents"><strong>Contents</strong><ol>{items}</ol>'
            f"{index}</nav>{body}<script>{SCRIPT}</script></body></html>\n")
