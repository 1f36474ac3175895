"""The ``cellprof`` Typer app, its console and the helpers every command shares."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
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


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar per stage, fed by the library's ``progress(stage, done, total)``."""
    with Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=console) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _fail(exc: CellprofError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _train_progress() -> Iterator[Callable[[int, int, dict[str, float]], None]]:
    """Step bar with the latest losses, cells/s and ETA."""
    with Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                  disable=int(os.environ.get("RANK", "0")) != 0) as bar:
        task = None

        def update(step: int, total: int, metrics: dict[str, float]) -> None:
            nonlocal task
            info = " ".join(f"{k}={metrics[k]:.3g}" for k in
                            ("pixel", "kl", "fm", "disc", "val_mse", "cells_per_s") if k in metrics)
            if task is None:
                task = bar.add_task("train", total=total, info=info)
            bar.update(task, completed=step, info=info)

        yield update


