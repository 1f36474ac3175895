"""The field-by-field run loop shared by table cropping and single-cell import.

Workers compute; only the parent writes. Results are committed in input order (so a
resumed run continues exactly after the last committed field, and two runs write
identical files), with at most ``IN_FLIGHT * workers`` fields in flight, which bounds
memory by a few fields no matter how large the screen. Where workers are forked (Linux),
their crops come back through shared memory rather than the result pipe (:class:`Transfer`).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import mmap
import multiprocessing
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


class Transfer(Protocol[R]):
    """How a result's large arrays travel from a worker process to the parent through a
    shared-memory slot rather than the result pipe.

    A field's crops (1-2 MB) sent through the pipe are pickled, written and read 64 KB
    at a time, and unpickled; the worker blocks until the parent has read them all, which
    it does only when it holds the GIL between commits. Through a slot, the worker copies
    them once and sends a few bytes; the parent copies them once. Slots are anonymous
    shared mappings made before the workers fork, not files in ``/dev/shm``: a container's
    small ``/dev/shm`` does not limit them, and nothing outlives the run's processes, even
    when they are killed.
    """

    def pack(self, result: R, slot: memoryview) -> R:
        """In the worker: ``result`` with its arrays moved into ``slot`` (those that fit)."""
        ...

    def unpack(self, result: R, slot: memoryview) -> R:
        """In the parent: ``result`` with the arrays ``pack`` moved taken back out."""
        ...


SLOT_BYTES = 16 << 20
"""Size of one shared slot (a field of ~600 crops of 3 x 68 x 68 16-bit pixels; a larger
result goes through the pipe). Address space only: a slot's pages are resident once a
result has used them."""

_SLOTS: dict[int, list[mmap.mmap]] = {}
"""Each ``ordered_map`` run's slots, by run id, for the worker processes forked from it."""


def _run_in_slot(fn: Callable[[T], R], transfer: Transfer[R], run: int, slot: int,
                 item: T) -> R:
    """A worker's task: ``fn(item)``, its arrays packed into slot ``slot`` of run ``run``."""
    return transfer.pack(fn(item), memoryview(_SLOTS[run][slot]))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                transfer: Transfer[R] | None = None) -> Iterator[R]:
    """``map(fn, items)`` over ``workers`` processes, in order, few items in flight.

    With ``transfer``, results come back through shared memory (see :class:`Transfer`)
    where worker processes are forked, as on Linux; elsewhere through the pipe.
    """
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    window = IN_FLIGHT * workers
    context = multiprocessing.get_context()
    run = id(items)
    if transfer is not None and context.get_start_method() == "fork":
        # Made before the pool forks its workers, so they share these pages.
        _SLOTS[run] = [mmap.mmap(-1, SLOT_BYTES) for _ in range(window)]
    slots = _SLOTS.get(run)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_worker_start, initargs=(os.getpid(),)) as pool:
            pending: deque[tuple[Future[R], int]] = deque()

            def submit(item: T, slot: int) -> None:
                if slots is None:
                    pending.append((pool.submit(fn, item), slot))
                else:
                    pending.append((pool.submit(_run_in_slot, fn, transfer, run, slot, item),
                                    slot))

            it = iter(items)
            try:
                for slot, item in zip(range(window), it):
                    submit(item, slot)
                while pending:
                    future, slot = pending.popleft()
                    result = future.result()
                    if slots is not None and transfer is not None:
                        result = transfer.unpack(result, memoryview(slots[slot]))
                    for item in itertools.islice(it, 1):  # the slot is free again
                        submit(item, slot)
                    yield result
            finally:
                for future, _ in pending:
                    future.cancel()
    finally:
        for m in _SLOTS.pop(run, []):
            try:
                m.close()
            except BufferError:  # an array still views it (an exception's frame): the
                pass             # mapping goes when that does


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
