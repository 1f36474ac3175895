"""The field-by-field run loop shared by table cropping and single-cell import.

Workers compute; only the parent writes. Results are committed in input order (so a
resumed run continues exactly after the last committed field, and two runs write
identical files), with at most ``IN_FLIGHT * workers`` fields in flight, which bounds
memory by a few fields no matter how large the screen.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

import pandas as pd

from cellprof.errors import InputError
from cellprof.formats.store import CropStoreWriter

log = logging.getLogger("cellprof")
IN_FLIGHT = 4
"""Fields queued per worker process: enough that workers keep cropping while the parent
commits a batch (two fields a worker left them idle: 2-3% slower with --workers 2)."""
T = TypeVar("T")
R = TypeVar("R")


class Progress(Protocol):
    """Progress callback: ``progress(stage, done, total)``."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


def worker_count(requested: int, n_tasks: int) -> int:
    """``--workers`` capped at the number of tasks (more would only idle), with a warning
    above the number of CPUs (more processes than cores only add memory and switching)."""
    if requested < 1:
        raise InputError(f"--workers must be at least 1, got {requested}")
    cpus = os.cpu_count() or 1
    if requested > cpus:
        log.warning("--workers %d is more than this machine's %d CPUs; expect no speed-up "
                    "beyond %d", requested, cpus, cpus)
    return max(1, min(requested, n_tasks))


def _worker_start() -> None:
    """Set up a worker process: it dies with the process that started the pool (a killed
    ``crop`` must not leave orphans reading images), and leaves Ctrl-C to that process,
    which stops cleanly.

    The worker watches that process's sentinel (:func:`multiprocessing.parent_process`),
    which ends with it under every start method (a forked worker also keeps open the pipes
    behind the sentinels of those forked before it, so they end in turn, last first). Its
    parent process id would not do: a worker started by a fork server (Python 3.14's
    default on Linux) is the fork server's child, not the crop's.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    """End this process once ``sentinel``'s process has ended (at once if it has)."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, in order, few items in flight.

    Workers start the way this process starts its children
    (:func:`multiprocessing.set_start_method`, else Python's default: ``fork`` or, from
    Python 3.14, ``forkserver`` on Linux, ``spawn`` on macOS and Windows). ``fn``, the items
    and the results travel pickled, whichever way.
    """
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(),
                             initializer=_worker_start) as pool:
        it = iter(items)
        pending: deque[Future[R]] = deque(
            pool.submit(fn, item) for item in itertools.islice(it, IN_FLIGHT * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(it, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


def commit_results(results: Iterable[Any], writer: CropStoreWriter, *, strict: bool,
                   total: int, done: int, progress: Progress | None) -> None:
    """Write each worker result as one committed field, in order."""
    n = done
    if progress:
        progress("crop", n, total)
    for res in results:
        if strict and res.issues:
            first = res.issues[0]
            row = f", row {first['row']}" if int(first["row"]) >= 0 else ""
            raise InputError(f"{first['file']}{row}: {first['reason']} (--strict)")
        writer.add_field(res.field, res.crops, res.cells,
                         pd.DataFrame(res.issues) if res.issues else None)
        n += 1
        if progress:
            progress("crop", n, total)
