"""The settings of ``cellprof show`` and of the report page, in a module that imports no torch
(the CLI reads its defaults from them; :mod:`cellprof.report.show` draws the pictures,
:mod:`cellprof.report.page` writes the page)."""

from __future__ import annotations

from dataclasses import dataclass

from cellprof.errors import InputError
from cellprof.profile.controls import check_control_options


@dataclass(frozen=True)
class ShowConfig:
    """Settings of ``cellprof show``."""

    cells_per_treatment: int = 8
    """Cells drawn at random per treatment for the reconstructions."""
    control: str | None = None
    """Compound name of the negative control (its concentrations are pooled); None means
    DMSO, unless ``control_query`` chooses the controls (give one, not both)."""
    control_query: str | None = None
    """The controls as a pandas query on the cells' metadata, e.g.
    ``"Metadata_pert_type == 'negcon'"`` (JUMP, LINCS); see :mod:`cellprof.profile.controls`."""
    compound_column: str = "Metadata_Compound"
    """The column naming each cell's compound (``Metadata_pert_iname`` …)."""
    treatment: str | None = None
    """Interpolation target: "compound@conc", or a compound (its highest concentration);
    None picks the treatment whose mean latent is farthest from the control's."""
    steps: int = 8
    """Interpolation frames, t = 0 (control) ... 1 (treatment)."""
    seed: int = 0
    """Seeds which cells are shown, and which are encoded for the means."""
    mean_cells: int = 2000
    """Without profiles: at most this many random cells per treatment are encoded for its mean."""
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
    always float32."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "control",
                           check_control_options(self.control, self.control_query))
        for name, option, least in (("cells_per_treatment", "--cells", 1), ("steps", "--steps", 2),
                                    ("mean_cells", "mean_cells", 1)):
            if getattr(self, name) < least:
                raise InputError(f"{option} must be at least {least}, got {getattr(self, name)}")


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the report page (``cellprof match --html``) beyond the match's own."""

    cells_per_treatment: int = 6
    """Random cells shown per treatment (and their reconstructions with a model): six
    68-px cells of 103 treatments keep the BBBC021 page near 10 MB."""
    steps: int = 6
    """Frames from the control's typical cell (t=0) to the treatment's (t=1)."""
    neighbours: int = 3
    """Nearest treatments of other compounds listed per treatment."""
    seed: int = 0
    """Seeds which cells are shown (as ``cellprof show``'s ``--seed``)."""
    device: str = "auto"
    """Where the model decodes: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        for name, option, least in (("cells_per_treatment", "--cells", 1), ("steps", "steps", 2),
                                    ("neighbours", "neighbours", 1)):
            if getattr(self, name) < least:
                raise InputError(f"{option} must be at least {least}, got {getattr(self, name)}")
