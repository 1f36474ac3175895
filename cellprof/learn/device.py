"""Where and how tensors are computed: device, DDP rank, precision, memory layout.

``train``, ``embed`` and ``show`` share this so that the same ``--device`` and
``--precision`` mean the same thing everywhere.

Precision. ``auto`` picks bf16 autocast where the hardware computes bf16 natively (CUDA;
CPUs with AVX-512 BF16 or AMX), where it measured 1.5-2.9x faster than fp32, and fp32
elsewhere (CPUs that only emulate bf16 run it slower than fp32). Under bf16 the
convolutions run in bf16 with channels-last memory (oneDNN's and cuDNN's fast layout); the
networks hand their outputs back in float32, so every loss is a float32 sum. ``fp32`` is
exactly the computation cellprof always did on the CPU: NCHW, no autocast.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cellprof.errors import CellprofError, InputError
from cellprof.learn.config import PRECISIONS


@dataclass(frozen=True)
class Dist:
    """This process's rank, the number of processes and its device."""

    rank: int
    world: int
    device: torch.device
    host_group: Any = None
    """Under DDP on GPUs (NCCL), a gloo group of the same processes, for agreeing on host
    flags (:func:`any_rank`) without waiting for a GPU; None when the default group is gloo
    already, or there is one process."""

    @property
    def main(self) -> bool:
        return self.rank == 0


def mps_available() -> bool:
    """True where torch was built with Apple's Metal backend and a GPU answers."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(requested: str, *, cuda: bool, mps: bool, world: int = 1,
                local_rank: int = 0) -> str:
    """The device ``--device requested`` means on a machine that has CUDA (``cuda``) and
    Apple's GPU (``mps``) or not: ``auto`` is CUDA, then MPS, then the CPU. A pure function
    of what the machine has, so every machine's choice is tested on any machine.

    >>> pick_device("auto", cuda=False, mps=True)
    'mps'
    >>> pick_device("auto", cuda=True, mps=False, world=2, local_rank=1)
    'cuda:1'
    """
    if requested not in ("auto", "cpu", "mps") and not requested.startswith("cuda"):
        raise InputError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {requested!r}")
    if requested.startswith("cuda") and not cuda:
        raise InputError(f"--device {requested}: no CUDA device is available here")
    if requested == "mps" and not mps:
        raise InputError("--device mps: Apple's GPU (MPS) is not available in this torch")
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps and world == 1 else "cpu"
    if requested == "mps" and world > 1:
        raise InputError("--device mps: several processes (torchrun) cannot share Apple's "
                         "GPU; train in one process, or with --device cpu")
    if requested == "cuda":
        return f"cuda:{local_rank if world > 1 else 0}"
    return requested


def setup(device: str) -> Dist:
    """Rank, world size and device from torchrun's environment (one process without it);
    the device as :func:`pick_device` chooses it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device(pick_device(device, cuda=torch.cuda.is_available(),
                                   mps=mps_available(), world=world, local_rank=local))
    cuda = dev.type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(dev)
    host = dist.new_group(backend="gloo") if world > 1 and cuda else None
    return Dist(rank, world, dev, host)


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX), not by emulation."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, p, lambda: False)() for p in probes):
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows): benchmarks
    print it beside every figure, since these machines change CPU between sessions."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for this device (see the module docstring)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # MPS: fp32 (its bf16 autocast is recent and unmeasured here; ask --precision bf16)
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


@dataclass(frozen=True)
class Compute:
    """A resolved device + precision: the autocast context and the memory layout to use."""

    device: torch.device
    precision: str  # "fp32" or "bf16", never "auto"

    @classmethod
    def of(cls, device: torch.device, precision: str) -> Compute:
        return cls(device, resolve_precision(precision, device))

    @property
    def channels_last(self) -> bool:
        """cuDNN is fastest channels-last; on the CPU channels-last measured faster only
        together with bf16, and keeping fp32 NCHW keeps fp32 results as they were."""
        return self.device.type == "cuda" or self.precision == "bf16"

    def autocast(self) -> AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model moved to the device, in this layout."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d batch in this layout (a no-op for NCHW)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def try_compile(networks: Sequence[torch.nn.Module], trial: Callable[[], None],
                model: torch.nn.Module) -> str:
    """Compile each network's ``forward`` (``torch.compile``), or leave them eager; a note.

    ``trial`` runs one forward and backward at the real shapes, which compiles every graph
    the loop will use; when that fails (a missing C++ compiler, an operator Inductor cannot
    handle) the networks are left as they were, and the note says why in one line. Either
    way ``model``'s weights, buffers, gradients and the random state are restored, so the
    run is exactly what it would have been without the trial. The state dict's keys do
    not change (``forward`` is wrapped on the instance), so checkpoints load everywhere.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    for net in networks:
        net.forward = torch.compile(net.forward)
    try:
        trial()
        note = f"--compile: {len(networks)} networks compiled (torch.compile)"
    except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
        for net in networks:
            del net.forward  # the class's own forward again
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        note = (f"--compile: torch.compile failed ({type(exc).__name__}: {first[:160]}); "
                "training without it")
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return note


def to_device(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host array on ``device``: through pinned memory without blocking on CUDA, and
    no copy at all on the CPU (``torch.from_numpy`` shares the array's memory)."""
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
    if device.type == "cuda":
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device)


def agree(values: torch.Tensor, d: Dist) -> list[int]:
    """Each of ``values`` (an integer tensor on the device) at its smallest over the ranks,
    read on the host, the same list on every rank.

    Reading a device tensor makes the host wait until the GPU has done all it was given,
    which undoes the copies queued without blocking: the training loop calls this only at
    steps that log or save, never every step.
    """
    if d.world > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return [int(v) for v in values.tolist()]


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when ``flag`` is on any (a stop request: all ranks stop at the
    same step). Agreed among the hosts over gloo, so it costs a message, not a GPU sync."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.host_group)
    return bool(t.item())


def check_replicas(model: torch.nn.Module, d: Dist) -> None:
    """DDP keeps replicas identical; verify it rather than assume it."""
    if d.world == 1:
        return
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    got = [torch.zeros_like(s) for _ in range(d.world)]
    dist.all_gather(got, s)
    if any(not torch.equal(g, got[0]) for g in got):
        raise CellprofError("DDP replicas diverged: parameters differ between ranks")
    dist.barrier()
