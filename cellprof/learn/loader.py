"""Training batches prepared ahead of the step, finished on the training device.

A background thread draws each step's cells (:meth:`cellprof.learn.data.CropData.raw_batch`, a
pure function of seed, step and rank) and gathers their raw crops on the CPU, a few steps
ahead of the loop; on CUDA it puts them in pinned memory so the copy to the GPU does not
block. The device then turns raw crops into model input in torch (:func:`model_input`):
scaling and the flips and quarter turns. So the CPU only gathers, and a GPU never waits for
numpy. A store that fits in the GPU's memory is copied there once, and then the thread only
draws indices.

When the device *is* the CPU, the thread also finishes the batches
(:meth:`cellprof.learn.data.RawBatch.model_input`, numpy in one pass over the pixels, which
releases the GIL): then the training step, not the loop, pays nothing for them, and the
torch path's several passes (integer widening, scaling, one gather per orientation) would
cost twice as much for the same numbers. It writes into a ring of preallocated arrays:
fresh multi-megabyte arrays cost as much again in page faults as filling them. So a CPU
batch stays intact while the two steps after it are taken, then its buffer is refilled
(the training loop uses each batch within its step); copy it to keep it longer.

The result equals :meth:`~cellprof.learn.data.CropData.train_batch` bit for bit (both divide the
same float32 numbers and move the same pixels), so exact resume and DDP slicing are the
data module's guarantees, unchanged.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cellprof.learn.data import CropData, RawBatch
from cellprof.learn.device import to_device

RESIDENT_SHARE = 0.5
"""Keep the store in GPU memory when it takes at most this share of the free memory."""


def as_tensor(crops: np.ndarray) -> Tensor:
    """Raw crops as a tensor for the copy: uint16 travels as int16 bits (every torch >= 2.2
    copies int16; :func:`to_float` reads the bits back as unsigned)."""
    if crops.dtype == np.uint16:
        return torch.from_numpy(crops.view(np.int16))
    return torch.from_numpy(crops)


def to_float(raw: Tensor) -> Tensor:
    """Raw crops (from :func:`as_tensor`) as float32 intensities."""
    if raw.dtype == torch.int16:
        return raw.to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
    return raw.to(torch.float32)


Groups = list[tuple[int, bool, Tensor]]
"""(quarter turns, mirrored, indices of the crops oriented so): crops grouped by orientation."""


def orientation_groups(turns: np.ndarray, flips: np.ndarray) -> Groups:
    """The crops of each of the 8 orientations, as index tensors on the host.

    Computed where the orientations are drawn, so the device never has to find them
    (a ``nonzero`` on a GPU would make the CPU wait for the GPU's queue to drain).
    """
    groups = []
    for k in range(4):
        for f in (False, True):
            idx = np.flatnonzero((turns == k) & (flips == f))
            if len(idx):
                groups.append((k, f, torch.from_numpy(idx)))
    return groups


def model_input(raw: Tensor, scale: Tensor | None, groups: Groups | None) -> Tensor:
    """(N, C, H, W) raw crops -> float32 model input, on their device.

    ``scale`` None: each crop and channel divided by its own maximum (``max``); else
    ``(x - scale[0]) / scale[1]`` clipped at 0 (``percentile``). Then the crops of each
    group ``(k, f, idx)`` are turned ``k`` quarter turns and mirrored when ``f``, as
    :func:`cellprof.learn.data.orient` does.
    """
    x = to_float(raw)
    if scale is None:
        x = x / x.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    else:
        x = ((x - scale[0][:, :, None, None]) / scale[1][:, :, None, None]).clamp_min(0.0)
    if groups is None:
        return x.contiguous()
    out = torch.empty_like(x)
    for k, f, idx in groups:
        y = torch.rot90(x[idx], k, dims=(2, 3))
        out[idx] = y.flip(-1) if f else y
    return out


@dataclass
class _Host:
    """A step's batches on the host, ready to copy: per batch its raw crops (or, for a
    store on the device, its cell indices), its percentile scale and orientation groups."""

    step: int
    parts: list[tuple[Tensor | None, Tensor | None, Tensor | None, Groups | None]]
    ready: list[Tensor] | None = None
    """Finished model input (the CPU device), instead of ``parts``."""


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
        Steps prepared in advance; 0 draws every batch on the calling thread (the same
        batches, for tests and debugging).
    resident
        Hold an in-memory store as one tensor on ``device`` and gather batches there;
        None: on CUDA when it fits (:data:`RESIDENT_SHARE`). True on the CPU runs the same
        code path, which is how the tests exercise it.
    """

    def __init__(self, data: CropData, batch_size: int, steps: range, device: torch.device, *,
                 disc: bool, ahead: int = 3, resident: bool | None = None) -> None:
        self.data, self.batch_size, self.steps, self.device = data, batch_size, steps, device
        self.disc, self.ahead = disc, ahead
        self.wait_s = 0.0
        """Seconds the consumer spent waiting for batches."""
        self.resident = self._resident(resident)
        self._scratch: list[np.ndarray] = []  # raw crops of each batch, finished at once
        self._ring: list[list[np.ndarray]] = []  # finished CPU batches, reused in turn
        self._made = 0
        self._draw = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._queue: queue.Queue[_Host | BaseException | None] = queue.Queue(max(1, ahead))
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

    # --- producer ----------------------------------------------------------------------
    def _host(self, step: int) -> _Host:
        steps = [step] + ([self.data.disc_step(step, self.batch_size)] if self.disc else [])
        if self.device.type == "cpu" and self.resident is None:
            return _Host(step, [], self._finished_on_cpu(steps))
        pin = (lambda t: t.pin_memory()) if self.device.type == "cuda" else (lambda t: t)
        parts = []
        for s in steps:
            b: RawBatch = self.data.raw_batch(s, self.batch_size, gather=self.resident is None)
            crops = pin(as_tensor(b.crops)) if b.crops is not None else None
            cells = pin(torch.from_numpy(b.cells)) if b.crops is None else None
            scale = pin(torch.from_numpy(b.scale)) if b.scale is not None else None
            groups = None if b.turns is None else [
                (k, f, pin(idx)) for k, f, idx in orientation_groups(b.turns, b.flips)]
            parts.append((crops, cells, scale, groups))
        return _Host(step, parts)

    def _finished_on_cpu(self, steps: list[int]) -> list[Tensor]:
        """The batches of ``steps`` as float32 tensors, finished in a ring of buffers; for a
        store in memory, the step's two batches (autoencoder's, discriminator's) on two
        threads at once."""
        shape = self.data.crop_shape(self.batch_size)
        store = self.data._all  # in memory: crops gathered while they are finished
        if not self._ring:
            self._scratch = [] if store is not None else \
                [np.empty(shape, self.data.info.dtype) for _ in steps]
            self._ring = [[np.empty(shape, np.float32) for _ in steps]
                          # queued (ahead) + being filled (1) + taken and kept (3)
                          for _ in range(self.ahead + 4)]
        slot = self._ring[self._made % len(self._ring)]
        self._made += 1

        def finish(k: int) -> Tensor:
            with self._draw:  # the stream's caches are not shared across threads
                raw = self.data.raw_batch(steps[k], self.batch_size, gather=store is None,
                                          out=self._scratch[k] if store is None else None)
            # numpy frees the GIL; reading the store in memory needs no lock
            return torch.from_numpy(raw.model_input(out=slot[k], source=store))

        if len(steps) == 1 or not self.data.in_memory:
            # a streamed store's cost is decompression, already spread over every core
            # (cellprof.formats.chunks); a second thread here measured slower (8.5k vs 12k crops/s)
            return [finish(k) for k in range(len(steps))]
        other = self._helper().submit(finish, 1)
        return [finish(0), other.result()]

    def _helper(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cellprof-loader-2")
        return self._pool

    def _put(self, item: _Host | BaseException | None) -> bool:
        """Queue ``item`` unless the consumer has stopped; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for step in self.steps:
                if not self._put(self._host(step)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(None)

    # --- consumer ----------------------------------------------------------------------
    def _finish(self, host: _Host) -> tuple[int, Tensor, Tensor | None]:
        def dev(t: Tensor) -> Tensor:
            return to_device(t, self.device)

        if host.ready is not None:
            return host.step, host.ready[0], host.ready[1] if self.disc else None
        out = []
        for crops, cells, scale, groups in host.parts:
            raw = dev(crops) if crops is not None else self.resident[dev(cells)]
            out.append(model_input(raw, None if scale is None else dev(scale),
                                   None if groups is None else
                                   [(k, f, dev(idx)) for k, f, idx in groups]))
        return host.step, out[0], out[1] if self.disc else None

    def __iter__(self) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        if self.ahead == 0:
            for step in self.steps:
                t0 = time.perf_counter()
                item = self._finish(self._host(step))
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
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                batch = self._finish(item)
                self.wait_s += time.perf_counter() - t0
                yield batch
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
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
