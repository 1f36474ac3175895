"""The report page in a real browser: the system's Chromium, driven headless by Playwright.

What a mail attachment opened offline must do: no console error, no request leaving the
file, every picture decoded, every treatment's section there and reachable from its link,
the headline metrics.json's, the long tables sortable by a click, and everything still
readable with scripts off. A local run without a browser skips, saying why; CI sets
CELLPROF_REQUIRE_BROWSER=1 (.ci/run), which turns the skip into a failure.
CELLPROF_REPORT_SCREENSHOT=path also saves the first screen there (docs/images/report.png).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cellprof.learn.embed import EmbedConfig, embed
from cellprof.profile.match import MatchConfig
from cellprof.profile.measure import measure
from cellprof.report.config import ReportConfig
from cellprof.report.page import ReportResult, match_report


@pytest.fixture(scope="session")  # session: set up before the session's screen
def chromium() -> str:
    """The system's Chromium, or skip (fail under CELLPROF_REQUIRE_BROWSER=1) saying why;
    asked first, so a skip builds no screen."""
    why = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "Playwright is not installed (pip install -e '.[dev]' installs it)"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not why and exe is None:
        why = "no chromium on PATH (apt-get install chromium; Playwright's own is not used)"
    if why:
        if os.environ.get("CELLPROF_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why}, and CELLPROF_REQUIRE_BROWSER=1 requires the browser test")
        pytest.skip(why)
    return str(exe)


@pytest.fixture(scope="module")
def report(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> ReportResult:
    """The page of the tiny synthetic screen with its model, beside hand-crafted profiles."""
    model, crops = tiny_model
    folder = tmp_path_factory.mktemp("browser")
    learned = embed(model, crops, folder / "profiles.h5",
                    config=EmbedConfig(precision="fp32", tta="none")).out
    res = match_report(learned, folder / "results", MatchConfig(permutations=20),
                       crops=crops, model=model, compare=[measure(crops, folder / "c.h5").out],
                       config=ReportConfig(cells_per_treatment=3, steps=3))
    return res


_BROKEN_LINKS = """() => Array.from(document.querySelectorAll('a[href^="#"]'))
    .map(a => a.getAttribute('href').slice(1))
    .filter(id => id && !document.getElementById(decodeURIComponent(id)))"""
_EXTERNAL = """() => Array.from(document.querySelectorAll('[src], [href]'))
    .map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => /^\\s*(https?:)?\\/\\//i.test(u))"""
_COLUMN = """([table, col]) => Array.from(document.querySelectorAll(table + ' tbody tr'))
    .map(r => r.cells[col].getAttribute('data-key') || r.cells[col].textContent)"""


def test_report_in_a_real_browser(chromium: str, report: ReportResult, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    res, exe = report, chromium
    metrics = json.loads((res.match.out_dir / "metrics.json").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            fetched: list[str] = []  # anything but the file itself and inline data

            def refuse(route) -> None:
                url = route.request.url
                if url.startswith(("file:", "data:")):
                    return route.continue_()
                fetched.append(url)
                return route.abort()
            context.route("**/*", refuse)
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(res.path.as_uri(), wait_until="load")
            page.screenshot(path=tmp_path / "report.png")
            if target := os.environ.get("CELLPROF_REPORT_SCREENSHOT"):
                page.screenshot(path=target)

            images = page.evaluate("() => Array.from(document.images).map("
                                   "i => [i.alt, i.complete, i.naturalWidth])")
            assert len(images) == 17 * 3 + 1  # per section cells, reconstructions, path; curves
            assert [i for i in images if not (i[1] and i[2] > 0)] == []
            for label, anchor in res.treatments.items():
                heading = page.locator(f"#{anchor} h3").inner_text()
                assert heading.startswith(label), (label, heading)
            nsc = page.locator("#headline [data-metric=nsc]")
            assert float(nsc.get_attribute("data-key")) == metrics["nsc"]
            assert nsc.inner_text() == f"{metrics['nsc']:.1%}"
            assert float(page.locator("#headline [data-metric=map]").get_attribute(
                "data-key")) == metrics["map"]
            assert page.evaluate(_BROKEN_LINKS) == [] and page.evaluate(_EXTERNAL) == []
            # a treatment's link in the contents scrolls to its section
            last, anchor = list(res.treatments.items())[-1]
            page.click(f'nav a[href="#{anchor}"]')
            assert page.evaluate("() => location.hash") == f"#{anchor}"
            assert page.locator(f"#{anchor}").is_visible() and page.evaluate("scrollY") > 0
            # the per-MOA table sorts by mAP on a click, then the other way
            head = page.locator("#moa th", has_text="mAP").first
            head.click()
            up = [float(v) for v in page.evaluate(_COLUMN, ["#moa table", 3])]
            head.click()
            down = [float(v) for v in page.evaluate(_COLUMN, ["#moa table", 3])]
            assert up == sorted(up) and down == sorted(up, reverse=True)
            assert problems == [] and fetched == []

            # scripts off: every section, every table row and the headline are still there
            still = browser.new_context(java_script_enabled=False).new_page()
            still.goto(res.path.as_uri(), wait_until="load")
            for section in res.sections:
                assert still.locator(f"section#{section} h2").is_visible()
            assert still.locator("#neighbours tbody tr").count() == 16
            assert still.locator("#headline [data-metric=nsc]").inner_text() == \
                nsc.inner_text()
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
