"""What a dataset adapter is: a declarative entry plus one function that reads the release.

An adapter's ``read`` function turns the user's copy of the official release into a *raw
table* (a pandas DataFrame, one row per image or volume) with these columns:

``id``            str, stable sample id (unique)
``subject``       str, patient id (splits never put one subject on both sides)
``path``          str, image path relative to the data root (or absolute); "" when
                  ``load`` renders pixels itself
``label/<name>``  int8, 1 positive, 0 negative, -1 unknown / not labelled; one column per
                  label (``DatasetSpec.labels`` by default; options may choose others;
                  multi-class: class index, -1 unknown); none for a segmentation
                  dataset, whose ground truth is the label map ``DatasetSpec.mask`` reads
``raw/<attr>``    the raw value of each sensitive attribute as the release spells it
                  (str, or float for ages; NaN / "" for missing)
``gen/<x>``,      optional per-row facts carried unchanged into the samples table, e.g.
``meta/<x>``      the parameters ``load`` needs to render a generated image

The shared machinery (:mod:`fmcache.datasets.samples`) then binarises the attributes with
the entry's rules and makes the seeded patient-level split, so adapters contain only what is
specific to their release. ``read`` returns that table wrapped in a :class:`RawTable`, which
also carries what an option may change: the cache group name (default the key), the task,
extra JSON-able facts recorded on the cache group and, for an adapter whose attribute rules
come from the user (the generic CSV adapter, which leaves ``DatasetSpec.attributes`` empty),
the :class:`AttributeRule` mapping the machinery binarises and records instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import pandas as pd

Options = Mapping[str, str]
LoadFn = Callable[[Path, pd.Series], Any]  # -> PIL.Image.Image
MaskFn = Callable[[Path, pd.Series], Any]  # -> np.ndarray (2D) or Volume (3D)
VolumeFn = Callable[[Path, pd.Series], Any]  # -> fmcache.datasets.volume_grid.Volume
Task = Literal["binary", "multilabel", "multiclass", "segmentation"]


@dataclass(frozen=True)
class AttributeRule:
    """How one sensitive attribute's raw values become groups.

    ``assign`` maps the raw column to group names (a str Series, ``None`` / NaN = unknown)
    and raises ``ValueError(value)`` for a value it does not know; ``groups`` lists the
    group names in code order (code 0 = ``groups[0]``). ``source`` says where the raw value
    lives in the release (file and column), for error messages.
    """

    groups: tuple[str, ...]
    assign: Callable[[pd.Series], pd.Series]
    description: str
    source: str = ""


@dataclass(frozen=True)
class RawTable:
    """What an adapter's ``read`` returns: the raw table and the facts that go with it.

    ``frame`` has the columns listed at the top of this module. ``name`` is the cache group
    name (None: the dataset key); ``task`` (None: the entry's) is set when the options decide
    it; ``group_attrs`` holds extra JSON-able facts recorded on the cache group;
    ``attribute_rules`` (None: the entry's) are rules chosen per call, e.g. from user options.
    """

    frame: pd.DataFrame
    name: str | None = None
    task: Task | None = None
    group_attrs: Mapping[str, Any] = field(default_factory=dict)
    attribute_rules: Mapping[str, AttributeRule] | None = None


ReadFn = Callable[[Path, Options], RawTable]


@dataclass(frozen=True)
class PromptSet:
    """Zero-shot prompts for one label: ``classes[i]`` names label value ``i``."""

    templates: tuple[str, ...]
    classes: tuple[str, ...]
    label: str | None = None  # None: the dataset's first label


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset. Adding a dataset is an adapter module whose ``SPEC`` is one of
    these, listed in the table of :mod:`fmcache.datasets.registry`."""

    key: str
    title: str
    modality: str
    version: str  # adapter version: bump when the samples table a release yields changes
    read: ReadFn
    labels: tuple[str, ...]
    task: Task
    attributes: Mapping[str, AttributeRule]
    layout: str  # the expected folder layout, shown by `fmcache datasets`
    obtain: str  # where and how to get the release
    prompts: Mapping[str, PromptSet] = field(default_factory=dict)
    load: LoadFn | None = None  # None: open `path` as a 2D image
    # "3d": `load` returns the volume as float32 (slices, H, W) in [0, 1] along the axis to
    # slice; the embed stage resamples it to 32 slices and encodes each (2.5D)
    dim: Literal["2d", "3d"] = "2d"
    options: Mapping[str, str] = field(default_factory=dict)  # option -> help (with default)
    needs_data: bool = True  # False for generated datasets
    # segmentation: the ground-truth label map of a row, an int array (H, W) aligned pixel
    # for pixel with the image `load` / `path` gives; 0 background, i the class mask_classes[i-1].
    # 3D ("volumetric segmentation"): a Volume of such class ids on the grid of `volume`'s image
    mask: MaskFn | None = None
    mask_classes: tuple[str, ...] = ()
    # 3D segmentation: the image of a row as a Volume (canonical RAS+ array in the file's
    # units, spacing and affine kept), what a volumetric model reads; `load` gives its slices
    volume: VolumeFn | None = None

    @property
    def volumetric_segmentation(self) -> bool:
        """Whether rows are volumes with label volumes (3D models; 2D models only slice by slice)."""
        return self.dim == "3d" and self.task == "segmentation"
