"""Training batches prepared on a thread one step ahead of the loop, on the training device
(on a GPU; on the CPU, on the loop's own thread: see :data:`CPU_AHEAD`).

A background thread draws each step's cells (:meth:`cellprof.learn.data.CropData.raw_batch`,
a pure function of seed, step and rank), gathers their raw crops, copies them to the device
(through pinned memory, without blocking, on CUDA) and turns them into model input there
(:func:`cellprof.learn.data.model_input`: scaling, flips and quarter turns), while the loop
trains on the step before. So on a GPU the CPU only gathers, and on the CPU the training step
pays nothing for its batch. A store that fits in the GPU's memory is copied there once, and
then the thread only draws indices.

Every batch is new tensors: keep one as long as you like. The batches equal
:meth:`~cellprof.learn.data.CropData.train_batch` bit for bit (the same function computes
both), so exact resume and DDP slicing are the data module's guarantees, unchanged.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import torch
from torch import Tensor

from cellprof.learn.data import CropData, as_tensor

CPU_AHEAD = 0
"""Batches made ahead when training on the CPU: none. A CPU batch takes about 1 ms against
a step of 80 ms or more, so there is nothing to hide, and a second thread's torch calls
start a second OpenMP team whose spinning threads compete with the step's for the cores:
on 2 cores the plain VAE's whole command ran at 0.74 of its step alone with the thread
and 0.97 without it (benchmarks/train_throughput.py, docs/benchmarks.md)."""

RESIDENT_SHARE = 0.5
"""Keep the store in GPU memory when it takes at most this share of the free memory."""

Batch = tuple[int, Tensor, Tensor | None]
"""A step, its model input and the discriminator's real crops (None without one)."""


class Loader:
    """Model-input batches of ``steps`` on ``device``: ``(step, x, x_real)`` in order.

    Parameters
    ----------
    data
        The crop store's :class:`~cellprof.learn.data.CropData`.
    batch_size
        Crops per batch on this rank.
    steps
        The steps to deliver (``range(start, stop)``: a resumed run starts mid-way).
    device
        The training device.
    disc
        Also deliver the discriminator's real batch (``x_real``), else ``None``.
    ahead
        Batches queued in advance (besides the one the thread is making); 0 makes every
        batch on the calling thread (the same batches). None: 1 on a GPU, where the host
        would otherwise idle while the device computes, :data:`CPU_AHEAD` on the CPU.
    resident
        Hold an in-memory store as one tensor on ``device`` and gather batches there;
        None: on CUDA when it fits (:data:`RESIDENT_SHARE`). True on the CPU runs the same
        code path, which is how the tests exercise it.
    """

    def __init__(self, data: CropData, batch_size: int, steps: range, device: torch.device, *,
                 disc: bool, ahead: int | None = None, resident: bool | None = None) -> None:
        self.data, self.batch_size, self.steps, self.device = data, batch_size, steps, device
        if ahead is None:
            ahead = CPU_AHEAD if device.type == "cpu" else 1
        self.disc, self.ahead = disc, ahead
        self.wait_s = 0.0
        """Seconds the consumer spent waiting for batches."""
        self.resident = self._resident(resident)
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(max(1, ahead))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _resident(self, wanted: bool | None) -> Tensor | None:
        """The whole store on the device, when it is in memory and fits comfortably."""
        raw = self.data._all
        if raw is None or wanted is False:
            return None
        if wanted is None:
            if self.device.type != "cuda":
                return None
            free, _ = torch.cuda.mem_get_info(self.device)
            if raw.nbytes > RESIDENT_SHARE * free:
                return None
        return as_tensor(raw).to(self.device)  # once, blocking: no pinned copy of it all

    def batch(self, step: int) -> Batch:
        """Step ``step``'s ``(step, x, x_real)`` on the device, made on the calling thread."""
        steps = [step] + ([self.data.disc_step(step, self.batch_size)] if self.disc else [])
        out = [self.data.raw_batch(s, self.batch_size, gather=self.resident is None)
               .model_input(self.device, self.resident) for s in steps]
        return step, out[0], out[1] if self.disc else None

    def _put(self, item: Batch | BaseException | None) -> bool:
        """Queue ``item`` unless the consumer has stopped; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        if self.device.type == "cuda":  # pin and copy for this device, not for device 0
            torch.cuda.set_device(self.device)
        try:
            for step in self.steps:
                if not self._put(self.batch(step)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(None)

    def __iter__(self) -> Iterator[Batch]:
        if self.ahead == 0:
            for step in self.steps:
                t0 = time.perf_counter()
                item = self.batch(step)
                self.wait_s += time.perf_counter() - t0
                yield item
            return
        self._thread = threading.Thread(target=self._produce, name="cellprof-loader",
                                        daemon=True)
        self._thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = self._queue.get()
                self.wait_s += time.perf_counter() - t0
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                yield item
        finally:
            self.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the producer thread (a loop left early: Ctrl-C, divergence)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
