"""From an adapter's raw table to the samples table: checked, binarised and split."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from fmcache.datasets.attributes import encode
from fmcache.datasets.pixels import open_image
from fmcache.datasets.spec import AttributeRule, DatasetSpec, RawTable
from fmcache.datasets.splits import DEFAULT_FRACTIONS, balance_test, patient_split
from fmcache.errors import DatasetError

if TYPE_CHECKING:
    from fmcache.datasets.volume_grid import Volume

SPLIT_POLICY = "patient-level, stratified by first label x first attribute"
# a segmentation table has no label columns: its ground truth is a mask per row
SEGMENTATION_SPLIT_POLICY = "patient-level, stratified by first attribute"
BALANCED_TEST = "balanced-test"
# options every dataset accepts; the machinery handles them, adapters never see them
RESERVED_OPTIONS = {
    "split": "patient (default): seeded patient-level train/val/test split; balanced-test:<attribute> "
    "(e.g. balanced-test:sex): the reference protocol, whose test split holds equally many samples of "
    "the attribute's groups (seeded, whole subjects; surplus and unknown-group test subjects move to train)",
}
# per-row columns an adapter may add that travel unchanged into the samples table
EXTRA_PREFIXES = ("gen/", "meta/")


@dataclass
class Dataset:
    """A dataset ready to embed: its entry, where its files are and its samples table.

    ``table`` has one row per sample: ``id``, ``subject``, ``split`` (0 train, 1 val,
    2 test), ``path``, ``label/<name>`` (int8, -1 unknown), ``sa/<attr>`` (int8 group code,
    -1 unknown) and ``sa_raw/<attr>`` (str, the raw value; "" when missing), plus any
    ``gen/<x>`` / ``meta/<x>`` columns the adapter added. ``attribute_rules`` holds the rules
    an adapter supplied per call (``RawTable.attribute_rules``); empty means the entry's.
    """

    spec: DatasetSpec
    name: str  # the cache group name
    root: Path | None
    options: dict[str, str]
    seed: int
    table: pd.DataFrame
    fingerprint: str
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    attribute_rules: Mapping[str, AttributeRule] = field(default_factory=dict)

    @property
    def rules(self) -> Mapping[str, AttributeRule]:
        """The attribute rules that made ``sa/<attr>``: the per-call ones, else the entry's."""
        return self.attribute_rules or self.spec.attributes

    @property
    def label_names(self) -> list[str]:
        return [c.split("/", 1)[1] for c in self.table.columns if c.startswith("label/")]

    @property
    def attribute_names(self) -> list[str]:
        return [c.split("/", 1)[1] for c in self.table.columns if c.startswith("sa/")]

    def file(self, path: str) -> Path:
        """Where a ``path`` of the table lives (relative paths start at the data root)."""
        p = Path(path)
        return p if p.is_absolute() or self.root is None else self.root / p

    def missing_files(self) -> list[str]:
        """Table paths with nothing on disk (a volume may be a folder, e.g. a DICOM series)."""
        exists = (lambda p: p.exists()) if self.spec.dim == "3d" else (lambda p: p.is_file())
        return [p for p in self.table["path"].astype(str) if p and not exists(self.file(p))]

    def image(self, i: int) -> Any:
        """Pixels of row ``i``: a PIL image (RGB), or for a 3D dataset the volume as float32
        (slices, H, W) in [0, 1]."""
        row = self.table.iloc[i]
        if self.spec.load is not None:
            return self.spec.load(self.root or Path("."), row)
        return open_image(self.file(row["path"]))

    def mask_file(self, i: int) -> str:
        """The file row ``i``'s mask comes from (``meta/mask``, else the image's own file), for messages."""
        row = self.table.iloc[i]
        return str(row.get("meta/mask") or row["path"])

    def mask(self, i: int) -> np.ndarray:
        """Ground-truth label map of row ``i``: uint8 (H, W), 0 background, ``c`` the class
        ``spec.mask_classes[c - 1]``; aligned with :meth:`image`. For a volumetric dataset the
        label volume as uint8 (slices, H, W), voxel for voxel on the grid of :meth:`image`'s
        slices (:meth:`mask_volume` keeps its geometry). DatasetError naming the file when the
        adapter's map has the wrong number of axes or holds a value that is no class."""
        if self.spec.dim == "3d":
            return self.mask_volume(i).slices()
        if self.spec.mask is None:
            raise DatasetError(f"{self.spec.key} has no segmentation masks (task {self.spec.task})")
        return self._labels(i, np.asarray(self.spec.mask(self.root or Path("."), self.table.iloc[i])), 2)

    def volume(self, i: int) -> Volume:
        """The image of row ``i`` as a :class:`~fmcache.datasets.volume_grid.Volume`: canonical
        (RAS+) array in the file's units with its spacing and affine (volumetric datasets only)."""
        if self.spec.volume is None:
            raise DatasetError(f"{self.spec.key} has no volumes with a voxel grid (dimension {self.spec.dim})")
        return self.spec.volume(self.root or Path("."), self.table.iloc[i])

    def mask_volume(self, i: int) -> Volume:
        """The label volume of row ``i`` as a :class:`~fmcache.datasets.volume_grid.Volume` of uint8
        class ids (as :meth:`mask`) on the grid of :meth:`volume` (volumetric datasets only)."""
        from fmcache.datasets.volume_grid import Volume

        if self.spec.mask is None or self.spec.dim != "3d":
            raise DatasetError(f"{self.spec.key} has no label volumes (task {self.spec.task}, dimension {self.spec.dim})")
        vol = self.spec.mask(self.root or Path("."), self.table.iloc[i])
        return Volume(self._labels(i, np.asarray(vol.array), 3), vol.affine)

    def _labels(self, i: int, array: np.ndarray, ndim: int) -> np.ndarray:
        """``array`` as uint8 class ids, checked: ``ndim`` axes, values 0 to the number of classes."""
        if array.dtype == bool:
            array = array.astype(np.uint8)
        where = f"{self.spec.key}: mask {self.mask_file(i)} of {self.table['id'].iloc[i]}"
        if array.ndim != ndim:
            raise DatasetError(f"{where} has shape {array.shape}, expected {'(H, W)' if ndim == 2 else '(X, Y, Z)'}")
        n = len(self.spec.mask_classes)
        bad = array[(array < 0) | (array > n) | (array != np.round(array))] if array.size else array
        if bad.size:
            raise DatasetError(f"{where} holds value {bad.flat[0].item()!r}; its labels are 0 (background) to {n} "
                               f"({', '.join(self.spec.mask_classes)}): repair or replace the file")
        return array.astype(np.uint8)

    def group_attrs(self) -> dict[str, Any]:
        """Attributes recorded on the dataset's cache group (JSON-serialisable)."""
        return {
            "adapter": self.spec.key,
            "adapter_version": self.spec.version,
            "needs_data": self.spec.needs_data,  # whether rebuilding it takes --data
            "title": self.spec.title,
            "modality": self.spec.modality,
            "task": self.extra_attrs.get("task", self.spec.task),
            "label_names": self.label_names,
            "attributes": {
                a: {"groups": list(r.groups), "rule": r.description, "source": r.source}
                for a, r in self.rules.items()
                if a in self.attribute_names
            },
            "split_policy": plain_split_policy(self.spec.task),
            "split_fractions": list(DEFAULT_FRACTIONS),
            "split_seed": self.seed,
            "options": dict(self.options),
            "source_fingerprint": self.fingerprint,
            "prompts": {
                k: {"templates": list(p.templates), "classes": list(p.classes), "label": p.label}
                for k, p in self.spec.prompts.items()
            },
            **({"mask_classes": list(self.spec.mask_classes)} if self.spec.mask_classes else {}),
            **self.extra_attrs,
        }


