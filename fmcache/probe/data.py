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
    y: dict[str, np.ndarray]  # (n, L) int8 of the chosen labels, -1 unknown
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
        """(K, rows) scores to (K, samples): volumes take the max or mean over their slices."""
        if not self.slices:
            return scores
        per_slice = scores.reshape(scores.shape[0], -1, self.slices)
        return per_slice.max(axis=2) if self.pool == "max" else per_slice.mean(axis=2)


def load_probe_data(
    emb: Embeddings,
    *,
    labels: list[str] | None = None,
    attributes: list[str] | None = None,
    kind: str = "auto",
    volume: str = "max",
) -> ProbeData:
    """Read and check an entry: names exist, features are finite, each split has both classes.

    ``kind="auto"`` takes the post-projection feature where the model has one (as the
    benchmark's probes do), else the image feature. For a 2.5D entry, ``volume`` says how a
    volume is scored: ``max`` (the benchmark's rule) or ``mean`` of per-slice predictions
    from heads trained on slices, or ``features``: heads trained on the pooled volume feature.
    """
    if volume not in VOLUME_MODES:
        raise HeadInputError(f"unknown volume mode {volume!r}: use one of {', '.join(VOLUME_MODES)}")
    if emb.dataset_info.get("task") == "multiclass":
        raise HeadInputError(
            f"{emb.dataset}: multi-class labels are not supported by `fmcache probe` yet; "
            "use a binary or multi-label version of the dataset (see `fmcache datasets`)"
        )
    labels = _choose(labels, emb.label_names, "label", emb.dataset)
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
        pool=volume if slices else "",
    )


def _choose(wanted: list[str] | None, available: list[str], what: str, dataset: str) -> list[str]:
    if not wanted:
        return list(available)
    for name in wanted:
        if name not in available:
            raise UnknownNameError(f"{dataset} has no {what} {name!r}{did_you_mean(name, available)} (it has: {', '.join(available) or 'none'})")
    return list(wanted)
