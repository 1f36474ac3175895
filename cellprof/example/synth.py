"""A built-in synthetic screen, in the on-disk shape of BBBC021 exported by CellProfiler.

``synthesize(outdir)`` writes per-field 16-bit TIFFs, ``Image.csv`` and ``Nuclei.csv`` as
CellProfiler writes them, and a ``moa.csv`` like ``BBBC021_v1_moa.csv``, so every stage of
cellprof can be run and tested end to end without the real data. The screen is small but
built so that the *method* matters: a pipeline that learns cell morphology and aggregates
cells reaches a high not-same-compound (NSC) accuracy; single cells overlap between
treatments, and plate-to-plate intensity effects mislead a pipeline that ignores them.

Screen design
-------------
Four MOAs x two made-up compounds (``synthA1``, ``synthA2``, ...) x two concentrations, plus
DMSO. As in BBBC021 each compound lives on the plates of one batch (plate prefix ``Week<b>``),
and the two compounds of a MOA sit in different batches whenever there are two or more, so a
not-same-batch (NSCB) evaluation is meaningful. Each treatment fills one well on every plate
of its batch; DMSO fills ``dmso_wells`` wells on every plate; wells are drawn at random from
the inner 60 wells of a 96-well plate (B02-G11).

Phenotypes (effects grow with concentration: half strength at the low one, full at the high
one, times a compound potency of 0.85-1.15, plus a +-15 % compound-specific change of each
effect and small off-target effects):

- **DNA damage**: nuclei ~1.55x larger in area, more elongated and with coarser chromatin
  texture; cells ~1.55x larger and flatter with more stress fibres; fewer cells per field.
- **Microtubule stabilizers**: up to ~45 % of cells arrested in mitosis (small, round,
  ~2.3x brighter condensed nuclei; rounded cells with bright diffuse tubulin, no stress
  fibres); interphase cells show brighter tubulin with bundled, high-contrast filaments.
- **Actin disruptors**: stress fibres lost, bright actin aggregates (puncta) appear; cells
  ~30 % smaller and more irregular in outline.
- **Protein synthesis**: cells ~30 % smaller with ~35-40 % dimmer tubulin and actin; nuclei
  slightly smaller, dimmer and smoother; fewer cells per field.

Every cell parameter also varies log-normally from cell to cell (SD 15-40 %) and a little from
well to well; 3 % of DMSO cells are mitotic. Acquisition adds a dark offset (~500 counts),
autofluorescence, a per-plate per-channel gain (~ +-20 %), per-plate radial vignetting
(20-35 % in the corners), shot and read noise. Nucleus centres read ~5,000-10,000 counts on
DNA (background ~650), mitotic ones ~15,000-20,000. All randomness is derived from
``(seed, plate, well, site)``
(and ``(seed, compound)`` for compound effects), so output does not depend on generation order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from cellprof.errors import InputError
from cellprof.example._synth_render import (
    PARAM_INDEX,
    PARAMS,
    PlateEffects,
    plate_effects,
    render_field,
    sample_cells,
)
from cellprof.formats.safeio import atomic_path, write_text
from cellprof.formats.schema import COMPOUND, CONCENTRATION, PLATE, SITE, WELL

CHANNELS = ("DNA", "Tubulin", "Actin")

# MOA -> (log-scale shift of each cell parameter at full strength, mitotic fraction added,
# log-scale shift of the cell count). Parameters are defined in cellprof.example._synth_render.
MOAS: dict[str, tuple[dict[str, float], float, float]] = {
    "DNA damage": ({"nuc_area": 0.45, "nuc_elong": 0.4, "dna_int": -0.05, "nuc_texture": 0.9,
                    "cell_area": 0.45, "act_fibre": 0.3}, 0.0, -0.35),
    "Microtubule stabilizers": ({"tub_int": 0.3, "tub_fibre": 0.9, "act_fibre": -0.2}, 0.45, -0.15),
    "Actin disruptors": ({"act_fibre": -1.6, "act_puncta": 2.7, "act_int": -0.15,
                          "cell_area": -0.35, "cell_irreg": 0.9, "nuc_area": -0.05}, 0.0, 0.0),
    "Protein synthesis": ({"cell_area": -0.35, "tub_int": -0.5, "act_int": -0.45, "nuc_area": -0.15,
                           "dna_int": -0.1, "nuc_texture": -0.3}, 0.0, -0.3),
    # Two look-alikes (only ``SynthConfig.moas`` > 4 uses them): each shares the largest
    # effect of one MOA above (mitotic arrest; larger nuclei and cells) and differs in texture
    # and shape, as BBBC021's microtubule stabilizers and destabilizers do. Their average cell
    # images still differ enough to tell each pair apart (docs/benchmarks.md, the demo).
    "Microtubule destabilizers": ({"tub_int": 0.3, "tub_fibre": -0.9, "act_fibre": -0.2},
                                  0.45, -0.15),
    "Aurora kinase inhibitors": ({"nuc_area": 0.45, "nuc_elong": -0.4, "dna_int": -0.05,
                                  "nuc_texture": -0.9, "cell_area": 0.45, "act_fibre": 0.3},
                                 0.0, -0.35),
}
CONCENTRATIONS = ((0.3, 1.0), (1.0, 3.0))  # µM, low and high, for a MOA's odd and even compounds
STRENGTHS = (0.5, 1.0)  # effect strength at the low and the high concentration
BASE_MITOTIC = 0.03
WELLS = tuple(f"{row}{col:02d}" for row in "BCDEFG" for col in range(2, 12))  # inner 60 wells
_TAG_PLATE, _TAG_WELL, _TAG_FIELD, _TAG_COMPOUND, _TAG_LAYOUT = range(1, 6)


@dataclass(frozen=True)
class SynthConfig:
    """Settings of a synthetic screen; the defaults make ~100 fields in a few seconds.

    Attributes
    ----------
    seed : int
        Root of all randomness; same config -> byte-identical output.
    batches : int
        Batches, i.e. plate-name prefixes ``Week1``, ``Week2``, ... (1-5).
    plates_per_batch : int
        Plates in each batch, named e.g. ``Week1_P01``.
    sites : int
        Fields imaged per well.
    field_size : int or (int, int)
        Field size in pixels: square side, or (height, width).
    cells_per_field : int
        Mean number of cells per field; the actual count is Poisson and treatment dependent.
    dmso_wells : int
        DMSO control wells on every plate.
    multichannel : bool
        Write one (3, H, W) TIFF per field instead of one 2-D TIFF per channel.
    compression : str or None
        TIFF compression: None, ``"zlib"`` or ``"lzw"``.
    effect_scale : float
        Multiplies every compound's phenotype (shifts, mitotic fraction, density change):
        below 1 the mechanisms look more alike, and matching them needs more than random
        features.
    moas : int
        How many of the MOAs in ``MOAS`` the screen holds, in their order (1-6): the last
        two are look-alikes of earlier ones.
    compounds_per_moa : int
        Compounds of each MOA (1-4), each at two concentrations: more of them makes finer
        NSC steps (one query is 1 / (moas x compounds x 2) of the score).
    """

    seed: int = 0
    batches: int = 2
    plates_per_batch: int = 2
    sites: int = 2
    field_size: int | tuple[int, int] = 384
    cells_per_field: int = 32
    dmso_wells: int = 4
    multichannel: bool = False
    compression: str | None = "zlib"
    effect_scale: float = 1.0
    moas: int = 4
    compounds_per_moa: int = 2

    @property
    def shape(self) -> tuple[int, int]:
        """Field (height, width) in pixels."""
        return _field_shape(self)


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` wrote: the three tables, and the screen's size."""

    image_table: Path
    object_table: Path
    moa_table: Path
    n_fields: int
    n_cells: int
    channels: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Treatment:
    """One compound at one concentration, and the phenotype it induces.

    ``batch`` is the 0-based batch whose plates hold it (None for DMSO: every plate);
    ``log_shift`` is the (len(PARAMS),) shift of each cell parameter's log value.
    """

    compound: str
    concentration: float
    moa: str
    batch: int | None
    log_shift: np.ndarray
    mitotic: float
    density: float


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by integers and strings (strings via CRC32, stable across runs)."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def plate_names(config: SynthConfig) -> list[str]:
    """Plate names, batch by batch: ``Week1_P01``, ``Week1_P02``, ``Week2_P01``, ..."""
    return [f"Week{b + 1}_P{p + 1:02d}" for b in range(config.batches)
            for p in range(config.plates_per_batch)]


