"""The README's Python examples run as written: a user copies them first."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import cellprof

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_every_name_the_examples_import_is_public() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2
    for code in blocks:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom):
                assert node.module == "cellprof", "examples import from the package's face"
                for alias in node.names:
                    assert alias.name in cellprof.__all__, alias.name
                    getattr(cellprof, alias.name)


def test_the_hand_crafted_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[0], "README.md", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out
    assert re.search(r"NSC \d+%, NSCB \d+%, mAP \d\.\d\d", printed)
    assert "DMSO" in printed  # cells per compound
    assert (tmp_path / "report-classic" / "confusion_nsc.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "report-classic" / "metrics.json").read_text())
    assert metrics["n_treatments"] > 0
