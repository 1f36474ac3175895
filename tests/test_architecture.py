"""The package's layout is a contract: each folder may import only the folders below it.

``formats`` (on-disk contracts) at the bottom; ``prepare`` and ``learn`` above it, beside
each other (neither imports the other); ``profile`` above them; ``report`` above that;
``example`` and ``cli`` on top. ``errors`` and the package root are below everything.
Lazy imports inside functions count too: they are the same dependency, only later.
See docs/architecture.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cellprof"

MAY_IMPORT: dict[str, set[str]] = {
    "root": {"root"},
    "formats": {"root", "formats"},
    "prepare": {"root", "formats", "prepare"},
    "learn": {"root", "formats", "learn"},
    "profile": {"root", "formats", "prepare", "learn", "profile"},
    "report": {"root", "formats", "prepare", "learn", "profile", "report"},
    "example": {"root", "formats", "prepare", "learn", "profile", "report", "example"},
    "cli": {"root", "formats", "prepare", "learn", "profile", "report", "example", "cli"},
}


def _room(module: str) -> str:
    """The folder of a dotted module name ("cellprof.learn.train" -> "learn")."""
    parts = [p for p in module.split(".") if p != "__init__"]
    if parts[0] != "cellprof":
        raise ValueError(module)
    if len(parts) > 1 and parts[1] == "__main__":  # the entry point is the CLI
        return "cli"
    if len(parts) == 1 or parts[1] == "errors":
        return "root"
    if parts[1] not in MAY_IMPORT:
        raise AssertionError(f"{module}: cellprof/{parts[1]} is not a folder of the layout")
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported cellprof module) for every import in ``path``, lazy ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cellprof")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("cellprof"):
            if node.module == "cellprof":  # "from cellprof import x": x may be a folder
                found += [(node.lineno, f"cellprof.{a.name}" if a.name in MAY_IMPORT
                           else "cellprof") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_folder_of_the_layout() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py")
             if p.name not in ("__init__.py", "__main__.py", "errors.py")]
    assert loose == [], f"modules outside the layout's folders: {loose}"
    for path in _modules():
        _room(".".join(("cellprof",) + path.relative_to(PACKAGE).with_suffix("").parts))


def test_no_import_runs_against_the_layout() -> None:
    against = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        here = _room(".".join(("cellprof",) + rel.with_suffix("").parts))
        for line, module in _imports(path):
            there = _room(module)
            if there not in MAY_IMPORT[here]:
                against.append(f"cellprof/{rel}:{line} ({here}) imports {module} ({there})")
    assert against == [], "imports against the layout:\n" + "\n".join(against)


def test_the_checker_sees_a_lazy_import_against_the_layout(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cellprof.report.plots import save_grid\n")
    assert _imports(bad) == [(2, "cellprof.report.plots")]
    assert "report" not in MAY_IMPORT["learn"]


@pytest.mark.parametrize("module", ["cellprof", "cellprof.cli"])
def test_importing_the_package_or_the_cli_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False", f"import {module} imported torch"


def test_the_public_api_is_importable_from_the_package() -> None:
    """Every name ``cellprof`` lists is the library's own object, loaded on first use."""
    import importlib

    import cellprof

    for name in cellprof.__all__:
        if name == "__version__":
            continue
        value = getattr(cellprof, name)
        module = importlib.import_module(cellprof._WHERE[name])
        assert value is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cellprof.nothing  # noqa: B018


@pytest.mark.parametrize("script", sorted((PACKAGE.parent / "benchmarks").glob("*.py")),
                         ids=lambda p: p.name)
def test_every_benchmark_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmarks run by hand, so a moved function would break them unseen: each must at
    least import (their main() runs only as a script)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look themselves up
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
