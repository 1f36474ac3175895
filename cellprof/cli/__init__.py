"""The ``cellprof`` command: a thin layer of options over the library.

Every command maps its options onto a library call (``cellprof.prepare.crop.crop_screen`` …),
and each option onto a field of that stage's config dataclass, whose default it shows, so
what the CLI does a notebook can do too. ``--help`` keeps one line per option; the reasons
and measurements are in docs/cli.md. Errors a user can fix (:class:`CellprofError`)
print as one red line and exit with status 1, never a traceback. Commands live in
:mod:`cellprof.cli.prepare` (synth, crop, merge), :mod:`cellprof.cli.learn` (train, embed,
measure), :mod:`cellprof.cli.report` (combine, match, show, demo) and :mod:`cellprof.cli.export`
(export).
"""

# Importing the command modules registers their commands, in this order in --help.
from cellprof.cli import prepare  # noqa: F401, I001
from cellprof.cli import learn  # noqa: F401
from cellprof.cli import report  # noqa: F401
from cellprof.cli import export  # noqa: F401
from cellprof.cli._app import app, console, finish_commands

finish_commands(app)  # after every command is registered


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cellprof")


__all__ = ["app", "console", "main"]
