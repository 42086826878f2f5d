"""Reading the cache from Python: no torch, no JAX.

>>> import fmcache
>>> cache = fmcache.open_cache()                    # $FMCACHE_HOME or ~/.cache/fmcache
>>> cache.datasets()
['synthetic']
>>> emb = cache.embeddings("synthetic", "efficientnet_lite0")
>>> X = emb.features(split="train")                 # float32 (n, d)
>>> y = emb.labels(split="train")                   # int8 (n, C), -1 unknown
>>> g = emb.groups("sex", split="train")            # int8 (n,), -1 unknown
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import zarr

from fmcache.cache import layout as L
from fmcache.cache.store import open_root, resolve_root
from fmcache.datasets.splits import SPLIT_NAMES
from fmcache.errors import CacheMissError, FmcacheError, UnknownNameError, did_you_mean

Split = str | int | None


def open_cache(root: str | os.PathLike[str] | None = None) -> Cache:
    """Open a cache for reading.

    Parameters
    ----------
    root
        A folder or fsspec URL; ``None`` means ``$FMCACHE_HOME``, else ``~/.cache/fmcache``.

    Examples
    --------
    >>> cache = open_cache("/data/fmcache")
    >>> cache.entries()          # one row per (dataset, model) with its state
    """
    return Cache(resolve_root(root))


class Cache:
    """A cache root: lists datasets and models, opens entries."""

    def __init__(self, root: str):
        self.root = root

    @cached_property
    def _group(self) -> zarr.Group:
        return open_root(self.root, mode="r")

    def datasets(self) -> list[str]:
        """Names of the cached datasets."""
        return sorted(k for k in self._group.group_keys() if L.SAMPLES in self._group[k])

    def models(self, dataset: str) -> list[str]:
        """Models with an entry (complete or not) for ``dataset``."""
        g = self._dataset_group(dataset)
        return sorted(k for k in g.group_keys() if k != L.SAMPLES)

    def entries(self) -> pd.DataFrame:
        """One row per (dataset, model): state, rows, feature widths, weights and when made."""
        rows = []
        for d in self.datasets():
            for m in self.models(d):
                a = dict(self._group[d][m].attrs)
                done = np.asarray(self._group[d][m][L.DONE][...]) if L.DONE in self._group[d][m] else np.array([])
                rows.append(
                    {
                        "dataset": d,
                        "model": m,
                        "state": a.get("state"),
                        "chunks_done": f"{int(done.sum())}/{done.size}",
                        "n": a.get("n"),
                        "dims": ", ".join(f"{k}={v}" for k, v in (a.get("dims") or {}).items()),
                        "text": ", ".join(sorted(self._group[d][m][L.TEXT].array_keys())) if L.TEXT in self._group[d][m] else "",
                        "weights": a.get("weights_id"),
                        "created": a.get("created"),
                    }
                )
        return pd.DataFrame(rows, columns=["dataset", "model", "state", "chunks_done", "n", "dims", "text", "weights", "created"])

    def dataset_info(self, dataset: str) -> dict[str, Any]:
        """The dataset group's attributes (adapter, labels, attribute rules, split policy...)."""
        return dict(self._dataset_group(dataset).attrs)

    def samples(self, dataset: str) -> pd.DataFrame:
        """A cached dataset's samples table (as ``Embeddings.samples``), no model entry needed."""
        return _samples(self._dataset_group(dataset))

    def embeddings(self, dataset: str, model: str, *, allow_partial: bool = False) -> Embeddings:
        """Open a (dataset, model) entry; CacheMissError if absent or not complete."""
        g = self._dataset_group(dataset)
        if model not in g or model == L.SAMPLES:
            raise CacheMissError(
                f"no cached embeddings for model {model!r} on dataset {dataset!r}"
                f"{did_you_mean(model, self.models(dataset))}; run `fmcache embed --model {model} --dataset {dataset}`"
            )
        entry = g[model]
        if entry.attrs.get("state") != L.STATE_COMPLETE and not allow_partial:
            done = np.asarray(entry[L.DONE][...])
            raise CacheMissError(
                f"cache entry {dataset}/{model} is incomplete ({int(done.sum())}/{done.size} chunks); "
                f"rerun `fmcache embed --model {model} --dataset {dataset}` to finish it"
            )
        return Embeddings(g, entry)

    def _dataset_group(self, dataset: str) -> zarr.Group:
        if dataset not in self._group or L.SAMPLES not in self._group[dataset]:
            raise CacheMissError(
                f"dataset {dataset!r} is not in the cache at {self.root}{did_you_mean(dataset, self.datasets())}"
            )
        return self._group[dataset]

    def __repr__(self) -> str:
        return f"Cache({self.root!r})"


