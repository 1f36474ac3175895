"""Full-model training step on this device: fp32 against bf16, NCHW against channels-last.

Run by hand: ``python benchmarks/train_precision.py [--batch 32] [--rounds 3] [--steps 3]``.

Prints, from one run so that the ratios hold on a shared machine:

- this machine's measured GEMM peak (2048^3 matmul), fp32 and bf16, in GFLOP/s;
- per layout x precision: cells/s of one training step (forward, backward, both optimiser
  steps; the paper-size model, tensors already on the device) and its GFLOP/s, with the
  step's FLOPs counted by ``torch.utils.flop_counter``. Configurations are interleaved
  round by round (A B C D A B C D ...) and the median per configuration is reported, so a
  slowdown of the machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cellprof.learn.device import Compute
from cellprof.learn.losses import compute_losses
from cellprof.learn.model import ModelConfig, VAEPlus


def gemm_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 3) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


class Step:
    """One configuration's model, optimisers and fixed batches."""

    def __init__(self, compute: Compute, batch: int, variant: str, size: int) -> None:
        torch.manual_seed(0)
        self.compute = compute
        self.model = compute.prepare(VAEPlus(ModelConfig(variant=variant, image_size=size)))
        g = torch.Generator().manual_seed(0)
        self.x = compute.layout(torch.rand(batch, 3, size, size, generator=g).to(compute.device))
        self.xr = compute.layout(torch.rand(batch, 3, size, size, generator=g).to(compute.device))
        self.opt = torch.optim.Adam(self.model.vae_parameters(), lr=1e-3)
        disc = self.model.discriminator
        self.dopt = torch.optim.SGD(disc.parameters(), lr=1e-2, momentum=0.9) if disc else None

    def __call__(self) -> float:
        with self.compute.autocast():
            losses = compute_losses(self.model, self.x, self.xr, 20_000)
        self.opt.zero_grad()
        if self.dopt:
            self.dopt.zero_grad()
        losses["total"].backward()
        self.opt.step()
        if self.dopt:
            self.dopt.step()
        if self.compute.device.type == "cuda":
            torch.cuda.synchronize()
        return losses["total"].item()


def flops_per_step(step: Step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", default="vae-gan-progressive")
    ap.add_argument("--size", type=int, default=68)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    peaks = {p: gemm_peak(dt, device) for p, dt in (("fp32", torch.float32),
                                                   ("bf16", torch.bfloat16))}
    print("GEMM peak GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    configs = {}
    for precision in ("fp32", "bf16"):
        for cl in (False, True):
            name = f"{precision} {'channels-last' if cl else 'NCHW'}"
            compute = Compute(device, precision)
            step = Step(compute, args.batch, args.variant, args.size)
            if not cl:  # force the layout this row is about
                step.model = step.model.to(memory_format=torch.contiguous_format)
                step.x, step.xr = step.x.contiguous(), step.xr.contiguous()
            else:
                step.model = step.model.to(memory_format=torch.channels_last)
                step.x = step.x.contiguous(memory_format=torch.channels_last)
                step.xr = step.xr.contiguous(memory_format=torch.channels_last)
            step()  # warm-up
            configs[name] = step
    flops = flops_per_step(next(iter(configs.values())))
    print(f"{args.variant}, batch {args.batch}: {flops / 1e9:.1f} GFLOP per step "
          f"({flops / args.batch / 1e9:.2f} per cell)")
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        for name, step in configs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["fp32 NCHW"])
    print("| precision, layout | cells/s | GFLOP/s | share of that precision's GEMM peak "
          "| speed-up vs fp32 NCHW |")
    print("| --- | --- | --- | --- | --- |")
    for name, ts in times.items():
        t = statistics.median(ts)
        gflops = flops / t / 1e9
        print(f"| {name} | {args.batch / t:.1f} | {gflops:.0f} | "
              f"{gflops / peaks[name.split()[0]]:.0%} | {base / t:.2f} |")


if __name__ == "__main__":
    main()
