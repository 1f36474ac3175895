"""`cellprof --help` as a user meets it: one screen per command, one line per option, every
default the library's own, the choices listed, and no torch imported to show it."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest
import typer.main

from cellprof.cli import app
from cellprof.example.config import DemoConfig
from cellprof.example.synth import SynthConfig
from cellprof.learn.config import (
    BALANCES,
    CROP_SCALINGS,
    PADDINGS,
    PRECISIONS,
    UPSAMPLINGS,
    VARIANTS,
    DataConfig,
    EmbedConfig,
    ModelConfig,
    TrainConfig,
)
from cellprof.prepare.crop import EDGES, CropConfig
from cellprof.prepare.segment import SegmentConfig
from cellprof.profile.aggregate import FORMATS, LEVELS, export_table
from cellprof.profile.match import AGGREGATES, METRICS, NONFINITE, NORMALIZE_AT, MatchConfig
from cellprof.profile.measure import MeasureConfig
from cellprof.profile.normalize import METHODS, SCOPES
from cellprof.report.config import ReportConfig, ShowConfig

COMMANDS = typer.main.get_command(app).commands

# The dataclasses each command's options map onto (an option sets the field of its name, or
# of its ALIAS), and the options that set no field: inputs, outputs and how the run goes.
CONFIGS = {
    "synth": [SynthConfig], "crop": [CropConfig, SegmentConfig], "merge": [],
    "train": [ModelConfig, TrainConfig, DataConfig], "embed": [EmbedConfig],
    "measure": [MeasureConfig], "combine": [], "match": [MatchConfig, ReportConfig],
    "show": [ShowConfig],
    "demo": [DemoConfig, SynthConfig], "export": [MatchConfig],
}
ALIAS = {("train", "model"): "variant", ("train", "filters"): "enc_filters",
         ("train", "memory_limit"): "memory_limit_gb", ("train", "compile_"): "compile",
         ("show", "cells"): "cells_per_treatment", ("match", "cells"): "cells_per_treatment"}
KEYWORDS = {"embed": export_table, "measure": export_table, "export": export_table}
"""Options that map onto a library function's keyword (the table's ``level``) instead."""
NOT_SETTINGS = {
    "synth": {"outdir"},
    "crop": {"image_table", "out", "objects", "segment", "singlecell", "metadata", "root", "moa",
             "workers", "strict", "overwrite"},
    "merge": {"inputs", "out", "overwrite"},
    "train": {"ctx", "crops", "out", "resume", "overwrite", "schedule"},
    "embed": {"checkpoint", "crops", "out", "format", "overwrite"},
    "measure": {"crops", "out", "format", "overwrite"},
    "combine": {"profiles", "out", "names", "overwrite"},
    "match": {"profiles", "out", "image_table", "moa", "html", "crops", "model", "run",
              "compare"},
    "show": {"checkpoint", "crops", "out", "profiles"},
    "demo": {"outdir", "force"},
    "export": {"profiles", "format", "out", "overwrite"},
}
CHOICES = {
    ("train", "model"): VARIANTS, ("train", "decoder_padding"): PADDINGS,
    ("train", "decoder_upsample"): UPSAMPLINGS, ("train", "fm_balance"): BALANCES,
    ("train", "crop_scaling"): CROP_SCALINGS, ("train", "precision"): PRECISIONS,
    ("train", "schedule"): ("paper", "scaled"), ("embed", "precision"): PRECISIONS,
    ("embed", "format"): FORMATS, ("embed", "level"): LEVELS, ("measure", "level"): LEVELS,
    ("crop", "edge"): EDGES, ("crop", "compression"): ("gzip", "none"),
    ("match", "scope"): SCOPES, ("match", "metric"): METRICS,
    ("match", "normalize_at"): NORMALIZE_AT, ("match", "nonfinite"): NONFINITE,
    ("match", "aggregate"): AGGREGATES, ("export", "format"): FORMATS,
    ("export", "level"): LEVELS, ("export", "method"): AGGREGATES,
}


def _field_default(cls: type, name: str) -> object:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default if f.default is not dataclasses.MISSING else f.default_factory()
    raise KeyError(name)


def test_every_option_default_is_its_config_fields() -> None:
    """Each option is a field of its command's config (with that field's default), a
    keyword of the library function, or named above as no setting: a new option must say
    which, so --help cannot drift from the library."""
    assert set(COMMANDS) == set(CONFIGS)
    for command, cmd in COMMANDS.items():
        for param in cmd.params:
            name = ALIAS.get((command, param.name), param.name)
            if param.name in NOT_SETTINGS[command]:
                continue
            owners = [cls for cls in CONFIGS[command]
                      if name in {f.name for f in dataclasses.fields(cls)}]
            if owners:
                expected = _field_default(owners[0], name)
                if (command, name) == ("crop", "offset"):  # "X,Y" on the command line
                    assert tuple(float(v) for v in param.default.split(",")) == expected
                    continue
                if (command, name) == ("train", "balance_by"):  # "A,B"; unset is no columns
                    assert param.default is None and expected == ()
                    continue
            else:
                keywords = inspect.signature(KEYWORDS[command]).parameters \
                    if command in KEYWORDS else {}
                assert name in keywords, f"{command} --{param.name}: which setting is it?"
                expected = keywords[name].default
            assert param.default == expected, (command, param.name)
    # demo --seed is the seed of the demo's screen, whose other settings are DEMO_SCREEN's
    from cellprof.example.config import DEMO_SCREEN

    assert _field_default(DemoConfig, "synth") == DEMO_SCREEN
    assert DEMO_SCREEN.seed == SynthConfig().seed


def test_choices_are_typed_and_listed() -> None:
    for (command, name), choices in CHOICES.items():
        param = next(p for p in COMMANDS[command].params if p.name == name)
        assert tuple(param.type_descriptor.choices) == tuple(choices), (command, name)
    normalize = next(p for p in COMMANDS["match"].params if p.name == "normalize")
    assert set(METHODS) < set(normalize.type_descriptor.choices)  # and pycytominer's names
    assert normalize.metavar == f"<{'|'.join(METHODS)}>"


_RENDER = """
import json, sys
from typer.testing import CliRunner
from cellprof.cli import app
import typer.main
names = [[]] + [[c] for c in typer.main.get_command(app).commands]
runner = CliRunner()
out = {" ".join(n): runner.invoke(app, [*n, "--help"]).output for n in names}
print(json.dumps({"help": out, "torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def rendered() -> dict:
    """Every command's --help at 100 columns, from a fresh interpreter."""
    env = {"COLUMNS": "100", "TERMINAL_WIDTH": "100", "PATH": "", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-c", _RENDER], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(proc.stdout)


def test_help_imports_no_torch(rendered: dict) -> None:
    """`cellprof --help`, `cellprof crop --help` (and every other command's) stay fast."""
    assert set(rendered["help"]) == {"", *COMMANDS}
    assert rendered["torch"] is False


def _panel_lines(text: str) -> dict[str, int]:
    """{panel title: lines inside it} of a rich help screen."""
    counts, title = {}, None
    for line in text.splitlines():
        if line.startswith("╭─"):
            title = line.strip("╭─╮ ")
            counts[title] = 0
        elif line.startswith("╰"):
            title = None
        elif title is not None:
            counts[title] += 1
    return counts


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_fits_a_screen_one_line_per_option(rendered: dict, command: str) -> None:
    text = rendered["help"][command]
    assert len(text.rstrip().splitlines()) <= 60, text
    assert "<bool>" not in text, text  # a flag takes no value
    cmd = COMMANDS[command] if command else typer.main.get_command(app)
    want: dict[str, int] = {}
    for param in cmd.params + [cmd.get_help_option(typer.Context(cmd))]:
        if not getattr(param, "hidden", False) and param.name != "ctx":
            panel = getattr(param, "rich_help_panel", None) or (
                "Arguments" if param.param_type_name == "argument" else "Options")
            want[panel] = want.get(panel, 0) + 1
    if not command:
        want["Commands"] = len(COMMANDS)
    assert _panel_lines(text) == want, f"an option's help wraps:\n{text}"