class Embeddings:
    """One cached (dataset, model) entry: features, labels, groups and provenance."""

    def __init__(self, dataset_group: zarr.Group, entry: zarr.Group):
        self._d = dataset_group
        self._e = entry

    @property
    def dataset(self) -> str:
        return self._d.basename

    @property
    def model(self) -> str:
        return self._e.basename

    @cached_property
    def provenance(self) -> dict[str, Any]:
        """Everything recorded about how the features were made (weights, preprocessing...)."""
        return dict(self._e.attrs)

    @cached_property
    def dataset_info(self) -> dict[str, Any]:
        return dict(self._d.attrs)

    @property
    def kinds(self) -> list[str]:
        return list(self._e.attrs["feature_kinds"])

    @property
    def label_names(self) -> list[str]:
        return list(self._d.attrs.get("label_names", []))

    @property
    def attributes(self) -> list[str]:
        return _attributes(self._d)

    @cached_property
    def _split(self) -> np.ndarray:
        return np.asarray(self._d[L.SAMPLES][L.SPLIT][...])

    def _rows(self, split: Split) -> slice | np.ndarray:
        if split is None:
            return slice(None)
        code = SPLIT_NAMES.get(split) if isinstance(split, str) else split
        if code not in (0, 1, 2):
            raise UnknownNameError(f"unknown split {split!r}: use 'train', 'val', 'test' or None")
        return np.flatnonzero(self._split == code)

    def features(self, split: Split = None, kind: str = "image") -> np.ndarray:
        """Features as float32 (n, d); ``kind`` "image" (pre-projection) or "image_proj"."""
        if kind not in self.kinds:
            raise UnknownNameError(f"{self.dataset}/{self.model} has no feature kind {kind!r} (it has {self.kinds})")
        return self._read(kind, split)

    def slice_features(self, split: Split = None, kind: str = "image") -> np.ndarray:
        """Per-slice features of a 2.5D entry as float32 (n, S, D), slices in volume order.

        ``features()`` of such an entry holds the volume feature pooled over the slices
        (``provenance["volume"]["pool"]``).
        """
        if not self.provenance.get("volume"):
            raise UnknownNameError(f"{self.dataset}/{self.model} holds 2D images, not volumes: it has no slice features")
        if kind not in self.kinds:
            raise UnknownNameError(f"{self.dataset}/{self.model} has no feature kind {kind!r} (it has {self.kinds})")
        return self._read(f"{L.SLICES}/{kind}", split)

    def _read(self, name: str, split: Split) -> np.ndarray:
        rows = self._rows(split)
        arr = self._e[name]
        values = arr[...] if isinstance(rows, slice) else arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1))
        return np.asarray(values, dtype=np.float32)

    def labels(self, split: Split = None, label: str | None = None) -> np.ndarray:
        """Labels as int8: (n, C) for all labels, or (n,) for one named ``label``; -1 unknown."""
        y = np.asarray(self._d[L.SAMPLES][L.LABEL][...])[self._rows(split)]
        if label is None:
            return y
        if label not in self.label_names:
            raise UnknownNameError(f"{self.dataset} has no label {label!r}{did_you_mean(label, self.label_names)} (labels: {self.label_names})")
        return y[:, self.label_names.index(label)]

    def groups(self, attribute: str, split: Split = None) -> np.ndarray:
        """Binarised group codes of a sensitive attribute as int8 (n,); -1 unknown."""
        if attribute not in self.attributes:
            raise UnknownNameError(
                f"{self.dataset} has no sensitive attribute {attribute!r}{did_you_mean(attribute, self.attributes)} "
                f"(attributes: {self.attributes})"
            )
        return np.asarray(self._d[L.SAMPLES][L.SA][attribute][...])[self._rows(split)]

    def group_names(self, attribute: str) -> list[str]:
        """Names of the group codes of ``attribute`` (code i = names[i])."""
        return list(self._d.attrs.get("attributes", {}).get(attribute, {}).get("groups", []))

    def samples(self) -> pd.DataFrame:
        """One row per sample: id, subject, split, labels, binarised and raw attributes."""
        return _samples(self._d)

    def prompt_sets(self) -> list[str]:
        return sorted(self._e[L.TEXT].array_keys()) if L.TEXT in self._e else []

    def text_prototypes(self, prompt_set: str = "default") -> np.ndarray:
        """Text prototypes of a VLM, float32 (C classes, T templates, D); unit norm per template."""
        if prompt_set not in self.prompt_sets():
            raise CacheMissError(
                f"{self.dataset}/{self.model} has no text prototypes {prompt_set!r}"
                + (f" (it has {self.prompt_sets()})" if self.prompt_sets() else " (the model has no text tower)")
            )
        return np.asarray(self._e[L.TEXT][prompt_set][...], dtype=np.float32)

    def prompts(self, prompt_set: str = "default") -> dict[str, Any]:
        """The templates and class names that made ``text_prototypes(prompt_set)``."""
        self.text_prototypes(prompt_set)
        return dict(self._e[L.TEXT][prompt_set].attrs)

    def __repr__(self) -> str:
        return f"Embeddings({self.dataset!r}, {self.model!r}, n={self._e.attrs.get('n')}, kinds={self.kinds})"


def _attributes(dataset_group: zarr.Group) -> list[str]:
    s = dataset_group[L.SAMPLES]
    return sorted(s[L.SA].array_keys()) if L.SA in s else []


def _samples(dataset_group: zarr.Group) -> pd.DataFrame:
    s = dataset_group[L.SAMPLES]
    df = pd.DataFrame({"id": s[L.ID][...], "subject": s[L.SUBJECT][...], "split": s[L.SPLIT][...]})
    df["split"] = df["split"].map({v: k for k, v in SPLIT_NAMES.items()})
    y = np.asarray(s[L.LABEL][...])
    for i, name in enumerate(dataset_group.attrs.get("label_names", [])):
        df[f"label/{name}"] = y[:, i]
    for a in _attributes(dataset_group):
        df[f"sa/{a}"] = np.asarray(s[L.SA][a][...])
        if L.SA_RAW in s and a in s[L.SA_RAW]:
            df[f"sa_raw/{a}"] = np.asarray(s[L.SA_RAW][a][...], dtype=object)
    return df


__all__ = ["Cache", "Embeddings", "FmcacheError", "open_cache"]