def data_root(spec: DatasetSpec, data: str | Path | None) -> Path | None:
    """``--data`` if given, else ``$FMCACHE_DATA/<key>``; an error when the dataset needs files."""
    if data is not None:
        root = Path(data).expanduser()
    elif os.environ.get("FMCACHE_DATA"):
        root = Path(os.environ["FMCACHE_DATA"]).expanduser() / spec.key
    elif not spec.needs_data:
        return None
    else:
        raise DatasetError(
            f"no data for {spec.key!r}: pass --data PATH (the root of your copy of the release) "
            f"or set FMCACHE_DATA so that $FMCACHE_DATA/{spec.key} is that root"
        )
    if spec.needs_data and not root.exists():
        raise DatasetError(f"data root for {spec.key!r} not found: {root} (expected layout: {spec.layout.splitlines()[0]})")
    return root


def check_options(spec: DatasetSpec, options: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(options) - set(spec.options) - set(RESERVED_OPTIONS))
    if unknown:
        known = ", ".join(sorted({*spec.options, *RESERVED_OPTIONS})) or "none"
        raise DatasetError(f"{spec.key}: unknown dataset option(s) {', '.join(unknown)} (known: {known})")
    opts = {k: str(v) for k, v in options.items()}
    if opts.get("split", "").strip() == "patient":  # the default spelt out: same table, same fingerprint
        del opts["split"]
    balanced_attribute(spec.key, opts)  # a malformed split option fails before the release is read
    return opts


def adapter_options(options: Mapping[str, str]) -> dict[str, str]:
    """The options meant for the adapter's ``read``: all but the reserved ones."""
    return {k: v for k, v in options.items() if k not in RESERVED_OPTIONS}


def balanced_attribute(key: str, options: Mapping[str, str]) -> str | None:
    """The attribute named by ``split=balanced-test:<attribute>``; None for the plain split."""
    value = str(options.get("split", "patient")).strip()
    if value == "patient":
        return None
    kind, _, attr = value.partition(":")
    if kind.strip() != BALANCED_TEST or not attr.strip():
        raise DatasetError(
            f"{key}: option split={value!r} is not 'patient' or '{BALANCED_TEST}:<attribute>' (e.g. -o split=balanced-test:sex)"
        )
    return attr.strip()


def plain_split_policy(task: str) -> str:
    return SEGMENTATION_SPLIT_POLICY if task == "segmentation" else SPLIT_POLICY


