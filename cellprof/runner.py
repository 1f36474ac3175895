"""The field-by-field run loop shared by table cropping and single-cell import.

Workers compute; only the parent writes. Results are committed in input order (so a
resumed run continues exactly after the last committed field, and two runs write
identical files), with at most ``2 * workers`` fields in flight, which bounds memory by
a few fields no matter how large the screen.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

import pandas as pd

from cellprof.errors import InputError
from cellprof.store import CropStoreWriter

log = logging.getLogger("cellprof")
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


def _worker_start(parent: int) -> None:
    """Set up a worker process: it dies with its parent (a killed ``crop`` must not leave
    orphans reading images), and leaves Ctrl-C to the parent, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # Linux: the kernel sends SIGKILL when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a fallback): poll for the parent
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, in order, few items in flight."""
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    window = 2 * workers
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_start,
                             initargs=(os.getpid(),)) as pool:
        pending: deque[Future[R]] = deque()
        it = iter(items)
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


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