def treatments(config: SynthConfig) -> list[Treatment]:
    """DMSO first, then every MOA x compound x concentration, with its batch and phenotype.

    Compound ``k`` of MOA ``m`` goes to batch ``(m + k) % batches``, which puts the two
    compounds of a MOA in different batches and, for up to 5 batches, leaves none empty.
    """
    out = [Treatment("DMSO", 0.0, "DMSO", None, np.zeros(len(PARAMS)), BASE_MITOTIC, 0.0)]
    for m, (moa, (shifts, mitotic, density)) in enumerate(list(MOAS.items())[: config.moas]):
        effect = np.zeros(len(PARAMS))
        for name, value in shifts.items():
            effect[PARAM_INDEX[name]] = value
        for k in range(config.compounds_per_moa):
            compound = f"synth{chr(ord('A') + m)}{k + 1}"
            rng = _rng(_TAG_COMPOUND, config.seed, compound)
            potency = rng.uniform(0.85, 1.15)
            jitter, off_target = rng.standard_normal((2, len(PARAMS)))
            own = effect * (1 + 0.15 * jitter) + 0.06 * off_target
            own_mitotic = mitotic * (1 + 0.15 * rng.standard_normal())
            for level, conc in enumerate(CONCENTRATIONS[k % len(CONCENTRATIONS)]):
                s = STRENGTHS[level] * potency * config.effect_scale
                out.append(Treatment(compound, conc, moa, (m + k) % config.batches, s * own,
                                     BASE_MITOTIC + s * own_mitotic, s * density))
    return out


