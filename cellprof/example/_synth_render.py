"""Rendering for :mod:`cellprof.example.synth`: cell parameters -> field signal -> 16-bit
camera image.

Kept apart from the screen design so the design (which MOA does what) reads in one place
and this module stays a set of plain array functions. Sizes are in pixels, intensities in
camera counts before gain; every function takes its ``numpy.random.Generator`` so the
caller decides what each random stream is derived from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

# Per-cell parameters, all positive and log-normally distributed around the DMSO value.
PARAMS = (
    "nuc_area",  # nucleus area, px^2
    "nuc_elong",  # nucleus aspect ratio minus 1
    "dna_int",  # DNA counts inside the nucleus
    "nuc_texture",  # relative amplitude of chromatin texture
    "cell_area",  # cell body area, px^2
    "cell_irreg",  # amplitude of boundary harmonics (0 = circle)
    "tub_int",  # tubulin counts in the cytoplasm
    "tub_fibre",  # contrast of radial microtubule streaks
    "act_int",  # actin counts (cortical rim and fibres scale with it)
    "act_fibre",  # contrast of stress fibres
    "act_puncta",  # amplitude of actin aggregates (near 0 in DMSO)
)
PARAM_INDEX = {name: i for i, name in enumerate(PARAMS)}

DMSO_VALUE = np.array([380.0, 0.25, 7000.0, 0.15, 1500.0, 0.10,
                       2600.0, 0.35, 2000.0, 0.60, 0.04])
# Cell-to-cell spread (SD of log value): large enough that single cells of different
# treatments overlap, so a pipeline must aggregate to separate them.
CELL_SD = np.array([0.22, 0.35, 0.14, 0.30, 0.25, 0.30, 0.18, 0.30, 0.18, 0.35, 0.40])
# A mitotically arrested cell: condensed (small, round, bright) chromatin, a rounded-up
# small cell body with diffuse bright tubulin and no stress fibres.
MITOTIC_FACTOR = np.array([0.45, 0.15, 2.3, 0.5, 0.5, 0.15, 1.6, 0.2, 1.3, 0.1, 1.0])

CELL_COLUMNS = ("y", "x", "theta", *PARAMS)


@dataclass(frozen=True, eq=False)
class PlateEffects:
    """Acquisition settings shared by all fields of one plate.

    Attributes
    ----------
    gain : (3,) float array
        Per-channel intensity gain (plate-to-plate staining and exposure differences).
    vignette : float
        Relative intensity lost in the field corners (radial fall-off, same for all channels).
    centre : (2,) float array
        Optical centre as a fraction of (height, width).
    """

    gain: np.ndarray
    vignette: float
    centre: np.ndarray


OFFSET = np.array([480.0, 520.0, 500.0])  # camera dark offset, counts
AUTOFLUOR = np.array([150.0, 500.0, 400.0])  # medium/plastic background, vignetted
READ_NOISE = 12.0  # counts, Gaussian
SHOT_VARIANCE = 0.8  # counts^2 of noise per count of signal


def plate_effects(rng: np.random.Generator) -> PlateEffects:
    """Draw one plate's gain (about +-20 %), vignetting (20-35 %) and optical centre."""
    return PlateEffects(
        gain=np.exp(rng.normal(0.0, 0.12, size=3)).clip(0.75, 1.3),
        vignette=float(rng.uniform(0.20, 0.35)),
        centre=0.5 + rng.uniform(-0.08, 0.08, size=2),
    )


