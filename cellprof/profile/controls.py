"""Which column names the compound, and which rows are the negative controls.

cellprof calls the compound ``Metadata_Compound`` (BBBC021's and CellProfiler's habit), and
a control is picked by its compound name (``--control DMSO``). The public screens most labs
compare against name them otherwise: JUMP-Cell Painting and LINCS profiles carry the
compound as ``Metadata_pert_iname``, ``Metadata_broad_sample`` or ``Metadata_JCP2022``, and
mark controls by a role column (``Metadata_pert_type == 'negcon'``), not by a name. Both
conventions are served here, once, for every command that chooses compounds or controls:

- :func:`use_compound_column` takes the user's compound column as ``Metadata_Compound``
  (the original column stays, so outputs keep the name the user knows), and
  :func:`use_concentration_column` the dose column (``Metadata_mmoles_per_liter``) as
  ``Metadata_Concentration``;
- :func:`control_rows` selects the controls by name or by a pandas query on the metadata.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.schema import COMPOUND, CONCENTRATION

#: Compound columns of the public screens (JUMP-Cell Painting, LINCS, CDRP …), suggested
#: when a table has no ``Metadata_Compound``.
KNOWN_COMPOUND_COLUMNS = ("Metadata_pert_iname", "Metadata_broad_sample", "Metadata_JCP2022",
                          "Metadata_InChIKey", "Metadata_pert_id", "Metadata_pert_name",
                          "Metadata_compound_name", "Metadata_Symbol")
DEFAULT_CONTROL = "DMSO"


def _listing(columns: list[str], most: int = 12) -> str:
    return ", ".join(columns[:most]) + (" …" if len(columns) > most else "")


def metadata_names(table: pd.DataFrame) -> list[str]:
    """The columns a control query or a compound column can name: ``Metadata_*`` and any
    other non-numeric column (features would drown the list in an error message)."""
    return [str(c) for c in table.columns if str(c).startswith("Metadata_")
            or not pd.api.types.is_numeric_dtype(table[c])]


def missing_compound_message(table: pd.DataFrame, source: str) -> str:
    """Why a table without ``Metadata_Compound`` cannot be matched, and the way out: the
    known compound columns it does have, else its metadata columns."""
    lower = {str(c).lower(): str(c) for c in table.columns}
    found = [lower[k.lower()] for k in KNOWN_COMPOUND_COLUMNS if k.lower() in lower]
    if found:
        return (f"{source} have no {COMPOUND} column but have {', '.join(found)}: pass "
                f"--compound-column {found[0]} to use it as the compound")
    return (f"{source} have no {COMPOUND} column (metadata columns: "
            f"{_listing(metadata_names(table)) or 'none'}): pass --compound-column NAME, or "
            "--image-table (a CellProfiler image table with plate, well, compound and "
            "concentration)")


def use_column(table: pd.DataFrame, column: str | None, canonical: str, option: str,
               source: str = "profiles") -> pd.DataFrame:
    """``table`` with ``column`` copied to ``canonical`` (replacing any there); ``None`` or
    ``canonical`` itself leaves the table as it is. ``column`` may be given in
    CellProfiler's database naming (``Image_Metadata_pert_iname``) or without its
    ``Metadata_`` prefix. ``option`` names the CLI option in the error for a missing column.
    """
    if column is None or column == canonical:
        return table
    name = column if column in table.columns else next(
        (c for c in (column.removeprefix("Image_"), f"Metadata_{column}") if c in table.columns),
        None)
    if name is None:
        raise InputError(f"{option} {column}: {source} have no such column "
                         f"(metadata columns: {_listing(metadata_names(table)) or 'none'})")
    return table.assign(**{canonical: table[name].astype(object).where(table[name].notna())})


def use_compound_column(table: pd.DataFrame, column: str | None, source: str = "profiles"
                        ) -> pd.DataFrame:
    """``table`` with ``column`` copied to ``Metadata_Compound`` (see :func:`use_column`).

    >>> t = pd.DataFrame({"Metadata_pert_iname": ["DMSO", "taxol"]})
    >>> use_compound_column(t, "Metadata_pert_iname")["Metadata_Compound"].tolist()
    ['DMSO', 'taxol']
    """
    return use_column(table, column, COMPOUND, "--compound-column", source)


def use_concentration_column(table: pd.DataFrame, column: str | None,
                             source: str = "profiles") -> pd.DataFrame:
    """``table`` with ``column`` (LINCS' ``Metadata_mmoles_per_liter`` …) copied to
    ``Metadata_Concentration`` (see :func:`use_column`)."""
    return use_column(table, column, CONCENTRATION, "--concentration-column", source)


def control_rows(table: pd.DataFrame, control: str | None = DEFAULT_CONTROL,
                 query: str | None = None, source: str = "profiles") -> np.ndarray:
    """Boolean mask of the negative-control rows: ``Metadata_Compound == control``, or the
    rows ``query`` selects (``pandas.DataFrame.query``, e.g.
    ``"Metadata_pert_type == 'negcon'"``).

    A query that cannot be evaluated (a column the table lacks, bad syntax) or that selects
    nothing raises :class:`InputError` naming ``--control-query`` and the columns there are:
    a control set that is silently empty or wrong would make every later number wrong.

    >>> t = pd.DataFrame({"Metadata_pert_type": ["negcon", "trt", "negcon"]})
    >>> control_rows(t, query="Metadata_pert_type == 'negcon'").tolist()
    [True, False, True]
    """
    if query is None:
        if COMPOUND not in table.columns:
            raise InputError(missing_compound_message(table, source))
        return (table[COMPOUND] == control).to_numpy(bool)
    numbered = table.reset_index(drop=True)
    try:
        chosen = numbered.query(query)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for a bad expression
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--control-query {query!r} cannot be evaluated on the {source} "
                         f"({why}); columns: {_listing(metadata_names(table)) or 'none'}"
                         ) from None
    if not isinstance(chosen, pd.DataFrame) or chosen.empty:
        raise InputError(f"--control-query {query!r} selects no row of the {source}; "
                         f"columns: {_listing(metadata_names(table)) or 'none'}")
    mask = np.zeros(len(table), bool)
    mask[chosen.index.to_numpy()] = True
    return mask


def describe_control(control: str | None, query: str | None) -> str:
    """How the controls were chosen, for messages: ``'DMSO'`` or ``--control-query '…'``."""
    return repr(control) if query is None else f"--control-query {query!r}"


def check_control_options(control: str | None, query: str | None) -> str | None:
    """The control name to use: ``control`` (default DMSO) unless ``query`` chooses the
    controls; both given is an error, since which one wins would be a guess."""
    if query is not None and control is not None:
        raise InputError("--control and --control-query are mutually exclusive: choose the "
                         "controls by compound name or by a query, not both")
    if query is not None and not query.strip():
        raise InputError("--control-query is empty: give a pandas query such as "
                         "\"Metadata_pert_type == 'negcon'\"")
    return None if query is not None else (DEFAULT_CONTROL if control is None else control)
