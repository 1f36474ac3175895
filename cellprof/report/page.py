"""The report page: one self-contained HTML file per analysis (``cellprof match --html``).

A match run leaves eight files; nobody opens eight files to learn whether taxol looks like
nocodazole, and why. The page puts them in one document that opens offline from a mail
attachment (:mod:`cellprof.report.html`): what was profiled, the headline beside chance,
mAP per mechanism, the NSC confusion, a map of the treatments and their nearest neighbours,
the training curves, learned against hand-crafted profiles, and per treatment its cells,
their reconstructions and its typical cell beside the control's (:mod:`cellprof.report.cells`).

Everything it shows is read back from the match folder
(:func:`~cellprof.report.results.read_match`), so its headline is metrics.json's. Inputs
that do not belong together (a model trained on other channels than the store's, profiles
of other cells than the crops, a run folder that is not one) are refused by
:func:`check_inputs` before anything is written; the page itself is written to a temporary
name and renamed when complete.

Typical use::

    res = match_report("profiles.h5", "results", crops="crops.h5", model="run")
    print(res.path)  # results/report.html
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cellprof.errors import InputError
from cellprof.formats.safeio import private_atomic_path
from cellprof.profile.controls import use_compound_column
from cellprof.profile.match import MatchConfig, MatchResult, run_match
from cellprof.report import html as h
from cellprof.report import sections as sec
from cellprof.report.cells import CellPictures, decoded_cells, real_cells, show_config
from cellprof.report.config import ReportConfig
from cellprof.report.results import read_match
from cellprof.report.sources import (
    ProfileSource,
    StoreSummary,
    check_cells,
    check_profiles_model,
    check_run_folder,
    losses,
    profile_source,
    run_folder_of,
    store_summary,
)
from cellprof.report.treatment_sections import treatments
from cellprof.report.treatments import group_cells

NAME = "report.html"
COMPARE = "compare"
"""Subfolder of the match folder holding the compared profiles' match run."""


@dataclass(frozen=True)
class ReportInputs:
    """The inputs of a page, checked to belong together (:func:`check_inputs`)."""

    sources: list[ProfileSource]
    compare: list[ProfileSource] = field(default_factory=list)
    crops: StoreSummary | None = None
    model: Path | None = None
    checkpoint: dict[str, Any] | None = None
    """The model's path, step, model_config and train_config (no weights)."""
    run: Path | None = None
    """The run folder whose losses.csv the page draws."""
    latents: Path | None = None
    """Profiles learned by ``model`` from these very cells: the typical cells' means."""
    compare_model: Path | None = None
    """The model the compared learned profiles were embedded with, when at hand: both
    models' reconstructions of held-out cells are then set side by side."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportResult:
    path: Path
    size: int
    """Bytes."""
    sections: list[str]
    """The ids of the page's sections, in order."""
    treatments: dict[str, str]
    """Treatment -> the id of its section."""
    notes: tuple[str, ...] = ()
    match: MatchResult | None = None
    compare: MatchResult | None = None


def _checkpoint(model: Path, crops: StoreSummary) -> dict[str, Any]:
    """The model's description, after refusing one trained on other channels or crop size
    than the store's (loaded safely, ``weights_only``)."""
    from cellprof.formats.checkpoint import check_fits, load_checkpoint

    ckpt = load_checkpoint(model)
    check_fits(ckpt, crops.channels, crops.crop_size, crops.path)
    return {k: ckpt.get(k) for k in ("path", "step", "model_config", "train_config")}


def check_inputs(profiles: str | Path | Sequence[str | Path], *, crops: str | Path | None = None,
                 model: str | Path | None = None, run: str | Path | None = None,
                 compare: Sequence[str | Path] = (), match: MatchConfig = MatchConfig()
                 ) -> ReportInputs:
    """Read and check what a page is made from; raise a :class:`CellprofError` saying what
    does not belong together, before anything is written.

    ``profiles`` (and ``compare``) are the files matched; ``crops`` the crop store whose
    cells the page shows (every cell of a cellprof profiles file must be one of its cells,
    and its cells must name the control of ``match``, in its compound column); ``model`` a
    checkpoint or run folder trained on the store's channels and crop size (and, for learned
    profiles, the one they were embedded with); ``run`` the run folder whose training curves
    are drawn, by default the model's (or the learned profiles' model's).
    """
    paths = [profiles] if isinstance(profiles, (str, Path)) else list(profiles)
    sources = [profile_source(p) for p in paths]
    others = [profile_source(p) for p in compare]
    if model is not None and crops is None:
        raise InputError(f"--model {model}: the page decodes cells of a crop store: give "
                         "--crops (the store the profiles were made from)")
    summary = store_summary(crops) if crops is not None else None
    if summary is not None:  # the crops' treatments: their compound column and control
        cfg = show_config(asdict(match), ReportConfig())
        group_cells(use_compound_column(summary.cells, cfg.compound_column,
                                        f"{summary.path}: the crop store's cells"),
                    summary.path, cfg)
    same = [check_cells(s, summary) for s in sources + others] if summary else []
    ckpt = _checkpoint(Path(model), summary) if model is not None and summary else None
    learned = [check_profiles_model(s, ckpt) for s in sources] if ckpt else []
    latents = sources[0].path if len(sources) == 1 and learned and learned[0] and same[0] \
        else None
    notes: list[str] = []
    if run is not None:
        folder: Path | None = check_run_folder(run)
    else:
        recorded = model or next((s.checkpoint for s in sources if s.checkpoint), None)
        folder = run_folder_of(recorded) if recorded else None
        if recorded and folder is None:
            notes.append(f"no run folder (losses.csv) beside {recorded}: no training curves; "
                         "pass --run with the folder `cellprof train --out` wrote")
    other_model = _compared_model(others, summary, notes) if ckpt and summary else None
    return ReportInputs(sources, others, summary, Path(model) if model else None, ckpt,
                        folder, latents, other_model, tuple(notes))


