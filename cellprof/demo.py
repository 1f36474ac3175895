"""``cellprof demo``: the whole pipeline on a small built-in synthetic screen.

It is the README's first command: a new user sees every stage run and where its output
is. It grows with the pipeline; today it synthesises a screen and crops it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cellprof.crop import CropConfig, CropSummary, crop_screen
from cellprof.errors import InputError
from cellprof.runner import Progress
from cellprof.synth import SynthConfig, SynthResult, synthesize


@dataclass(frozen=True)
class DemoResult:
    """Where every output of the demo is."""

    outdir: Path
    screen: SynthResult
    crops: CropSummary


def run_demo(outdir: str | Path = "cellprof-demo", *, force: bool = False,
             synth: SynthConfig = SynthConfig(), workers: int = 1,
             progress: Progress | None = None) -> DemoResult:
    """Synthesise a screen into ``outdir/screen`` and crop it into ``outdir/crops.h5``.

    Raises
    ------
    InputError
        When ``outdir`` already holds results and ``force`` is not set: a demo never
        overwrites earlier work silently.
    """
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()):
        if not force:
            raise InputError(f"{outdir}: exists and is not empty; pass --force to replace it "
                             "or name another folder")
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    screen = synthesize(outdir / "screen", synth,
                        progress=(lambda d, t: progress("synth", d, t)) if progress else None)
    crops = crop_screen(screen.image_table, outdir / "crops.h5", objects=screen.object_table,
                        moa=screen.moa_table, config=CropConfig(), workers=workers,
                        progress=progress)
    return DemoResult(outdir, screen, crops)
