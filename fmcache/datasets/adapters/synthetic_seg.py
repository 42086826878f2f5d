"""A generated segmentation dataset: one lesion-like blob per image, its mask, and a planted,
known disparity in how hard the blob is to delineate.

Each image shows one lobulated, rotated blob, brighter than a textured background with a
gentle illumination gradient. The mask is the blob's outline: the pixels inside its
lobulated boundary, the same rule in every group. Three things make the blob harder to
delineate in female patients, each scaled by the ``disparity`` fraction:

* lower contrast against the background;
* a blurrier boundary (a wider soft edge around the same outline);
* more background texture (smooth blotches of a blob's size, plus pixel noise).

Age (young / old at 60) has no planted effect: a control whose gap should be noise.
Pixels and masks are rendered on demand from the row's ``gen/*`` parameters and its id, so
one row always gives the same bytes in any process.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fmcache.datasets.adapters._common import disparity_option, int_option, seeded_rng
from fmcache.datasets.attributes import categorical, threshold
from fmcache.datasets.spec import DatasetSpec, Options, RawTable

KEY = "synthetic_seg"
AGE_THRESHOLD = 60
# the advantaged group's blob, on a [0, 1] intensity scale; `disparity` d moves the
# disadvantaged group's contrast to (1 - d) x, its edge to (1 + 4 d) x and its texture to (1 + 2 d) x
CONTRAST = 0.3
EDGE = 0.06  # width of the soft edge, as a fraction of the blob's radius
TEXTURE = 0.04  # amplitude of the smooth background blotches
NOISE = 0.03  # pixel noise std
EDGE_GAIN, TEXTURE_GAIN = 4.0, 2.0
BACKGROUND = 0.35

DEFAULTS = {"size": 60, "seed": 0, "image_size": 128, "disparity": 0.5}


def _int_option(options: Options, key: str, lo: int, hi: int) -> int:
    return int_option(KEY, options, DEFAULTS, key, lo, hi)


def _disparity(options: Options) -> float:
    return disparity_option(KEY, options, DEFAULTS)


def _rng(seed: int, kind: str, key: str) -> np.random.Generator:
    return seeded_rng(KEY, seed, kind, key)


def planted(disparity: float) -> dict[str, dict[str, float]]:
    """Contrast, edge width (fraction of the radius) and texture amplitude, per sex code."""
    return {
        "contrast": {"M": CONTRAST, "F": CONTRAST * (1.0 - disparity)},
        "edge": {"M": EDGE, "F": EDGE * (1.0 + EDGE_GAIN * disparity)},
        "texture": {"M": TEXTURE, "F": TEXTURE * (1.0 + TEXTURE_GAIN * disparity)},
    }


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
        One row per image (one image per subject) with the blob's ``gen/*`` parameters;
        ``group_attrs["planted"]`` describes the planted disparity.
    """
    size = _int_option(options, "size", 1, 1_000_000)
    seed = _int_option(options, "seed", 0, 2**32 - 1)
    image_size = _int_option(options, "image_size", 32, 2048)
    disparity = _disparity(options)
    facts = planted(disparity)
    rows: list[dict[str, object]] = []
    for i in range(size):
        # one stream per row, so a larger dataset with the same seed begins with the same rows
        rng = _rng(seed, "facts", str(i))
        sex = "M" if rng.random() < 0.5 else "F"
        rows.append({
            "id": f"seg{i:05d}",
            "subject": f"pt{i:05d}",
            "path": "",
            "raw/sex": sex,
            "raw/age": float(rng.integers(20, 90)),
            "gen/seed": seed,
            "gen/image_size": image_size,
            "gen/cx": float(rng.uniform(-0.4, 0.4)),
            "gen/cy": float(rng.uniform(-0.4, 0.4)),
            "gen/radius": float(rng.uniform(0.2, 0.34)),
            "gen/aspect": float(rng.uniform(0.65, 1.0)),
            "gen/angle": float(rng.uniform(0.0, np.pi)),
            # the planted facts, with a per-image spread so no group is one point
            "gen/contrast": facts["contrast"][sex] * float(rng.uniform(0.85, 1.15)),
            "gen/edge": facts["edge"][sex],
            "gen/texture": facts["texture"][sex],
            "gen/noise": NOISE,
        })
    group_attrs = {
        "planted": {
            "attribute": "sex",
            "disadvantaged": "female",
            "advantaged": "male",
            "disparity": disparity,
            "contrast": {"male": facts["contrast"]["M"], "female": facts["contrast"]["F"],
                         "per_image_spread": [0.85, 1.15]},
            "edge_width": {"male": facts["edge"]["M"], "female": facts["edge"]["F"], "unit": "fraction of the radius"},
            "texture": {"male": facts["texture"]["M"], "female": facts["texture"]["F"]},
            "noise_std": NOISE,
            "age": "no planted effect",
        },
        "generator": {"size": size, "seed": seed, "image_size": image_size},
    }
    return RawTable(pd.DataFrame(rows), group_attrs=group_attrs)