def split_policy(options: Mapping[str, str], base: str = SPLIT_POLICY) -> str:
    """How the split was made, as recorded on the cache group (``base``: the plain policy)."""
    attr = balanced_attribute("", options)
    return base if attr is None else f"{base}; test balanced between the {attr} groups (surplus -> train)"


def split_suffix(options: Mapping[str, str]) -> str:
    """Cache-name suffix for a non-default split: its samples table differs, so its group must too."""
    attr = balanced_attribute("", options)
    return "" if attr is None else f"_split-{BALANCED_TEST}-{attr}"


def attribute_rules(spec: DatasetSpec, raw: RawTable) -> Mapping[str, AttributeRule]:
    """The rules for this raw table: the adapter's per-call rules if it set any, else the entry's."""
    return raw.attribute_rules if raw.attribute_rules is not None else spec.attributes


def build_samples(
    spec: DatasetSpec, raw: RawTable, *, seed: int = 0, options: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, str]:
    """Check an adapter's raw table, binarise its attributes and split it by subject.

    Attributes are binarised with ``raw.attribute_rules`` when the adapter set them (rules
    chosen per call, e.g. from user options), else with ``spec.attributes``. Returns the
    samples table and a fingerprint of everything that determines it.
    """
    rules = attribute_rules(spec, raw)
    frame = raw.frame
    label_cols = [c for c in frame.columns if str(c).startswith("label/")]
    missing = [c for c in ("id", "subject", "path") if c not in frame.columns]
    if not label_cols and (raw.task or spec.task) != "segmentation":
        missing.append("label/<name>")
    if missing:
        raise DatasetError(f"{spec.key}: adapter produced no column(s) {missing}")
    if len(frame) == 0:
        raise DatasetError(f"{spec.key}: the release yielded no samples (check --data and the metadata files)")
    ids = frame["id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DatasetError(f"{spec.key}: sample id {dup.iloc[0]!r} occurs more than once; ids must be unique")

    out = pd.DataFrame({"id": ids.to_numpy(), "subject": frame["subject"].astype(str).to_numpy()})
    labels = {}
    for c in label_cols:
        labels[c] = pd.to_numeric(frame[c], errors="coerce").fillna(-1).to_numpy().astype(np.int8)
    attrs = {}
    for name, rule in rules.items():
        col = f"raw/{name}"
        if col not in frame.columns:
            continue  # an optional attribute whose file the user does not have (e.g. race)
        try:
            attrs[f"sa/{name}"] = encode(rule, frame[col])
        except ValueError as e:
            raise DatasetError(
                f"{spec.key}: unexpected {name} value {e.args[0]!r} in {rule.source or col} "
                f"(known rule: {rule.description}); correct the file or report the new spelling"
            ) from None
        attrs[f"sa_raw/{name}"] = frame[col].map(lambda v: "" if v is None or v != v else str(v).strip()).to_numpy(dtype=str)

    # segmentation rows have no labels: the first attribute alone stratifies
    first_label = labels[label_cols[0]] if label_cols else np.zeros(len(out), np.int8)
    first_attr = next((v for k, v in attrs.items() if k.startswith("sa/")), np.zeros(len(out), np.int8))
    strata = first_label.astype(np.int16) * 10 + first_attr
    out["split"] = patient_split(out["subject"], strata, seed=seed)
    balanced = balanced_attribute(spec.key, options or {})
    if balanced is not None:
        out["split"] = _balance(spec, rules, out, attrs, balanced, seed)
    out["path"] = frame["path"].astype(str).to_numpy()
    for k, v in {**labels, **attrs}.items():
        out[k] = v
    for c in frame.columns:
        if str(c).startswith(EXTRA_PREFIXES):
            out[c] = frame[c].to_numpy()

    h = hashlib.sha256()
    h.update(json.dumps({"key": spec.key, "version": spec.version, "seed": seed, "options": dict(options or {})}, sort_keys=True).encode())
    for c in out.columns:
        if c != "path":
            h.update(c.encode())
            h.update(pd.util.hash_pandas_object(out[c], index=False).to_numpy().tobytes())
    return out, h.hexdigest()[:16]


def _balance(
    spec: DatasetSpec, rules: Mapping[str, AttributeRule], out: pd.DataFrame, attrs: Mapping[str, np.ndarray], attr: str, seed: int
) -> np.ndarray:
    """The split with a test set balanced between ``attr``'s groups (see :func:`balance_test`)."""
    if f"sa/{attr}" not in attrs:
        have = ", ".join(k[3:] for k in attrs if k.startswith("sa/")) or "none"
        raise DatasetError(f"{spec.key}: split=balanced-test:{attr} names no sensitive attribute of this dataset (have: {have})")
    groups = rules[attr].groups
    try:
        return balance_test(out["split"].to_numpy(), out["subject"], attrs[f"sa/{attr}"], n_groups=len(groups), seed=seed)
    except ValueError as e:
        code = e.args[0]
        what = f"no test subject in group {groups[code]!r}" if code >= 0 else "no subjects that pair up"
        raise DatasetError(
            f"{spec.key}: cannot balance the test split by {attr}: {what}; use another attribute or the plain split"
        ) from None
