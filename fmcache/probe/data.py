"""A cache entry's features, labels and groups, split and checked for training heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmcache.cache.reader import Embeddings
from fmcache.errors import HeadInputError, UnknownNameError, did_you_mean

SPLITS = ("train", "val", "test")
VOLUME_MODES = ("max", "mean", "features")


@dataclass
class ProbeData:
    """Everything a sweep needs from one (dataset, model) entry, per split."""

    dataset: str
    model: str
    kind: str
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]  # (n, L) int8 of the chosen labels (multi-class: class ids), -1 unknown
    g: dict[str, np.ndarray]  # (n, A) int8 of the chosen attributes, -1 unknown
    labels: list[str]
    attributes: list[str]
    group_names: dict[str, list[str]]
    test_ids: np.ndarray
    test_rows: np.ndarray
    provenance: dict[str, Any]
    text: dict[str, Any] = field(default_factory=dict)  # prototypes + logit scale, for VLM heads
    # 2.5D scored slice by slice: X rows are (volume, slice) pairs, S per volume, and a
    # volume's score is the max or mean of its slices' scores
    slices: int = 0
    pool: str = ""
    # multi-class labels: their class names (one list shared by every label, as the cache
    # records it); empty for binary and multi-label datasets
    classes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Classes of every chosen label: 2 for binary labels."""
        return len(self.classes) if self.classes else 2

    @property
    def multiclass(self) -> bool:
        return bool(self.classes)

    def training_set(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and groups of the training rows (each slice carries its volume's)."""
        X, y, g = self.X["train"], self.y["train"], self.g["train"]
        if self.slices:
            y, g = np.repeat(y, self.slices, axis=0), np.repeat(g, self.slices, axis=0)
        return X, y, g

    def row_groups(self, split: str) -> np.ndarray:
        """Groups aligned with the rows of ``X[split]``."""
        return np.repeat(self.g[split], self.slices, axis=0) if self.slices else self.g[split]

    def pool_scores(self, scores: np.ndarray) -> np.ndarray:
        """(K, rows[, C]) scores to (K, samples[, C]): volumes take the max or mean over their slices."""
        if not self.slices:
            return scores
        per_slice = scores.reshape(scores.shape[0], -1, self.slices, *scores.shape[2:])
        pooled = per_slice.max(axis=2) if self.pool == "max" else per_slice.mean(axis=2)
        if pooled.ndim == 3 and self.pool == "max":
            # per-class maxima come from different slices: renormalise to class probabilities
            pooled = pooled / pooled.sum(axis=-1, keepdims=True)
        return pooled


def load_probe_data(
    emb: Embeddings,
    *,
    labels: list[str] | None = None,
    attributes: list[str] | None = None,
    kind: str = "auto",
    volume: str = "max",
) -> ProbeData:
    """Read and check an entry: names exist, features are finite, each split has both classes
    (every class of a multi-class label, whose class names ``ProbeData.classes`` holds).

    ``kind="auto"`` takes the post-projection feature where the model has one (as the
    benchmark's probes do), else the image feature. For a 2.5D entry, ``volume`` says how a
    volume is scored: ``max`` (the benchmark's rule) or ``mean`` of per-slice predictions
    from heads trained on slices, or ``features``: heads trained on the pooled volume feature.
    """
    if volume not in VOLUME_MODES:
        raise HeadInputError(f"unknown volume mode {volume!r}: use one of {', '.join(VOLUME_MODES)}")
    labels = _choose(labels, emb.label_names, "label", emb.dataset)
    classes = _classes(emb) if emb.dataset_info.get("task") == "multiclass" else []
    attributes = _choose(attributes, emb.attributes, "sensitive attribute", emb.dataset)
    if not attributes:
        raise HeadInputError(f"{emb.dataset} has no sensitive attribute: a fairness sweep needs at least one (csv: -o attributes=...)")
    if kind == "auto":
        kind = "image_proj" if "image_proj" in emb.kinds else "image"
    samples = emb.samples()
    slices = int(emb.provenance["volume"]["slices"]) if emb.provenance.get("volume") and volume != "features" else 0
    X, y, g = {}, {}, {}
    for split in SPLITS:
        if slices:
            per_slice = emb.slice_features(split=split, kind=kind)
            X[split] = per_slice.reshape(-1, per_slice.shape[-1])
        else:
            X[split] = emb.features(split=split, kind=kind)
        bad = ~np.isfinite(X[split]).all(axis=1)
        if bad.any():
            raise HeadInputError(
                f"{emb.dataset}/{emb.model}: {int(bad.sum())} {split} row(s) have NaN or inf features; "
                f"re-embed with `fmcache embed --overwrite`"
            )
        all_y = emb.labels(split=split)
        y[split] = all_y[:, [emb.label_names.index(name) for name in labels]]
        g[split] = np.stack([emb.groups(a, split=split) for a in attributes], axis=1)
        for j, name in enumerate(labels):
            present = set(np.unique(y[split][:, j]).tolist()) - {-1}
            if classes:
                _check_classes(emb.dataset, name, split, present, classes)
            if len(present) < 2:
                raise HeadInputError(
                    f"{emb.dataset}: label {name!r} has only class {sorted(present) or 'none'} in the {split} split; "
                    "a probe cannot be trained or scored there (choose another label or re-split with another --seed)"
                )
    test = samples[samples["split"] == "test"]
    text = {}
    if emb.prompt_sets():
        text = {"prototypes": emb.text_prototypes(), "prompts": emb.prompts(), "logit_scale": emb.provenance.get("logit_scale") or 100.0}
    return ProbeData(
        dataset=emb.dataset, model=emb.model, kind=kind, X=X, y=y, g=g, labels=labels, attributes=attributes,
        group_names={a: emb.group_names(a) for a in attributes}, test_ids=test["id"].to_numpy(dtype=str),
        test_rows=test.index.to_numpy(), provenance=emb.provenance, text=text, slices=slices,
        pool=volume if slices else "", classes=classes,
    )


def _classes(emb: Embeddings) -> list[str]:
    """Class names of a multi-class entry: as the adapter recorded them, else the class ids."""
    named = emb.dataset_info.get("classes")
    if named:
        return [str(c) for c in named]
    top = int(emb.labels().max(initial=-1))
    if top < 1:
        raise HeadInputError(f"{emb.dataset}: a multi-class entry whose labels hold fewer than two classes")
    return [str(c) for c in range(top + 1)]


def _check_classes(dataset: str, label: str, split: str, present: set[int], classes: list[str]) -> None:
    # macro one-vs-rest AUC (selection and evaluation) is undefined when a class is absent
    odd = sorted(c for c in present if c >= len(classes))
    if odd:
        raise HeadInputError(f"{dataset}: label {label!r} holds class id(s) {odd} but the entry names {len(classes)} classes")
    missing = [classes[c] for c in range(len(classes)) if c not in present]
    if missing:
        raise HeadInputError(
            f"{dataset}: label {label!r} has no {split} sample of class(es) {', '.join(missing)}; macro one-vs-rest "
            "AUC needs every class in every split (re-split with another --seed, or merge rare classes)"
        )


def _choose(wanted: list[str] | None, available: list[str], what: str, dataset: str) -> list[str]:
    if not wanted:
        return list(available)
    for name in wanted:
        if name not in available:
            raise UnknownNameError(f"{dataset} has no {what} {name!r}{did_you_mean(name, available)} (it has: {', '.join(available) or 'none'})")
    return list(wanted)