def sample_cells(rng: np.random.Generator, log_shift: np.ndarray, mitotic: float,
                 n: int, shape: tuple[int, int]) -> np.ndarray:
    """Draw up to ``n`` cells with non-overlapping nuclei placed anywhere in the field.

    Parameters
    ----------
    log_shift : (len(PARAMS),) array
        Treatment (and well) shift of each parameter's log value from DMSO.
    mitotic : float
        Probability that a cell is arrested in mitosis.
    n : int
        Cells to try to place; a cell is dropped if no free spot is found (dense fields).
    shape : (H, W)

    Returns
    -------
    (m, len(CELL_COLUMNS)) float array, ``m <= n``; columns as in ``CELL_COLUMNS``.
    Nucleus centres are uniform over the field, so some lie near (not past) its edges.
    """
    h, w = shape
    log_v = np.log(DMSO_VALUE) + log_shift + CELL_SD * rng.standard_normal((n, len(PARAMS)))
    values = np.exp(log_v)
    values[rng.random(n) < mitotic] *= MITOTIC_FACTOR
    area, elong = values[:, PARAM_INDEX["nuc_area"]], values[:, PARAM_INDEX["nuc_elong"]]
    radius = np.sqrt(area / np.pi * (1 + elong))  # semi-major axis
    ys, xs = rng.uniform(0, h - 1, size=(n, 30)), rng.uniform(0, w - 1, size=(n, 30))
    kept: list[int] = []
    centres: list[tuple[float, float]] = []
    for i in range(n):
        for y, x in zip(ys[i], xs[i]):
            # nuclei keep >= 2 px apart (their outlines wobble by up to ~10 %); cells may touch
            if all((y - cy) ** 2 + (x - cx) ** 2 >= (1.1 * (radius[i] + radius[j]) + 2.0) ** 2
                   for j, (cy, cx) in zip(kept, centres)):
                kept.append(i)
                centres.append((float(y), float(x)))
                break
    theta = rng.uniform(0, np.pi, size=len(kept))
    yx = np.array(centres, dtype=float).reshape(-1, 2)
    return np.column_stack([yx, theta, values[kept]])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit SD: a cheap biological texture.

    ``shape`` is (n, h, w); planes are filtered independently. Filtering unit white noise
    with a 2-D Gaussian of SD ``sigma`` leaves variance 1 / (4 pi sigma^2), undone here.
    """
    noise = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, sigma, sigma),
                            mode="wrap", truncate=3.0)
    noise *= np.float32(2 * sigma * math.sqrt(math.pi))
    return noise


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _f32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _nucleus(yy: np.ndarray, xx: np.ndarray, c: dict[str, float], chromatin: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(soft nucleus mask, DNA signal): a rotated ellipse, lumpy outline, dome profile, texture."""
    a = math.sqrt(c["nuc_area"] / math.pi * (1 + c["nuc_elong"]))  # semi-axes: pi*a*b = area
    b = c["nuc_area"] / (math.pi * a)
    cos_t, sin_t = math.cos(c["theta"]), math.sin(c["theta"])
    u, v = xx * cos_t + yy * sin_t, yy * cos_t - xx * sin_t
    ang = np.arctan2(v, u)
    p3, p5 = rng.uniform(0, 2 * math.pi, 2)
    wobble = 1 + 0.05 * np.cos(3 * ang + float(p3)) + 0.04 * np.cos(5 * ang + float(p5))
    rn = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble
    mask = _sigmoid((1 - rn) * (b / 0.7))
    texture = np.clip(1 + c["nuc_texture"] * chromatin, 0.4, None)
    return mask, c["dna_int"] * mask * (0.8 + 0.2 * np.clip(1 - rn**2, 0, 1)) * texture