def _compared_model(others: list[ProfileSource], crops: StoreSummary,
                    notes: list[str]) -> Path | None:
    """The one model the compared profiles were learned with, checked to fit the store and
    to be the model they were embedded with; None (with a note when it is recorded but
    gone) when they are not learned ones or it is not at hand."""
    recorded = {s.checkpoint for s in others}
    if not others or any(s.kind != "learned" for s in others) or len(recorded) != 1:
        return None
    path = recorded.pop()
    if path is None:
        return None
    if not path.is_file():
        notes.append(f"the compared profiles' model {path} is not at hand: no reconstructions "
                     "of both models side by side")
        return None
    check_profiles_model(others[0], _checkpoint(path, crops))
    return path


def write_report(match_dir: str | Path, inputs: ReportInputs, *,
                 compare_dir: str | Path | None = None, config: ReportConfig = ReportConfig(),
                 out: str | Path | None = None) -> ReportResult:
    """Write the page of the match run in ``match_dir`` (to ``match_dir/report.html``
    unless ``out``), with ``compare_dir`` (the compared profiles' match run) side by side."""
    run = read_match(match_dir)
    main = sec.analysis(run, inputs.sources, config.neighbours)
    other = sec.analysis(read_match(compare_dir), inputs.compare, config.neighbours) \
        if compare_dir is not None else None
    if other is not None:
        main, other = sec.distinct(main, other)
    labels = [str(t) for t in run.treatments["treatment"]]
    pictures = _pictures(inputs, labels, run.config, config)
    taken: set[str] = set()
    control = [pictures.control] if pictures is not None and pictures.control else []
    anchors = {t: h.anchor(t, taken) for t in [*control, *labels]}
    curves = None
    if inputs.run is not None:
        from cellprof.report.curves import training_curves

        curves = training_curves(losses(inputs.run))
    pair = None
    if other is not None and inputs.model is not None and inputs.compare_model is not None:
        from cellprof.report.models import model_pair

        pair = model_pair((inputs.model, inputs.compare_model), (main.label, other.label),
                          inputs.crops, run.config, config)
    data = sec.PageData(main, other, inputs.crops, inputs.checkpoint, inputs.run, curves,
                        pictures, config, list(inputs.notes), anchors, pair)
    found = [s for s in (sec.profiled(data), sec.headline(data), sec.per_moa(data),
                         sec.confusion(data), sec.profile_map_section(data),
                         sec.neighbours(data), sec.training(data), sec.comparison(data),
                         treatments(data)) if s is not None]
    # the pictures' notes are said where the pictures would be (treatments)
    body = "".join(f'<p class="note">{h.esc(n)}</p>' for n in inputs.notes) + "".join(
        f'<section id="{s.id}"><h2>{h.esc(s.title)}</h2>{s.body}</section>' for s in found)
    where = Path(match_dir).resolve()
    text = h.page(f"cellprof report: {where.parent.name}/{where.name}", sec.glance(data),
                  [(s.id, s.title) for s in found], body, "".join(s.toc for s in found))
    path = Path(out) if out is not None else Path(match_dir) / NAME
    # a temporary of this run's own: two pages written at once never share one
    with private_atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    notes = tuple(inputs.notes) + (pictures.notes if pictures is not None else ())
    return ReportResult(path, path.stat().st_size, [s.id for s in found], anchors, notes)


def _pictures(inputs: ReportInputs, labels: list[str], match: dict[str, Any],
              config: ReportConfig) -> CellPictures | None:
    """Each treatment's pictures: decoded with a model, real cells alone without one."""
    if inputs.crops is None:
        return None
    if inputs.model is None:
        return real_cells(inputs.crops, labels, match, config)
    return decoded_cells(inputs.model, inputs.crops, labels, match, config, inputs.latents)


def match_report(profiles: str | Path | Sequence[str | Path], out_dir: str | Path,
                 match_config: MatchConfig = MatchConfig(), *,
                 image_table: str | Path | None = None, moa: str | Path | None = None,
                 crops: str | Path | None = None, model: str | Path | None = None,
                 run: str | Path | None = None, compare: Sequence[str | Path] = (),
                 config: ReportConfig = ReportConfig()) -> ReportResult:
    """Check the inputs, match ``profiles`` (and ``compare``, into ``out_dir/compare``, with
    the same settings), and write ``out_dir/report.html``: ``cellprof match --html``."""
    inputs = check_inputs(profiles, crops=crops, model=model, run=run, compare=compare,
                          match=match_config)
    single = profiles if isinstance(profiles, (str, Path)) else (
        profiles[0] if len(profiles) == 1 else list(profiles))
    result = run_match(single, out_dir, match_config, image_table=image_table, moa=moa)
    other = run_match(compare[0] if len(compare) == 1 else list(compare),
                      Path(out_dir) / COMPARE, match_config, image_table=image_table,
                      moa=moa) if compare else None
    res = write_report(out_dir, inputs, compare_dir=other.out_dir if other else None,
                       config=config)
    return replace(res, match=result, compare=other)
