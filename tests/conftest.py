"""Shared fixtures: a tiny hand-made screen whose every pixel the tests can predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CHANNELS = ("DNA", "Tubulin", "Actin")
H, W = 60, 80


@dataclass
class TinyScreen:
    root: Path
    image_table: Path
    objects: Path
    moa: Path
    images: pd.DataFrame
    nuclei: pd.DataFrame


def disc_value(k: int, j: int, dtype=np.uint16) -> int:
    """Pixel value of channel ``k`` inside nucleus ``j`` (so a crop says whose it is)."""
    return 60 * (k + 1) + j if dtype == np.uint8 else 1000 * (k + 1) + 10 * j


def disc_field(centres: list[tuple[float, float]], dtype=np.uint16) -> np.ndarray:
    """(3, H, W) background 5 with a radius-4 disc per nucleus of value ``disc_value``."""
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.full((3, H, W), 5, dtype=dtype)
    for j, (x, y) in enumerate(centres, start=1):
        mask = (xx - x) ** 2 + (yy - y) ** 2 <= 16
        for k in range(3):
            out[k][mask] = disc_value(k, j, dtype)
    return out


def write_tiny_screen(root: Path, *, multichannel: bool = False, dtype=np.uint16,
                      compression: str | None = None) -> TinyScreen:
    """2 plates x 2 wells x 1 site; 3 interior nuclei per field and 1 near the edge."""
    root.mkdir(parents=True, exist_ok=True)
    rows, nuclei = [], []
    n = 0
    for plate in ("Week1_P1", "Week2_P1"):
        folder = root / "images" / plate
        folder.mkdir(parents=True, exist_ok=True)
        for well, compound, conc in (("B02", "DMSO", 0.0), ("C03", "taxol", 0.3)):
            n += 1
            centres = [(20.0 + n, 30.0), (40.3, 20.6), (60.0, 40.0), (3.0, 30.0)]
            field = disc_field(centres, dtype)
            rec = {"ImageNumber": n, "Metadata_Plate": plate, "Metadata_Well": well,
                   "Metadata_Site": 1, "Metadata_Compound": compound,
                   "Metadata_Concentration": conc}
            if multichannel:
                name = f"{plate}_{well}_s1.tif"
                tifffile.imwrite(folder / name, field, compression=compression,
                                 photometric="minisblack")
                for k, ch in enumerate(CHANNELS):
                    rec.update({f"FileName_{ch}": name, f"PathName_{ch}": str(folder),
                                f"Frame_{ch}": k})
            else:
                for k, ch in enumerate(CHANNELS):
                    name = f"{plate}_{well}_s1_w{k + 1}.tif"
                    tifffile.imwrite(folder / name, field[k], compression=compression)
                    rec.update({f"FileName_{ch}": name, f"PathName_{ch}": str(folder)})
            rows.append(rec)
            for j, (x, y) in enumerate(centres, start=1):
                nuclei.append({"ImageNumber": n, "ObjectNumber": j, "Location_Center_X": x,
                               "Location_Center_Y": y, "AreaShape_Area": 49})
    images, nuc = pd.DataFrame(rows), pd.DataFrame(nuclei)
    images.to_csv(root / "Image.csv", index=False)
    nuc.to_csv(root / "Nuclei.csv", index=False)
    moa = pd.DataFrame({"compound": ["DMSO", "taxol"], "concentration": [0.0, 0.3],
                        "moa": ["DMSO", "Microtubule stabilizers"]})
    moa.to_csv(root / "moa.csv", index=False)
    return TinyScreen(root, root / "Image.csv", root / "Nuclei.csv", root / "moa.csv",
                      images, nuc)


@pytest.fixture
def tiny(tmp_path: Path) -> TinyScreen:
    return write_tiny_screen(tmp_path / "screen")


def shared_or_skip(*parts: str) -> Path:
    """A path under ../shared/data, or skip: a user's clone has no ../shared."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (needs ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic screen (DMSO + 16 treatments, 2 plates) cropped at 36 px."""
    from cellprof.example.synth import SynthConfig, synthesize
    from cellprof.prepare.crop import CropConfig, crop_screen

    root = tmp_path_factory.mktemp("synthetic")
    res = synthesize(root / "screen", SynthConfig(field_size=128, cells_per_field=10, sites=1,
                                                  batches=1, plates_per_batch=2))
    crops = root / "crops.h5"
    crop_screen(res.image_table, crops, objects=res.object_table, moa=res.moa_table,
                config=CropConfig(size=36))
    return crops


@pytest.fixture(scope="session")
def tiny_model(synthetic_store: Path) -> tuple[Path, Path]:
    """(model.pt, crops.h5): a 3-step tiny VAE+ trained on ``synthetic_store``."""
    from cellprof.learn.model import ModelConfig
    from cellprof.learn.train import TrainConfig, train

    run = synthetic_store.parent / "run"
    train(synthetic_store, run, model_config=ModelConfig(latent_dim=8, enc_filters=8,
                                                         dec_filters=8, ramp_start=1),
          config=TrainConfig(steps=3, batch_size=8, val_every=1000, image_every=1000))
    return run / "model.pt", synthetic_store


@pytest.fixture
def one_thread():
    """torch on one thread: tiny models train faster so, and the suite shares the cores."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class Stop(Exception):
    """Raised by the callback of :func:`stop_after` to interrupt a long job mid-run."""


def stop_after(cells: int):
    """A ``progress`` callback that interrupts its job once ``cells`` cells are done, as
    Ctrl-C would between blocks."""
    def progress(stage: str, done: int, total: int) -> None:
        if done >= cells:
            raise Stop
    return progress
