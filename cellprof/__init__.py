"""cellprof: single-cell crops, an adversarial progressive VAE, and MOA profiling.

The command line (``cellprof``) is a thin layer over this library, so everything it does
can be done from Python with the same functions. They are all importable from here, by
pipeline stage (docs/architecture.md says which folder owns what)::

    from cellprof import synthesize, crop_screen, train, embed, measure, run_match

- prepare: :func:`crop_screen` (plate images + CellProfiler tables -> crop store),
  :func:`import_singlecell` (a folder of single-cell crops), :func:`merge_stores`
- learn: :func:`train` (the adversarial progressive VAE), :func:`embed` (cells -> profiles)
- profile: :func:`measure` (hand-crafted features), :func:`combine_profiles` and
  :func:`join_profiles` (learned and hand-crafted features of the same cells as one
  profile of blocks), :func:`run_match` (treatment profiles, NSC / NSCB / mAP),
  :func:`aggregate` and :func:`export` (pycytominer tables)
- report: :func:`show` (reconstructions, typical cells, interpolations),
  :func:`save_segmentation` (what ``crop --segment`` found, on a few fields),
  :func:`save_match_figures`, :func:`save_training_images`, :func:`match_report` and
  :func:`write_report` (one self-contained HTML page per analysis)
- formats: :func:`read_cells`, :func:`read_crops`, :func:`read_profiles`,
  :func:`load_checkpoint`
- example: :func:`synthesize` (a small synthetic screen), :func:`run_demo`

Each function takes a frozen config dataclass of the same stage (``CropConfig``,
``TrainConfig`` …), also importable from here. Names load on first use, so
``import cellprof`` stays fast and imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "cellprof.example.synth": ("synthesize", "SynthConfig"),
    "cellprof.example.demo": ("run_demo",),
    "cellprof.example.config": ("DemoConfig",),
    "cellprof.prepare.crop": ("crop_screen", "CropConfig"),
    "cellprof.prepare.segment": ("SegmentConfig",),
    "cellprof.prepare.singlecell": ("import_singlecell",),
    "cellprof.prepare.merge": ("merge_stores",),
    "cellprof.learn.train": ("train",),
    "cellprof.learn.embed": ("embed",),
    "cellprof.learn.config": ("ModelConfig", "TrainConfig", "DataConfig", "EmbedConfig"),
    "cellprof.profile.measure": ("measure", "MeasureConfig"),
    "cellprof.profile.combine": ("combine_profiles", "join_profiles"),
    "cellprof.profile.match": ("run_match", "MatchConfig"),
    "cellprof.profile.aggregate": ("aggregate", "export"),
    "cellprof.report.show": ("show",),
    "cellprof.report.config": ("ShowConfig", "ReportConfig"),
    "cellprof.report.page": ("match_report", "write_report"),
    "cellprof.report.plots": ("save_match_figures", "save_training_images"),
    "cellprof.report.segmentation": ("save_segmentation",),
    "cellprof.formats.store": ("read_cells", "read_crops"),
    "cellprof.formats.profiles": ("read_profiles",),
    "cellprof.formats.checkpoint": ("load_checkpoint",),
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'cellprof' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
