"""The settings of ``cellprof demo``, in a module that imports no torch (the CLI reads its
defaults from them; :mod:`cellprof.example.demo` runs the pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellprof.example.synth import SynthConfig
from cellprof.learn.config import ModelConfig

DEMO_SCREEN = SynthConfig(moas=6, compounds_per_moa=3)
"""The demo's screen: 176 fields, ~5,000 cells, 36 treatments (6 MOAs x 3 compounds x 2
doses). Not the 16 treatments of :class:`SynthConfig`'s defaults: there one query moved NSC
by 0.06 and the headline swung by 0.2 between training seeds; here one query is 0.028."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults take a few minutes on a 2-core CPU."""

    synth: SynthConfig = field(default_factory=lambda: DEMO_SCREEN)
    """The synthetic screen (its ``seed`` is the demo's)."""
    crop_size: int = 44
    """Crop side in pixels: two nucleus diameters, the rule ``crop --size auto`` applies
    (this screen's nuclei measure 22 px; BBBC021's 33 px give the paper's 68). A 68-px crop
    here held three diameters and cost 2.3x the training time per step."""
    steps: int = 500
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
    """How ``match`` normalises profiles against the DMSO controls."""
    normalize_at: str = "cell"
    """Each cell against the DMSO cells of its plate (``match --normalize-at cell``): a
    plate's 4 DMSO wells are too few to estimate the spread of 256 features, and per-well
    z-scoring lost 0.2 NSC here and widened the seed spread."""
    baseline: bool = True
    """Also embed and match the crops with the model's initial (untrained) weights, and print
    both: what training bought on this screen, measured rather than assumed."""
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, for
    train, embed, show."""
    workers: int = 1
    """Parallel worker processes for cropping."""
