"""Defaults of the library's config dataclasses, for the CLI's options.

The CLI takes every default from the dataclass that owns it, so ``--help`` cannot drift from
the library. It reads them from the dataclasses' source with :mod:`ast` rather than
importing their modules, because those import torch (seconds), and ``cellprof --help`` or
``cellprof crop`` should not pay for it. Only literal defaults are read; a field whose default
is a name or an expression is left out, so asking for it is a ``KeyError`` caught by
``tests/test_cli.py`` (which also checks every value against the imported dataclass).
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from typing import Any


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_LITERAL


@cache
def defaults(module: str, cls: str) -> dict[str, Any]:
    """``{field: default}`` of dataclass ``cls`` in ``module`` (e.g. "cellprof.learn.train")."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find module {module}")
    with open(spec.origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), spec.origin)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return {st.target.id: _literal(st.value) for st in node.body
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
                    and st.value is not None and _literal(st.value) is not _NOT_LITERAL}
    raise LookupError(f"{module} defines no class {cls}")
