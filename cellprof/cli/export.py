"""``cellprof export``: a profiles file as a pycytominer-ready table, without embedding again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellprof.cli._app import _fail, app, console
from cellprof.cli._defaults import defaults
from cellprof.errors import CellprofError, InputError


@app.command()
def export(
    profiles: Annotated[Path, typer.Argument(help="Profiles file from `cellprof embed` (.h5).")],
    format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    level: Annotated[str, typer.Option(
        help="cell (one row per cell), well (mean per plate and well) or treatment (mean of "
             "wells per compound and concentration).")] = "cell",
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Table to write (default: PROFILES.<level>.<format>).",
        show_default=False)] = None,
    method: Annotated[str, typer.Option(
        "--aggregate", help="Well and treatment profiles: mean or median.")] = "mean",
    compound_column: Annotated[str, typer.Option(
        help="Column naming the compound, which --level treatment groups by, e.g. "
             "Metadata_pert_iname (LINCS) or Metadata_JCP2022 (JUMP).")
    ] = defaults("cellprof.profile.match", "MatchConfig")["compound_column"],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Write profiles as a table: Metadata_ columns, then features.

    Identifiers are prefixed as pycytominer expects
    (Metadata_ImageNumber, Metadata_ObjectNumber …), so that
    pycytominer.aggregate(compute_object_count=True) and normalize
    keep them. Profiles are not normalised: `cellprof match` does that.
    """
    from cellprof.profile.aggregate import FORMATS, LEVELS
    from cellprof.profile.aggregate import export as write
    from cellprof.formats.safeio import refuse_inputs

    try:
        if format not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
        if level not in LEVELS:
            raise InputError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
        path = out or profiles.with_suffix(f".{level}.{format}")
        if path.exists() and not overwrite:
            raise InputError(f"{path}: exists; pass --overwrite to replace it")
        if path.suffix != f".{format}" and not path.name.endswith(f".{format}.gz"):
            raise InputError(f"--out {path}: name it *.{format} to match --format {format}")
        refuse_inputs(path, [profiles])  # --overwrite must never replace what it reads
        written = write(profiles, path, level, method, compound_column)
    except CellprofError as exc:
        _fail(exc)
    console.print(f"wrote {level}-level profiles -> {written}")
