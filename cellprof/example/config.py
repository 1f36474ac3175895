"""The settings of ``cellprof demo``, in a module that imports no torch (the CLI reads its
defaults from them; :mod:`cellprof.example.demo` runs the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellprof.example.synth import SynthConfig
from cellprof.learn.config import ModelConfig


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults take a few minutes on a 2-core CPU."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    """The synthetic screen: ~100 fields of 16 treatments (its ``seed`` is the demo's)."""
    crop_size: int = 68
    """Crop side in pixels (the paper's 68)."""
    steps: int = 400
    """Training steps, the progressive schedule scaled to them (a few minutes on a CPU)."""
    batch_size: int = 32
    """Crops per training step."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: the paper's full model."""
    train_seed: int = 0
    """Seed of the training (weights, batches, augmentation); the screen has its own."""
    precision: str = "auto"
    """``auto`` (bf16 where the hardware has it), ``fp32`` or ``bf16``, for train and embed:
    ``fp32`` times the demo as a CPU without bf16 units runs it."""
    normalize: str = "zscore"
    """How ``match`` normalises profiles against the DMSO wells."""
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, for
    train, embed, show."""
    workers: int = 1
    """Parallel worker processes for cropping."""