def _plate_layout(config: SynthConfig, batch: int, plate: str,
                  design: list[Treatment]) -> list[tuple[str, Treatment]]:
    """(well, treatment) pairs of one plate, sorted by well, at random inner-60 positions."""
    contents = [design[0]] * config.dmso_wells + [t for t in design if t.batch == batch]
    wells = _rng(_TAG_LAYOUT, config.seed, plate).permutation(len(WELLS))[: len(contents)]
    return sorted(zip((WELLS[i] for i in wells), contents), key=lambda pair: pair[0])


def _fields(config: SynthConfig) -> Iterator[tuple[str, str, int, Treatment]]:
    """(plate, well, site, treatment) for every field, in ImageNumber order."""
    design = treatments(config)
    for i, plate in enumerate(plate_names(config)):
        for well, treatment in _plate_layout(config, i // config.plates_per_batch, plate, design):
            for site in range(1, config.sites + 1):
                yield plate, well, site, treatment


def _field_shape(config: SynthConfig) -> tuple[int, int]:
    """The field's (height, width), or InputError if field_size is not 1 or 2 integers."""
    size = config.field_size
    sides = [size] if not isinstance(size, (tuple, list)) else list(size)
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool)
                                           for s in sides):
        raise InputError("synth option field_size must be an integer or (height, width), "
                         f"got {size!r}")
    return (sides[0], sides[-1])


