"""The ``cellprof`` Typer app, its console and the helpers every command shares."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cellprof import __version__
from cellprof.errors import CellprofError

app = typer.Typer(
    name="cellprof", no_args_is_help=True, add_completion=False,
    help="Image-based cell profiling: crop cells, train an adversarial progressive VAE, "
         "embed every cell, and match treatments by mechanism of action.",
)
console = Console(stderr=True)


class _Notes(logging.Handler):
    """The library's log (``logging.getLogger("cellprof")``) as yellow notes on stderr:
    e.g. why a partial output was started over rather than resumed."""

    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        console.print(f"[{style}]note:[/] {record.getMessage()}", highlight=False,
                      soft_wrap=True)


_log = logging.getLogger("cellprof")
if not any(isinstance(h, _Notes) for h in _log.handlers):
    _log.addHandler(_Notes())
    _log.setLevel(logging.INFO)


def _version(value: bool) -> None:
    if value:
        print(f"cellprof {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """cellprof: crop -> train -> embed -> match."""


class _Bars:
    """One rich progress display for a whole command: a bar per stage.

    Called as ``bars(stage, done, total)`` (the library's progress callback); ``bars.train``
    is the training callback ``(step, total, metrics)``, which shows the latest losses and
    cells/s beside its bar. One display serves every stage, since terminals show one
    live display at a time.
    """

    def __init__(self, bar: Progress) -> None:
        self.bar, self.tasks = bar, {}

    def __call__(self, stage: str, done: int, total: int, info: str = "") -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, info=info)
        self.bar.update(self.tasks[stage], completed=done, total=total, info=info)

    def train(self, step: int, total: int, metrics: dict[str, float]) -> None:
        names = {"cells_per_s": "cells/s", "val_mse": "val MSE", "pixel": "pixel", "kl": "KL",
                 "fm": "fm", "disc": "disc"}
        info = ", ".join(f"{label} {metrics[k]:.3g}" for k, label in names.items()
                         if k in metrics)
        self("train", step, total, info)


@contextmanager
def _progress() -> Iterator[_Bars]:
    """The command's progress display (silent on DDP ranks other than 0)."""
    info = Column(no_wrap=True, overflow="ellipsis", max_width=36)
    with Progress(TextColumn("[bold]{task.description:<6}"), BarColumn(bar_width=24),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}", table_column=info),
                  console=console,
                  disable=int(os.environ.get("RANK", "0")) != 0) as bar:
        yield _Bars(bar)


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _fail(exc: CellprofError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
