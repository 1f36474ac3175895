"""The field-by-field run loop shared by table cropping and single-cell import.

Workers compute; only the parent writes. Results are committed in input order (so a
resumed run continues exactly after the last committed field, and two runs write
identical files), with at most ``2 * workers`` fields in flight, which bounds memory by
a few fields no matter how large the screen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

import pandas as pd

from cellprof.errors import InputError
from cellprof.store import CropStoreWriter

T = TypeVar("T")
R = TypeVar("R")


class Progress(Protocol):
    """Progress callback: ``progress(stage, done, total)``."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, in order, few items in flight."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    window = 2 * workers
    with ProcessPoolExecutor(max_workers=workers) as pool:
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
