"""A generated chest-X-ray-like dataset with a planted, known disparity.

Each image shows a thorax silhouette (body, two lung fields, mediastinum and heart, a hint
of ribs) with noise. Label ``lesion`` is a handful of nodule-like blobs in the lung fields.
Two things differ by sex, so that every downstream measurement has a known answer:

* the lesion's contrast is lower in female patients (by the ``disparity`` fraction), so a
  classifier is less accurate for them: the planted performance gap;
* the acquisition differs (gain and offset by sex, noise by age group): a shortcut from
  which the group can be predicted, as in real multi-site data.

Some rows have sex "U" or no age, so downstream code always meets unknown groups; the
planted effects still follow each subject's hidden true group. Pixels are rendered on demand
from the row's ``gen/*`` parameters and its id and subject, so one row always gives the same
bytes, whatever the order or the process that renders it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fmcache.datasets.adapters._common import disparity_option, int_option, seeded_rng
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, Options, PromptSet, RawTable

KEY = "synthetic"
AGE_THRESHOLD = 60
LESION_CONTRAST = 0.12  # blob amplitude in the advantaged group, on a [0, 1] intensity scale
PREVALENCE = 0.4
P_SEX_UNKNOWN = 0.04
P_AGE_MISSING = 0.05
# acquisition shift: female images come out brighter and flatter, older patients' noisier
GAIN = {"M": 1.0, "F": 0.88}
OFFSET = {"M": 0.0, "F": 0.07}
NOISE = {"young": 0.05, "old": 0.065}

DEFAULTS = {"size": 600, "seed": 0, "image_size": 128, "disparity": 0.5}


def _int_option(options: Options, key: str, lo: int, hi: int) -> int:
    return int_option(KEY, options, DEFAULTS, key, lo, hi)


def _disparity(options: Options) -> float:
    return disparity_option(KEY, options, DEFAULTS)


def _rng(seed: int, kind: str, key: str) -> np.random.Generator:
    return seeded_rng(seed, kind, key)


def read(root: Path, options: Options) -> RawTable:
    """Generate the raw table (nothing is read from disk).

    Parameters
    ----------
    root
        Ignored.
    options
        ``size``, ``seed``, ``image_size`` and ``disparity``, as strings.

    Returns
    -------
    RawTable
        One row per image with ``gen/*`` rendering parameters; ``group_attrs["planted"]``
        describes the planted disparity.
    """
    size = _int_option(options, "size", 1, 10_000_000)
    seed = _int_option(options, "seed", 0, 2**32 - 1)
    image_size = _int_option(options, "image_size", 16, 4096)
    disparity = _disparity(options)
    contrast = {"M": LESION_CONTRAST, "F": LESION_CONTRAST * (1.0 - disparity)}
    rows: list[dict[str, object]] = []
    s = 0
    while len(rows) < size:
        # one stream per subject, so a larger dataset with the same seed begins with the same rows
        rng = _rng(seed, "facts", str(s))
        k = min(int(rng.integers(1, 4)), size - len(rows))
        sex = "M" if rng.random() < 0.5 else "F"
        age = int(rng.integers(20, 90))
        lesion = int(rng.random() < PREVALENCE)
        shown_sex = "U" if rng.random() < P_SEX_UNKNOWN else sex
        shown_age = np.nan if rng.random() < P_AGE_MISSING else float(age)
        noise = NOISE["old" if age >= AGE_THRESHOLD else "young"]
        for _ in range(k):
            rows.append({
                "id": f"img{len(rows):06d}",
                "subject": f"pt{s:05d}",
                "path": "",
                "label/lesion": lesion,
                "raw/sex": shown_sex,
                "raw/age": shown_age,
                "gen/seed": seed,
                "gen/image_size": image_size,
                # per-image spread, so the advantaged group is not trivially separable either
                "gen/lesion_contrast": lesion * contrast[sex] * float(rng.uniform(0.6, 1.4)),
                "gen/gain": GAIN[sex],
                "gen/offset": OFFSET[sex],
                "gen/noise": noise,
            })
        s += 1
    raw = pd.DataFrame(rows)
    raw["label/lesion"] = raw["label/lesion"].astype(np.int8)
    group_attrs = {
        "planted": {
            "attribute": "sex",
            "disadvantaged": "female",
            "advantaged": "male",
            "disparity": disparity,
            "lesion_contrast": {"male": contrast["M"], "female": contrast["F"], "per_image_spread": [0.6, 1.4]},
            "acquisition_shift": {
                "sex": {"male": {"gain": GAIN["M"], "offset": OFFSET["M"]},
                        "female": {"gain": GAIN["F"], "offset": OFFSET["F"]}},
                "age": {"noise_std": NOISE, "threshold": AGE_THRESHOLD},
            },
            "unknowns": "rows with sex 'U' or a blank age keep their hidden true group's effects",
        },
        "generator": {"size": size, "seed": seed, "image_size": image_size, "prevalence": PREVALENCE},
    }
    return RawTable(raw, group_attrs=group_attrs)


@lru_cache(maxsize=8)
def _axis(n: int) -> np.ndarray:
    """Pixel centres on [-1, 1]; shapes are built from 1D axes since they are separable."""
    axis = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    axis.setflags(write=False)  # shared between calls
    return axis


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, edge: float) -> np.ndarray:
    """Soft-edged filled ellipse in [0, 1]; ``x`` runs along columns, ``y`` down rows."""
    r = np.sqrt(((y - cy) / ay)[:, None] ** 2 + ((x - cx) / ax)[None, :] ** 2)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _blobs(img: np.ndarray, x: np.ndarray, y: np.ndarray, blobs: list[tuple[float, float, float, float]]) -> None:
    """Add Gaussian blobs (x, y, sigma, amplitude) to ``img`` in place.

    A 2D Gaussian is the outer product of two 1D ones: far cheaper than a 2D exp. Outer
    products, not a matrix product, so that no BLAS kernel choice can change a pixel.
    """
    for bx, by, sig, amp in blobs:
        if amp > 0:
            k = -0.5 / (sig * sig)
            img += np.multiply.outer(np.exp(k * (y - by) ** 2) * np.float32(amp), np.exp(k * (x - bx) ** 2))


def _anatomy(rng: np.random.Generator) -> dict[str, float]:
    """One subject's body shape, shared by all of their images."""
    return {
        "cx": rng.uniform(-0.04, 0.04), "cy": rng.uniform(-0.04, 0.04), "scale": rng.uniform(0.9, 1.05),
        "lung_w": rng.uniform(0.25, 0.3), "lung_h": rng.uniform(0.52, 0.62),
        "heart": rng.uniform(0.18, 0.24), "rib_freq": rng.uniform(17.0, 21.0), "rib_phase": rng.uniform(0, 6.3),
    }


def _nodules(rng: np.random.Generator, a: dict[str, float]) -> list[tuple[float, float, float]]:
    """(x, y, sigma) of a subject's nodules, inside the lung fields."""
    out = []
    for _ in range(int(rng.integers(3, 6))):
        side = -1.0 if rng.random() < 0.5 else 1.0
        x = a["cx"] + side * 0.38 * a["scale"] + rng.uniform(-0.5, 0.5) * a["lung_w"]
        y = a["cy"] - 0.05 + rng.uniform(-0.6, 0.5) * a["lung_h"]
        out.append((x, y, rng.uniform(0.06, 0.1)))
    return out


def _thorax(x: np.ndarray, y: np.ndarray, a: dict[str, float], density: float) -> np.ndarray:
    s, cx, cy = a["scale"], a["cx"], a["cy"]
    img = 0.06 + 0.5 * _ellipse(x, y, cx, cy + 0.1, 0.85 * s, 1.0, 0.08)
    lungs = np.maximum(
        _ellipse(x, y, cx - 0.38 * s, cy - 0.05, a["lung_w"] * s, a["lung_h"], 0.12),
        _ellipse(x, y, cx + 0.38 * s, cy - 0.05, a["lung_w"] * s, a["lung_h"], 0.12),
    )
    bow = y[:, None] + 0.35 * ((x - cx) ** 2)[None, :]  # ribs curve down towards the sides
    ribs = 0.1 * np.clip(np.sin(bow * a["rib_freq"] + a["rib_phase"]), 0.0, 1.0) ** 2
    img = img - lungs * (density - ribs)
    img = img + 0.22 * _ellipse(x, y, cx, cy - 0.1, 0.11 * s, 0.7, 0.2)  # mediastinum
    img = img + 0.18 * _ellipse(x, y, cx + 0.08, cy + 0.28, a["heart"] * s, a["heart"] * 0.85, 0.2)
    return img


def render(row: pd.Series) -> np.ndarray:
    """Render one row's image.

    Parameters
    ----------
    row
        A raw-table or samples-table row: ``id``, ``subject`` and the ``gen/*`` columns.

    Returns
    -------
    numpy.ndarray
        uint8 (n, n) grayscale pixels; the same row gives the same bytes in any process.
    """
    seed, n = int(row["gen/seed"]), int(row["gen/image_size"])
    x = y = _axis(n)
    subj = _rng(seed, "subject", str(row["subject"]))
    a = _anatomy(subj)
    nodules = _nodules(subj, a)
    img_rng = _rng(seed, "image", str(row["id"]))
    # a repeat image of the same patient is slightly repositioned
    dx, dy = img_rng.uniform(-0.03, 0.03, size=2)
    x, y = x - np.float32(dx), y - np.float32(dy)
    # how dark the lungs come out varies with inspiration and exposure: a nuisance that a
    # classifier must see past, like the normal vessel markings below
    img = _thorax(x, y, a, density=float(img_rng.uniform(0.33, 0.39)))
    blobs = [(bx, by, sig, float(row["gen/lesion_contrast"])) for bx, by, sig in nodules]
    blobs = blobs + [(bx, by, sig, float(img_rng.uniform(0.01, 0.04))) for bx, by, sig in _nodules(img_rng, a)]
    _blobs(img, x, y, blobs)
    img = img * float(row["gen/gain"]) + float(row["gen/offset"])
    img = img + img_rng.standard_normal((n, n), dtype=np.float32) * float(row["gen/noise"])
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def load(root: Path, row: pd.Series) -> Image.Image:
    """Render one row's image as a PIL RGB image (``root`` is unused; see :func:`render`)."""
    return Image.fromarray(render(row)).convert("RGB")


SPEC = DatasetSpec(
    key=KEY,
    title="Synthetic chest X-rays with a planted sex disparity",
    modality="chest X-ray (generated)",
    version="1",
    read=read,
    labels=("lesion",),
    task="binary",
    attributes={
        "sex": categorical({"M": "male", "F": "female"}, groups=("male", "female"), unknown=("U",),
                           source="generated column sex"),
        "age": threshold(AGE_THRESHOLD, source="generated column age (years)"),
    },
    layout="no files: images are rendered on demand from each row's id and the seed\n(--data is ignored)",
    obtain="generated on the fly; nothing to download",
    prompts={
        "default": PromptSet(
            templates=("a chest X-ray of a {}.", "a chest radiograph showing a {}.", "an X-ray image of a {}."),
            classes=("normal", "lesion"),
        )
    },
    load=load,
    options={
        "size": "number of images (default 600)",
        "seed": "generator seed; the same seed and id give the same pixels (default 0)",
        "image_size": "image side in pixels (default 128)",
        "disparity": "how much lower the lesion contrast is for female patients, as a fraction "
        "0..1 of the male contrast (default 0.5)",
    },
    needs_data=False,
)
