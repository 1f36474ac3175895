"""``cellprof export``: a profiles file as a pycytominer-ready table, without embedding again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from cellprof.cli._app import app, console
from cellprof.cli._defaults import defaults, keyword_defaults
from cellprof.errors import InputError
from cellprof.profile.aggregate import FORMATS, LEVELS, export_table
from cellprof.profile.match import AGGREGATES, MatchConfig

_X = keyword_defaults(export_table)


@app.command()
def export(
    profiles: Annotated[Path, typer.Argument(help="Profiles file from `cellprof embed` (.h5).")],
    format: Annotated[Literal[FORMATS], typer.Option(
        "--format", help="Table format.")] = "parquet",
    level: Annotated[Literal[LEVELS], typer.Option(
        help="Rows of the table.")] = _X["level"],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Table to write \\[default: beside PROFILES].",
        show_default=False)] = None,
    method: Annotated[Literal[AGGREGATES], typer.Option(
        "--aggregate", help="Well and treatment profiles.")] = _X["method"],
    compound_column: Annotated[str, typer.Option(
        help="Compound column.")
    ] = defaults(MatchConfig)["compound_column"],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")
    ] = False,
) -> None:
    """Write profiles as a table: Metadata_ columns, then features.

    Identifiers are prefixed as pycytominer expects (Metadata_ImageNumber …), so that
    pycytominer.aggregate and normalize keep them. Profiles are not normalised: `cellprof
    match` does that. Details: docs/cli.md#export.
    """
    from cellprof.formats.safeio import refuse_inputs
    from cellprof.profile.aggregate import export as write

    path = out or profiles.with_suffix(f".{level}.{format}")
    if path.suffix != f".{format}" and not path.name.endswith(f".{format}.gz"):
        raise InputError(f"--out {path}: name it *.{format} to match --format {format}")
    refuse_inputs(path, [profiles])  # --overwrite must never replace what it reads
    # One writer at a time, and "exists" checked under its lock (see export's docstring).
    written = write(profiles, path, level, method, compound_column, overwrite=overwrite)
    console.print(f"wrote {level}-level profiles -> {written}")
