"""Defaults of the library's config dataclasses, for the CLI's options.

Every option that sets a config field takes that field's default from here, so ``--help``
cannot drift from the library (``tests/test_cli_help.py`` checks every option). The configs
the CLI reads live in modules that import no torch (:mod:`cellprof.learn.config`,
:mod:`cellprof.report.config`, :mod:`cellprof.example.config` …), so ``cellprof --help`` and
``cellprof crop`` never pay for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of dataclass ``cls`` (a ``default_factory`` is called)."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(cls)
            if f.default is not MISSING or f.default_factory is not MISSING}


def keyword_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """``{parameter: default}`` of a library function, for options that map onto its keywords
    rather than onto a config field (``export``'s level and aggregation)."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}
