"""The report page's budget on the 12-MOA BBBC021 screen: its size, the time writing it adds
to `cellprof match`, and how soon Chromium shows its first screen.

Run by hand on an idle machine, from the repository root::

    python benchmarks/report_size.py [--crops /work/bench-moa/singlecell_moa.h5]
        [--model /work/bench-moa/house_vae-gan-progressive_s0/model.pt] [--work DIR]
        [--no-compare] [--device cpu]

1. The profiles are made as a user makes them: ``cellprof embed MODEL CROPS`` (learned) and
   ``cellprof measure CROPS`` (hand-crafted), into ``--work`` (kept: a second run reuses
   them).
2. ``match``: :func:`cellprof.profile.match.run_match` of the learned profiles (DMSO
   z-scores of the whole screen's cells: its plates hold one DMSO well each), alone (the
   time the page adds to).
3. ``page``: what ``cellprof match --html`` does beyond it, on that folder: the inputs
   checked (:func:`cellprof.report.page.check_inputs`: the model loaded, the profiles'
   cells against the store's) and the page written (:func:`~cellprof.report.page.write_report`,
   with the model, its run folder's curves and the hand-crafted profiles' own match run
   beside, unless ``--no-compare``; that second match is a match, not timed here).
4. ``render``: the system's Chromium (Playwright, headless) opens the file; the first
   contentful paint and the load event, in seconds after navigation starts.

Budgets (issue 20): at most 15 MB, at most 30 s added to match, first screen under 3 s.
Prints one table; it asserts nothing (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cellprof.profile.match import MatchConfig, run_match
from cellprof.report.config import ReportConfig
from cellprof.report.page import COMPARE, check_inputs, write_report

BUDGET = {"size_mb": 15.0, "page_s": 30.0, "first_paint_s": 3.0}
_FIRST_PAINT = """() => new Promise(done => new PerformanceObserver(list => {
    const e = list.getEntriesByName('first-contentful-paint')[0];
    if (e) done(e.startTime);
}).observe({type: 'paint', buffered: true}))"""


def cellprof(*args: str) -> None:
    """Run a cellprof command as a user would (``python -m cellprof``)."""
    subprocess.run([sys.executable, "-m", "cellprof", *args], check=True)


def profiles(crops: Path, model: Path, work: Path, device: str) -> tuple[Path, Path]:
    """Learned and hand-crafted profiles of ``crops``, made once into ``work``."""
    learned, classic = work / "profiles.h5", work / "classic.h5"
    if not learned.exists():
        cellprof("embed", str(model), str(crops), "--out", str(learned), "--device", device)
    if not classic.exists():
        cellprof("measure", str(crops), "--out", str(classic))
    return learned, classic


def render(page: Path) -> tuple[float, float]:
    """(first contentful paint, load event) of ``page`` in Chromium, in seconds."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.goto(page.resolve().as_uri(), wait_until="load")
            # the paint entry is recorded after the frame is presented, maybe after load
            paint = tab.evaluate(_FIRST_PAINT)
            load = tab.evaluate("() => performance.getEntriesByType('navigation')[0]"
                                ".loadEventEnd")
        finally:
            browser.close()
    return (paint or float("nan")) / 1000, load / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", type=Path, default=Path("/work/bench-moa/singlecell_moa.h5"))
    ap.add_argument("--model", type=Path,
                    default=Path("/work/bench-moa/house_vae-gan-progressive_s0/model.pt"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/cellprof-report-bench"))
    ap.add_argument("--no-compare", action="store_true", help="without hand-crafted beside")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    learned, classic = profiles(args.crops, args.model, args.work, args.device)
    # most BBBC021 plates hold one DMSO well: the controls of the whole screen, as the
    # 12-MOA benchmark pools them
    out, config = args.work / "results", MatchConfig(scope="screen", normalize_at="cell")
    t0 = time.perf_counter()
    run_match(learned, out, config)
    t_match = time.perf_counter() - t0
    compare = None
    if not args.no_compare:
        compare = run_match(classic, out / COMPARE, config).out_dir
    t0 = time.perf_counter()
    inputs = check_inputs(learned, crops=args.crops, model=args.model,
                          compare=[] if compare is None else [classic])
    page = write_report(out, inputs, compare_dir=compare,
                        config=ReportConfig(device=args.device))
    t_page = time.perf_counter() - t0
    paint, load = render(page.path)
    size = page.size / 1e6
    rows = [("size (MB)", f"{size:.1f}", BUDGET["size_mb"]),
            ("match alone (s)", f"{t_match:.1f}", None),
            ("page added to match (s)", f"{t_page:.1f}", BUDGET["page_s"]),
            ("first contentful paint (s)", f"{paint:.2f}", BUDGET["first_paint_s"]),
            ("load event (s)", f"{load:.2f}", None)]
    print(f"report of {args.crops} ({len(page.treatments) - 1} treatments, model "
          f"{args.model}{', hand-crafted beside' if compare else ''}) -> {page.path}")
    print(f"{'':28} {'measured':>9} {'budget':>7}")
    for name, value, budget in rows:
        print(f"{name:28} {value:>9} {'' if budget is None else f'<= {budget:g}':>7}")
    for note in page.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
