"""The ``cellprof`` Typer app, its console and the helpers every command shares."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

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
from rich.table import Column
from typer.core import TyperCommand, TyperGroup

from cellprof import __version__
from cellprof.errors import CellprofError


class _Settings:
    """Options of the ``cellprof`` command itself (before the subcommand)."""

    debug = bool(os.environ.get("CELLPROF_DEBUG"))
    quiet = False


class _Guarded(TyperGroup):
    """Every command runs here: what a user can cause ends as one red line, never a
    traceback (``cellprof --debug CMD`` or ``CELLPROF_DEBUG=1`` shows it), and SIGTERM
    ends a command as Ctrl-C does, through its clean-up (partial files closed
    consistently), with exit status 143."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _valueless_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except CellprofError as exc:
            _fail(exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("typer") or _Settings.debug or \
                    isinstance(exc, BrokenPipeError):  # `cellprof … | head`: Typer's case
                raise
            console.print(f"[bold red]error:[/] {describe(exc)} (cellprof --debug "
                          f"{ctx.invoked_subcommand or ''} … shows where)", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def describe(exc: BaseException) -> str:
    """One line for an unexpected error: the file and the system's reason for OS errors
    (read-only folder, full disk, a folder where a file was expected)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


app = typer.Typer(
    name="cellprof", no_args_is_help=True, add_completion=False, cls=_Guarded,
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
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an unexpected error.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bars or lines; notes and errors only.")] = False,
) -> None:
    """cellprof: crop -> train -> embed -> match."""
    _Settings.debug = debug or bool(os.environ.get("CELLPROF_DEBUG"))
    _Settings.quiet = quiet


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
        self("train", step, total, _losses(metrics))


def _losses(metrics: dict[str, float]) -> str:
    names = {"cells_per_s": "cells/s", "val_mse": "val MSE", "pixel": "pixel", "kl": "KL",
             "fm": "fm", "disc": "disc"}
    return ", ".join(f"{label} {metrics[k]:.3g}" for k, label in names.items() if k in metrics)


class _Lines(_Bars):
    """Progress for batch logs (Slurm, CI: stderr is not a terminal), where a live bar
    would print only when its stage ends: one plain line per stage at its start, then
    every ``every`` seconds (``CELLPROF_PROGRESS_EVERY``, default 30) and at its end::

        train 400/2000 (20%) 0:01:10 eta 0:04:40 pixel 812, KL 20.1, cells/s 611
    """

    def __init__(self, every: float) -> None:
        self.every = every
        self.stages: dict[str, tuple[float, int, float]] = {}  # start, done at start, last

    def __call__(self, stage: str, done: int, total: int, info: str = "") -> None:
        now = time.monotonic()
        if stage not in self.stages:
            self.stages[stage] = (now, done, -float("inf"))
        start, first, last = self.stages[stage]
        if now - last < self.every and done < total:
            return
        self.stages[stage] = (start, first, now)
        elapsed = now - start
        eta = elapsed / (done - first) * (total - done) if done > first else None
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        line = (f"{stage} {done}/{total}{pct} {_clock(elapsed)} eta "
                f"{_clock(eta) if eta is not None else '?'}" + (f" {info}" if info else ""))
        console.print(line, highlight=False, markup=False, soft_wrap=True)


class _Silent(_Bars):
    """``--quiet``: no progress at all."""

    def __init__(self) -> None:
        pass

    def __call__(self, stage: str, done: int, total: int, info: str = "") -> None:
        pass


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@contextmanager
def _progress() -> Iterator[_Bars]:
    """The command's progress display: live bars in a terminal, plain lines at intervals
    in a batch log, nothing with ``--quiet`` or on DDP ranks other than 0."""
    if _Settings.quiet or int(os.environ.get("RANK", "0")) != 0:
        yield _Silent()
        return
    if not console.is_terminal:
        yield _Lines(float(os.environ.get("CELLPROF_PROGRESS_EVERY", "30")))
        return
    info = Column(no_wrap=True, overflow="ellipsis", max_width=36)
    with Progress(TextColumn("[bold]{task.description:<6}"), BarColumn(bar_width=24),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}", table_column=info),
                  console=console) as bar:
        yield _Bars(bar)


def _unwrap(doc: str) -> str:
    """A docstring with each paragraph on one line, so the help formatter wraps it to the
    terminal once (source lines kept as they are would each wrap again at 80 columns,
    "…against the" / "control, and …"). Paragraphs marked ``\b`` keep their lines."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _valueless_flags(params: list[Any]) -> list[Any]:
    """Flags take no value, so their help line shows no ``<bool>`` beside them."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """Every command: as Typer's, with flags shown without a value type."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _valueless_flags(super().get_params(ctx))


def finish_commands(typer_app: typer.Typer) -> None:
    """Apply :func:`_unwrap` to every command's docstring, and make it a :class:`_Command`
    (called once, at import, after every command is registered)."""
    for info in typer_app.registered_commands:
        if info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = _unwrap(info.callback.__doc__)
        if info.cls in (None, TyperCommand):
            info.cls = _Command


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _given(ctx: typer.Context) -> set[str]:
    """Options the user typed (or set in the environment), as opposed to defaults."""
    return {name.rstrip("_") for name in ctx.params  # compile_ is the option --compile
            if getattr(ctx.get_parameter_source(name), "name", "") in
            ("COMMANDLINE", "ENVIRONMENT", "PROMPT")}


def _fail(exc: CellprofError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
