"""``cellprof demo``: the whole pipeline on a small built-in synthetic screen.

It is the README's first command, so a new user sees every stage run and learns where its
output is: synth -> crop -> train -> embed -> match (with its report page) -> show, each
stage the same library call the CLI makes, into one folder; it ends on
``report/report.html``. It also matches the profiles of the model's untrained weights
(``baseline/``) beside the trained ones, so the headline comes with what training bought on
this screen.
Training is sized for a few minutes on a laptop CPU (the paper's
architecture, fewer steps, the progressive schedule scaled to them).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cellprof.errors import CellprofError, InputError
from cellprof.example.config import DemoConfig
from cellprof.example.synth import SynthResult, synthesize
from cellprof.formats.store import read_info
from cellprof.learn.data import DataConfig
from cellprof.learn.embed import EmbedConfig, EmbedResult, embed
from cellprof.learn.train import (
    TrainConfig,
    TrainResult,
    held_out_error,
    initial_checkpoint,
    scaled_schedule,
    train,
)
from cellprof.prepare.crop import CropConfig, CropSummary, crop_screen
from cellprof.prepare.runner import Progress
from cellprof.profile.match import MatchConfig, MatchResult
from cellprof.report.config import ReportConfig
from cellprof.report.page import match_report
from cellprof.report.plots import save_match_figures, save_training_images
from cellprof.report.results import chance
from cellprof.report.show import ShowConfig, ShowResult, show


class DemoInterrupted(CellprofError):
    """Ctrl-C or SIGTERM stopped the demo's training: nothing after it ran.

    A partly trained model (16 of 500 steps) embeds and matches as noise; going on with it
    printed NSC figures of that noise and exited 0. ``signal`` is the signal's number (the
    CLI exits 128 + it, as ``cellprof train`` does); ``training`` says where the run is.
    """

    def __init__(self, training: TrainResult, steps: int, crops: Path) -> None:
        import signal as signals

        self.training, self.signal = training, training.signal or signals.SIGINT
        name = signals.Signals(self.signal).name
        run = training.out
        super().__init__(
            f"interrupted ({name}) at training step {training.step} of {steps}: nothing was "
            f"embedded or matched; the run folder is {run} (checkpoint {training.checkpoint}); "
            f"continue it with `cellprof train {crops} --out {run} --resume`, then embed, "
            f"match and show as docs/cli.md#demo lists, or start the demo over with --force")


@dataclass(frozen=True)
class DemoResult:
    """Where every output of the demo is."""

    outdir: Path
    screen: SynthResult
    crops: CropSummary
    training: TrainResult
    profiles: EmbedResult
    report: MatchResult
    figures: ShowResult
    page: Path
    """report/report.html: the one page to open first (``cellprof match --html``)."""
    baseline: MatchResult | None = None
    """The same matching on the profiles of the untrained model (``baseline/profiles.h5``,
    matched into ``report/compare`` and set beside the trained model's on the page), or None
    when ``DemoConfig.baseline`` is off."""
    baseline_error: dict[str, float] | None = None
    """The untrained model's held-out reconstruction error on the run's held-out fields
    (``val_pixel``, ``val_mse``), beside ``training.val``; None without the baseline."""

    @property
    def chance_nsc(self) -> float:
        """NSC of a random nearest neighbour, as the report page gives it beside the
        headline (:func:`cellprof.report.results.chance`)."""
        import pandas as pd

        return chance(pd.read_csv(self.report.paths["treatments"]))["nsc"]


def run_demo(outdir: str | Path = "cellprof-demo", *, force: bool = False,
             config: DemoConfig = DemoConfig(), progress: Progress | None = None,
             train_progress: Callable[[int, int, dict[str, float]], None] | None = None,
             ) -> DemoResult:
    """Run every stage into ``outdir``; see the module docstring.

    Raises
    ------
    InputError
        When ``outdir`` already holds results and ``force`` is not set: a demo never
        overwrites earlier work silently.
    DemoInterrupted
        When Ctrl-C or SIGTERM stopped the training (its checkpoint is saved); the later
        stages do not run on a partly trained model.
    """
    outdir = Path(outdir)
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        if not force:
            raise InputError(f"{outdir}: exists and is not empty; pass --force to replace it "
                             "or name another folder")
        if outdir.is_dir():
            shutil.rmtree(outdir)
        else:
            outdir.unlink()
    outdir.mkdir(parents=True, exist_ok=True)
    screen = synthesize(outdir / "screen", config.synth,
                        progress=(lambda d, t: progress("synth", d, t)) if progress else None)
    crops = crop_screen(screen.image_table, outdir / "crops.h5", objects=screen.object_table,
                        moa=screen.moa_table, config=CropConfig(size=config.crop_size),
                        workers=config.workers, progress=progress)
    channels = read_info(crops.out).channels
    model_config = scaled_schedule(config.steps, replace(
        config.model, in_channels=len(channels), image_size=config.crop_size))
    training = train(crops.out, outdir / "run", model_config=model_config,
                     config=TrainConfig(steps=config.steps, batch_size=config.batch_size,
                                        seed=config.train_seed, device=config.device,
                                        precision=config.precision,
                                        val_every=max(1, config.steps // 4),
                                        image_every=config.steps,
                                        checkpoint_every=max(1, config.steps // 4)),
                     data_config=DataConfig(), progress=train_progress,
                     pictures=save_training_images)
    if training.status == "interrupted":
        raise DemoInterrupted(training, config.steps, crops.out)
    embedding = EmbedConfig(device=config.device, precision=config.precision)
    profiles = embed(training.checkpoint, crops.out, outdir / "profiles.h5", config=embedding,
                     progress=progress)
    matching = MatchConfig(normalize=config.normalize, normalize_at=config.normalize_at)
    compare, baseline_error = [], None
    if config.baseline:  # matched beside the trained profiles on the page ("compare")
        untrained = initial_checkpoint(outdir / "baseline" / "untrained.pt", model_config,
                                       channels, config.train_seed)
        baseline_error = held_out_error(untrained, crops.out, seed=config.train_seed,
                                        device=config.device)
        compare = [embed(untrained, crops.out, outdir / "baseline" / "profiles.h5",
                         config=embedding).out]
    page = match_report(profiles.out, outdir / "report", matching,
                        crops=crops.out, model=training.checkpoint, run=training.out,
                        compare=compare, config=ReportConfig(device=config.device))
    report, baseline = page.match, page.compare
    save_match_figures(report)
    figures = show(training.checkpoint, crops.out, outdir / "figures", profiles=profiles.out,
                   config=ShowConfig(device=config.device))
    return DemoResult(outdir, screen, crops, training, profiles, report, figures, page.path,
                      baseline, baseline_error)
