"""`--device auto`: CUDA, then Apple's GPU (MPS), then the CPU, decided by what the machine
has; tested here for machines we do not have."""

from __future__ import annotations

import pytest
import torch

from cellprof.errors import InputError
from cellprof.learn import device as dev
from cellprof.learn.device import Compute, pick_device, setup


@pytest.mark.parametrize("requested, cuda, mps, world, local, expected", [
    ("auto", True, True, 1, 0, "cuda:0"),
    ("auto", False, True, 1, 0, "mps"),
    ("auto", False, False, 1, 0, "cpu"),
    ("auto", True, False, 2, 1, "cuda:1"),
    ("auto", False, True, 2, 1, "cpu"),  # torchrun on a Mac: gloo on the CPUs
    ("cpu", True, True, 1, 0, "cpu"),
    ("cuda:3", True, False, 1, 0, "cuda:3"),
    ("mps", False, True, 1, 0, "mps"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(requested: str, cuda: bool, mps: bool,
                                              world: int, local: int, expected: str) -> None:
    assert pick_device(requested, cuda=cuda, mps=mps, world=world,
                       local_rank=local) == expected


@pytest.mark.parametrize("requested, cuda, mps, world, message", [
    ("cuda", False, True, 1, "no CUDA device"),
    ("mps", True, False, 1, "MPS"),
    ("mps", False, True, 2, "several processes"),
    ("gpu", True, True, 1, "auto, cpu, cuda, cuda:N or mps"),
])
def test_impossible_devices_are_refused_by_name(requested: str, cuda: bool, mps: bool,
                                                world: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        pick_device(requested, cuda=cuda, mps=mps, world=world)


def test_setup_on_a_mac_picks_mps_and_trains_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    d = setup("auto")
    assert d.device == torch.device("mps") and d.world == 1
    assert Compute.of(d.device, "auto").precision == "fp32"
    monkeypatch.setattr(dev, "mps_available", lambda: False)
    assert setup("auto").device == torch.device("cpu")