def _validate(config: SynthConfig) -> None:
    """Raise InputError naming the first option outside its range, and the range."""
    h, w = _field_shape(config)
    per_batch = config.moas * config.compounds_per_moa * len(STRENGTHS)  # all in 1 batch
    checks = [
        ("seed", config.seed, 0, 2**32 - 1, ""),
        ("batches", config.batches, 1, 5, " (so that every batch holds compounds)"),
        ("plates_per_batch", config.plates_per_batch, 1, 99, ""),
        ("sites", config.sites, 1, 99, ""),
        ("moas", config.moas, 1, len(MOAS), ""),
        ("compounds_per_moa", config.compounds_per_moa, 1, 4, ""),
        ("field_size", min(h, w), 64, 8192, " pixels per side"),
        ("field_size", max(h, w), 64, 8192, " pixels per side"),
        ("cells_per_field", config.cells_per_field, 1, max(1, h * w // 600),
         f" for a {h}x{w} field (at most one cell per 600 px^2)"),
        ("dmso_wells", config.dmso_wells, 1, len(WELLS) - per_batch,
         f" (the inner {len(WELLS)} wells also hold up to {per_batch} treatments)"),
    ]
    for name, value, lo, hi, why in checks:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InputError(f"synth option {name} must be an integer in [{lo}, {hi}]{why}, "
                             f"got {getattr(config, name)!r}")
    if not (isinstance(config.effect_scale, (int, float)) and 0 < config.effect_scale <= 4):
        raise InputError(f"synth option effect_scale must be a number in (0, 4], "
                         f"got {config.effect_scale!r}")
    if config.compression not in (None, "zlib", "lzw"):
        raise InputError(f"synth option compression must be None, 'zlib' or 'lzw', "
                         f"got {config.compression!r}")


def _write_tiff(path: Path, data: np.ndarray, compression: str | None) -> None:
    """Write a uint16 TIFF atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, photometric="minisblack", compression=compression)


def _write_text(text: str, path: Path) -> None:
    """Write a table or note atomically, so a reader never sees half a file."""
    write_text(path, text)


def _write_field(image: np.ndarray, folder: Path, stem: str, config: SynthConfig) -> list[str]:
    """Write one field's planes; return the file name holding each channel."""
    if config.multichannel:
        _write_tiff(folder / f"{stem}.tif", image, config.compression)
        return [f"{stem}.tif"] * len(CHANNELS)
    names = [f"{stem}_w{k + 1}.tif" for k in range(len(CHANNELS))]
    for plane, name in zip(image, names):
        _write_tiff(folder / name, plane, config.compression)
    return names


def _image_row(number: int, names: list[str], folder: Path, plate: str, well: str, site: int,
               treatment: Treatment, n_cells: int, config: SynthConfig) -> dict[str, object]:
    """One Image.csv row with CellProfiler's column names."""
    row: dict[str, object] = {"ImageNumber": number}
    for channel, name in zip(CHANNELS, names):
        row[f"FileName_{channel}"] = name
        row[f"PathName_{channel}"] = str(folder)
    if config.multichannel:
        row.update({f"Frame_{channel}": k for k, channel in enumerate(CHANNELS)})
    row.update({PLATE: plate, WELL: well, SITE: site, COMPOUND: treatment.compound,
                CONCENTRATION: float(treatment.concentration), "Count_Nuclei": n_cells})
    for channel in CHANNELS:
        row[f"Height_{channel}"], row[f"Width_{channel}"] = config.shape
    return row


def synthesize(outdir: str | Path, config: SynthConfig = SynthConfig(),
               progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write a synthetic screen into ``outdir`` (created if needed).

    Files of the same name are overwritten; images of an earlier, larger screen in the same
    folder are left alone (the tables never point to them).

    Parameters
    ----------
    outdir : path
        Receives ``images/<plate>/*.tif``, ``Image.csv``, ``Nuclei.csv``, ``moa.csv``
        and ``README.txt``.
    config : SynthConfig
    progress : callable, optional
        Called as ``progress(done, total)`` after each field.

    Returns
    -------
    SynthResult

    Examples
    --------
    >>> result = synthesize("screen", SynthConfig(sites=1, field_size=128, cells_per_field=6))
    >>> result.n_fields, result.channels
    (48, ('DNA', 'Tubulin', 'Actin'))
    """
    _validate(config)
    outdir = Path(outdir).resolve()
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"synth output {outdir} exists and is not a folder")
    fields = list(_fields(config))
    effects: dict[str, PlateEffects] = {}
    images, objects = [], []
    for number, (plate, well, site, treatment) in enumerate(fields, start=1):
        folder = outdir / "images" / plate
        if plate not in effects:
            folder.mkdir(parents=True, exist_ok=True)
            effects[plate] = plate_effects(_rng(_TAG_PLATE, config.seed, plate))
        well_shift = 0.03 * _rng(_TAG_WELL, config.seed, plate, well).standard_normal(len(PARAMS))
        rng = _rng(_TAG_FIELD, config.seed, plate, well, site)
        n = max(1, int(rng.poisson(config.cells_per_field * np.exp(treatment.density))))
        cells = sample_cells(rng, treatment.log_shift + well_shift, treatment.mitotic, n,
                             config.shape)
        image, areas = render_field(rng, cells, config.shape, effects[plate])
        names = _write_field(image, folder, f"{plate}_{well}_s{site}", config)
        images.append(_image_row(number, names, folder, plate, well, site, treatment,
                                 len(cells), config))
        objects.append(pd.DataFrame({
            "ImageNumber": number, "ObjectNumber": np.arange(1, len(cells) + 1),
            "Location_Center_X": cells[:, 1].round(3), "Location_Center_Y": cells[:, 0].round(3),
            "AreaShape_Area": areas}))
        if progress is not None:
            progress(number, len(fields))
    return _write_tables(outdir, config, pd.DataFrame(images),
                         pd.concat(objects, ignore_index=True))


def _write_tables(outdir: Path, config: SynthConfig, images: pd.DataFrame,
                  objects: pd.DataFrame) -> SynthResult:
    """Write Image.csv, Nuclei.csv, moa.csv and README.txt; return the result record."""
    moa = pd.DataFrame([{"compound": t.compound, "concentration": t.concentration, "moa": t.moa}
                        for t in treatments(config)])
    paths = {name: outdir / name for name in ("Image.csv", "Nuclei.csv", "moa.csv")}
    for name, table in zip(paths, (images, objects, moa)):
        _write_text(table.to_csv(index=False), paths[name])
    _write_text(_readme(config, len(images), len(objects)), outdir / "README.txt")
    return SynthResult(paths["Image.csv"], paths["Nuclei.csv"], paths["moa.csv"],
                       n_fields=len(images), n_cells=len(objects), channels=CHANNELS)


def _readme(config: SynthConfig, n_fields: int, n_cells: int) -> str:
    moas = ", ".join(list(MOAS)[: config.moas])
    return (
        f"Synthetic image-based screen written by cellprof.example.synth (seed {config.seed}): "
        f"{n_fields} fields of {config.shape[0]}x{config.shape[1]} px, {n_cells} cells, channels "
        f"{', '.join(CHANNELS)} (w1-w3), laid out like BBBC021 exported by CellProfiler "
        "(Image.csv, Nuclei.csv with true nucleus centres, moa.csv). Ground truth: moa.csv maps "
        f"each compound and concentration to one of {config.moas} mechanisms ({moas}) or DMSO; "
        "batch = plate-name prefix; the phenotypes are described in the docstring of "
        "cellprof/example/synth.py. Not real biology: use it to test pipelines, not to draw "
        "conclusions.\n"
    )