def _body(yc: np.ndarray, xc: np.ndarray, radius: float, irreg: float, inner: float,
          outer: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(r, phi, boundary radius, soft mask) of a circle deformed by boundary harmonics 2-5.

    The boundary stays between ``inner`` (keeps the nucleus inside) and ``outer`` (keeps
    the cell inside its drawing window, so no cell shows a straight cut edge).
    """
    r, phi = np.hypot(yc, xc), np.arctan2(yc, xc)
    k = np.arange(2, 6, dtype=np.float32)[:, None, None]
    amp = _f32(rng.standard_normal((4, 1, 1))) / k
    harmonics = (amp * np.cos(k * phi + _f32(rng.uniform(0, 2 * math.pi, (4, 1, 1))))).sum(0)
    boundary = np.clip(radius * (1 + irreg * harmonics), inner, outer)
    return r, phi, boundary, _sigmoid(boundary - r)


def _tubulin(r: np.ndarray, phi: np.ndarray, body: np.ndarray, nucleus: np.ndarray, radius: float,
             c: dict[str, float], mesh: np.ndarray, wave: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Wavy radial filaments from the centre on an irregular mesh, brightest around the
    nucleus and dimmer over it (microtubules radiate from the centrosome)."""
    n_streak = _f32(rng.integers(8, 30, size=(6, 1, 1)))
    phase, bend = _f32(rng.uniform(0, 2 * math.pi, (6, 1, 1))), _f32(rng.normal(0, 0.06, (6, 1, 1)))
    streaks = np.cos(n_streak * phi + phase + bend * r + 0.7 * wave).sum(0) / math.sqrt(3.0)
    return (c["tub_int"] * body * (0.55 + 0.45 * np.exp(-r / (0.6 * radius)))
            * np.clip(1 + c["tub_fibre"] * streaks, 0.05, None)
            * np.clip(1 + 0.25 * mesh, 0.2, None) * (1 - 0.5 * nucleus))


def _actin(yc: np.ndarray, xc: np.ndarray, r: np.ndarray, boundary: np.ndarray, body: np.ndarray,
           radius: float, c: dict[str, float], wave: np.ndarray, segments: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Cortical rim + wavy, broken parallel stress fibres + bright aggregates (puncta)."""
    rim = np.exp(-(((boundary - r) / 2.0) ** 2))
    angle, period = rng.uniform(0, math.pi), rng.uniform(4.5, 7.0)
    phase = rng.uniform(0, 2 * math.pi)
    along = xc * math.cos(angle) + yc * math.sin(angle)
    fibres = ((0.5 + 0.5 * np.cos(along * (2 * math.pi / period) + phase + 1.2 * wave)) ** 3
              * np.clip(0.6 + 0.6 * segments, 0, 1.5))
    act = c["act_int"] * body * (0.35 + 1.2 * rim + c["act_fibre"] * fibres)
    pr = _f32(radius * np.sqrt(rng.uniform(0.1, 0.8, (6, 1, 1))))
    pa = _f32(rng.uniform(0, 2 * math.pi, (6, 1, 1)))
    d2 = (yc - pr * np.sin(pa)) ** 2 + (xc - pr * np.cos(pa)) ** 2
    return act + (5.0 * c["act_int"] * c["act_puncta"]) * np.exp(-d2 / 4.0).sum(0)


def render_cell(out: np.ndarray, cell: np.ndarray, textures: np.ndarray,
                rng: np.random.Generator) -> int:
    """Draw one cell into ``out`` (3, H, W) float32 in place, only inside a local window.

    ``textures`` is (4, H, W) unit-SD smooth noise (chromatin, tubulin mesh, fibre waviness,
    fibre breaks), drawn once per field because filtering it per cell cost half the run time.
    Channels combine with neighbours by maximum, so touching cells do not double in
    brightness. Returns the nucleus area in pixels inside the field (mask > 0.5), the
    number CellProfiler would report as ``AreaShape_Area``.
    """
    c = dict(zip(CELL_COLUMNS, cell.tolist()))
    a_n = math.sqrt(c["nuc_area"] / math.pi * (1 + c["nuc_elong"]))
    radius = max(math.sqrt(c["cell_area"] / math.pi), 1.3 * a_n + 2.0)
    shift, heading = rng.uniform(0, 0.25) * (radius - a_n), rng.uniform(0, 2 * math.pi)
    dy, dx = shift * math.sin(heading), shift * math.cos(heading)  # cell centre vs nucleus
    half = math.ceil(radius * (1 + 2 * c["cell_irreg"]) + shift + 4)
    h, w = out.shape[1:]
    iy, ix = round(c["y"]), round(c["x"])
    y0, y1 = max(iy - half, 0), min(iy + half + 1, h)
    x0, x1 = max(ix - half, 0), min(ix + half + 1, w)
    yy = _f32(np.arange(y0, y1) - c["y"])[:, None]
    xx = _f32(np.arange(x0, x1) - c["x"])[None, :]
    chromatin, mesh, wave, segments = textures[:, y0:y1, x0:x1]

    nucleus, dna = _nucleus(yy, xx, c, chromatin, rng)
    yc, xc = yy - dy, xx - dx
    r, phi, boundary, body = _body(yc, xc, radius, c["cell_irreg"], 1.15 * a_n + shift,
                                   half - shift - 3, rng)
    tub = _tubulin(r, phi, body, nucleus, radius, c, mesh, wave, rng)
    act = _actin(yc, xc, r, boundary, body, radius, c, wave, segments, rng)

    region = out[:, y0:y1, x0:x1]
    for ch, img in enumerate((dna, tub, act)):
        np.maximum(region[ch], img, out=region[ch])
    return int((nucleus > 0.5).sum())


def acquire(signal: np.ndarray, effects: PlateEffects, rng: np.random.Generator) -> np.ndarray:
    """Turn a (3, H, W) biological signal into what a 16-bit camera records.

    Adds background autofluorescence, applies the plate's gain and vignetting (multiplicative,
    so a pipeline that ignores plate effects is misled), then the camera's dark offset,
    signal-dependent shot noise and Gaussian read noise, and clips to uint16.
    """
    _, h, w = signal.shape
    cy, cx = effects.centre * np.array([h - 1, w - 1])
    d2 = (np.arange(h)[:, None] - cy) ** 2 + (np.arange(w)[None, :] - cx) ** 2
    falloff = 1 - effects.vignette * d2 / (0.25 * (h**2 + w**2))
    scale = (effects.gain[:, None, None] * falloff[None]).astype(np.float32)
    counts = scale * (signal + AUTOFLUOR[:, None, None].astype(np.float32))
    noise_sd = np.sqrt(SHOT_VARIANCE * counts + READ_NOISE**2)
    counts += noise_sd * rng.standard_normal(counts.shape, dtype=np.float32)
    counts += OFFSET[:, None, None].astype(np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def render_field(rng: np.random.Generator, cells: np.ndarray, shape: tuple[int, int],
                 effects: PlateEffects) -> tuple[np.ndarray, np.ndarray]:
    """Render a whole field: returns ((3, H, W) uint16 image, (m,) nucleus areas in px)."""
    signal = np.zeros((3, *shape), dtype=np.float32)
    textures = np.concatenate([_smooth_noise(rng, (1, *shape), 1.0),
                               _smooth_noise(rng, (3, *shape), 2.0)])
    areas = np.array([render_cell(signal, cell, textures, rng) for cell in cells], dtype=np.int64)
    return acquire(signal, effects, rng), areas