@lru_cache(maxsize=8)
def _axis(n: int) -> np.ndarray:
    """Pixel centres on [-1, 1]."""
    axis = (np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0
    axis.setflags(write=False)  # shared between calls
    return axis


def _radius(row: pd.Series) -> np.ndarray:
    """Each pixel's distance from the blob's centre in units of the blob's own boundary (< 1 inside).

    The boundary is a rotated ellipse with two lobes of waviness, seeded per image, so blobs
    are not all alike; the mask and the image both derive from this one map.
    """
    n = int(row["gen/image_size"])
    ax = _axis(n)
    x = ax[None, :] - float(row["gen/cx"])
    y = ax[:, None] - float(row["gen/cy"])
    angle = float(row["gen/angle"])
    u = x * np.cos(angle) + y * np.sin(angle)
    v = (-x * np.sin(angle) + y * np.cos(angle)) / float(row["gen/aspect"])
    r = np.hypot(u, v) / float(row["gen/radius"])
    lobes = _rng(int(row["gen/seed"]), "lobes", str(row["id"])).uniform([0.05, 0.03, 0, 0], [0.12, 0.08, 6.3, 6.3])
    theta = np.arctan2(v, u)
    boundary = 1.0 + lobes[0] * np.cos(3 * theta + lobes[2]) + lobes[1] * np.cos(5 * theta + lobes[3])
    return r / boundary


def _texture(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """Smooth blotches about a blob's size: a sum of random low-frequency waves, std ~ ``amplitude``."""
    ax = _axis(n)
    out = np.zeros((n, n))
    k = 12
    for _ in range(k):
        fx, fy = rng.uniform(-9.0, 9.0, size=2)
        phase = rng.uniform(0.0, 2 * np.pi)
        out += np.cos(fx * ax[None, :] + fy * ax[:, None] + phase)
    return out * (amplitude * np.sqrt(2.0 / k))


def render(row: pd.Series) -> np.ndarray:
    """Render one row's image.

    Parameters
    ----------
    row
        A raw-table or samples-table row: ``id`` and the ``gen/*`` columns.

    Returns
    -------
    numpy.ndarray
        uint8 (n, n) grayscale pixels; the same row gives the same bytes in any process.
    """
    n = int(row["gen/image_size"])
    rng = _rng(int(row["gen/seed"]), "image", str(row["id"]))
    ax = _axis(n)
    gx, gy = rng.uniform(-0.06, 0.06, size=2)
    img = BACKGROUND + gx * ax[None, :] + gy * ax[:, None] + _texture(rng, n, float(row["gen/texture"]))
    # a soft edge centred on the outline: 0.5 exactly where the mask's boundary runs
    blob = np.clip((1.0 - _radius(row)) / float(row["gen/edge"]) + 0.5, 0.0, 1.0)
    img = img + float(row["gen/contrast"]) * blob + rng.standard_normal((n, n)) * float(row["gen/noise"])
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def load(root: Path, row: pd.Series) -> Image.Image:
    """Render one row's image as a PIL RGB image (``root`` is unused; see :func:`render`)."""
    return Image.fromarray(render(row)).convert("RGB")


def mask(root: Path, row: pd.Series) -> np.ndarray:
    """The blob's mask (1 inside its outline, 0 elsewhere), aligned with :func:`render`."""
    return (_radius(row) < 1.0).astype(np.uint8)


SPEC = DatasetSpec(
    key=KEY,
    title="Synthetic lesion segmentation with a planted sex disparity",
    modality="grayscale lesion images (generated)",
    version="1",
    read=read,
    labels=(),
    task="segmentation",
    attributes={
        "sex": categorical({"M": "male", "F": "female"}, groups=("male", "female"), source="generated column sex"),
        "age": threshold(AGE_THRESHOLD, source="generated column age (years)"),
    },
    layout="no files: images and masks are rendered on demand from each row's id and the\nseed (--data is ignored)",
    obtain="generated on the fly; nothing to download",
    load=load,
    options={
        "size": f"number of images (default {DEFAULTS['size']})",
        "seed": "generator seed; the same seed and id give the same pixels (default 0)",
        "image_size": f"image side in pixels (default {DEFAULTS['image_size']})",
        "disparity": "how much harder the lesion is to delineate for female patients, 0..1: contrast x (1 - d), "
        f"edge width x (1 + {EDGE_GAIN:g} d), texture x (1 + {TEXTURE_GAIN:g} d) (default {DEFAULTS['disparity']})",
    },
    needs_data=False,
    mask=mask,
    mask_classes=("lesion",),
)
