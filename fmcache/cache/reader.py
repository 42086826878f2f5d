"""Reading the cache from Python: no torch, no JAX.

>>> import fmcache
>>> cache = fmcache.open_cache()                    # $FMCACHE_HOME or ~/.cache/fmcache
>>> cache.datasets()
['synthetic']
>>> emb = cache.embeddings("synthetic", "efficientnet_lite0")
>>> X = emb.features(split="train")                 # float32 (n, d)
>>> y = emb.labels(split="train")                   # int8 (n, C), -1 unknown
>>> g = emb.groups("sex", split="train")            # int8 (n,), -1 unknown

Every read is checked: rows that are not encoded, chunks that are missing or fail their
checksum, and an entry replaced since it was opened each raise one clear error naming what
is wrong, never plausible numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import zarr

from fmcache.cache import attrs as A
from fmcache.cache import checked
from fmcache.cache import layout as L
from fmcache.cache.store import member_names, open_root, resolve_root, storage_errors
from fmcache.datasets.splits import SPLIT_NAMES
from fmcache.errors import CacheDamagedError, CacheError, CacheMissError, FmcacheError, UnknownNameError, did_you_mean

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
        with storage_errors(f"the cache at {self.root}"):
            # the runs folder is a group of the hierarchy too (see fmcache.runs), not a dataset
            return [k for k in member_names(self._group, zarr.Group) if k not in L.RESERVED and L.SAMPLES in self._group[k]]

    def models(self, dataset: str) -> list[str]:
        """Models with an entry (complete or not) for ``dataset``."""
        g = self._dataset_group(dataset)
        with storage_errors(f"cache dataset {dataset}"):
            return [k for k in member_names(g, zarr.Group) if k != L.SAMPLES]

    def entries(self) -> pd.DataFrame:
        """One row per (dataset, model): state, rows, feature widths, weights and when made."""
        rows = []
        for d in self.datasets():
            for m in self.models(d):
                try:
                    with storage_errors(f"cache entry {d}/{m}"):
                        entry = self._group[d][m]
                        a = A.read(entry, "", "")
                        done = _done_bitmap(entry)
                        text = ", ".join(member_names(entry[L.TEXT], zarr.Array)) if L.TEXT in entry else ""
                except (FmcacheError, KeyError):
                    a, done, text = {"state": "damaged: see `fmcache cache verify`"}, None, ""
                rows.append(
                    {
                        "dataset": d,
                        "model": m,
                        "state": a.get("state"),
                        "chunks_done": _progress(done, a.get("state")),
                        "n": a.get("n"),
                        "dims": ", ".join(f"{k}={v}" for k, v in (a.get("dims") or {}).items()),
                        "text": text,
                        "weights": a.get("weights_id"),
                        "created": a.get("created"),
                    }
                )
        return pd.DataFrame(rows, columns=["dataset", "model", "state", "chunks_done", "n", "dims", "text", "weights", "created"])

    def dataset_info(self, dataset: str) -> dict[str, Any]:
        """The dataset group's attributes (adapter, labels, attribute rules, split policy...)."""
        return _dataset_attrs(self._dataset_group(dataset))

    def samples(self, dataset: str) -> pd.DataFrame:
        """A cached dataset's samples table (as ``Embeddings.samples``), no model entry needed."""
        return _Samples(self._dataset_group(dataset), dataset).frame()

    def embeddings(self, dataset: str, model: str, *, allow_partial: bool = False) -> Embeddings:
        """Open a (dataset, model) entry; CacheMissError if absent or not complete."""
        g = self._dataset_group(dataset)
        L.check_name("model", model)
        with storage_errors(f"cache entry {dataset}/{model}"):
            if model not in g:
                raise CacheMissError(
                    f"no cached embeddings for model {model!r} on dataset {dataset!r}"
                    f"{did_you_mean(model, self.models(dataset))}; run `{self._embed_command(dataset, model)}`"
                )
            entry = _group(g, model, f"cache entry {dataset}/{model}", ENTRY_REMEDY)
            attrs = A.read(entry, f"cache entry {dataset}/{model}", ENTRY_REMEDY)
        if attrs.get("state") != L.STATE_COMPLETE and not allow_partial:
            done = _done_bitmap(entry)
            progress = f"{int(done.sum())}/{done.size} chunks" if done is not None else "its done bitmap is damaged"
            raise CacheMissError(
                f"cache entry {dataset}/{model} is incomplete ({progress}); "
                f"rerun `{self._embed_command(dataset, model)}` to finish it"
            )
        if attrs.get("format") != L.FORMAT:
            raise CacheError(
                f"cache entry {dataset}/{model} was written by an older fmcache without checksums; "
                f"rebuild it with `{self._embed_command(dataset, model)} --overwrite`"
            )
        return Embeddings(self.root, g, entry, attrs, allow_partial=allow_partial)

    def _dataset_group(self, dataset: str) -> zarr.Group:
        L.check_name("dataset", dataset)
        with storage_errors(f"cache dataset {dataset}"):
            if dataset not in self._group or L.SAMPLES not in self._group[dataset]:
                raise CacheMissError(f"dataset {dataset!r} is not in the cache at {self.root}{self._cached_as(dataset)}")
            g = _group(self._group, dataset, f"cache dataset {dataset}", DATASET_REMEDY)
            if _dataset_attrs(g).get("format") != L.FORMAT:
                raise CacheError(f"cache dataset {dataset} was written by an older fmcache without checksums; rebuild it "
                                 "with `fmcache embed ... --overwrite` (or remove it: `fmcache cache rm`)")
            if _dataset_attrs(g).get("state") != L.STATE_COMPLETE:
                raise CacheError(
                    f"the samples table of cache dataset {dataset} is unfinished or marked for repair; "
                    f"rerun `fmcache embed` on {dataset} to write it again"
                )
            return g

    def _cached_as(self, name: str) -> str:
        """Where a dataset the user named by its adapter key (``csv``, ``chexpert``) is cached
        under another name, or a spelling hint."""
        made = []
        for d in self.datasets():
            try:
                if self.dataset_info(d).get("adapter") == name:
                    made.append(d)
            except FmcacheError:
                continue
        if made:
            return f"; the {name} adapter's data is cached as {', '.join(repr(d) for d in made)}: use -d {made[0]}"
        return did_you_mean(name, self.datasets())

    def _embed_command(self, dataset: str, model: str) -> str:
        """The `fmcache embed` line that (re)builds an entry of a cached dataset: its adapter
        and options, which need not be its cache name (a csv study, a split option)."""
        import shlex

        try:
            info = self.dataset_info(dataset)
        except FmcacheError:
            info = {}
        adapter = info.get("adapter", dataset)
        opts = "".join(f" -o {shlex.quote(f'{k}={v}')}" for k, v in (info.get("options") or {}).items())
        data = " --data <your copy>" if info.get("needs_data", True) else ""
        return f"fmcache embed --model {model} --dataset {adapter}{data}{opts}"

    def __repr__(self) -> str:
        return f"Cache({self.root!r})"


ENTRY_REMEDY = "`fmcache cache verify --repair` removes the entry; `fmcache embed` builds it again"
DATASET_REMEDY = "`fmcache cache verify --repair` removes the dataset; `fmcache embed` builds it again"


def _dataset_attrs(g: zarr.Group) -> dict[str, Any]:
    return A.read(g, f"cache dataset {g.basename}", DATASET_REMEDY)


def _group(parent: zarr.Group, name: str, where: str, remedy: str) -> zarr.Group:
    """A child group; its metadata not being valid JSON is damage, named as such."""
    try:
        return parent[name]
    except ValueError as e:
        raise CacheDamagedError(f"{where}: its metadata cannot be read ({e}); {remedy}") from None


def _array(group: zarr.Group, path: str, where: str, remedy: str) -> zarr.Array:
    """An array of the hierarchy; its metadata missing or unreadable is damage, named as such."""
    try:
        with storage_errors(where):
            return group[path]
    except (KeyError, CacheError) as e:
        raise CacheDamagedError(f"{where}: its metadata is missing or damaged ({e}); {remedy}") from None


def _progress(done: np.ndarray | None, state: str | None) -> str:
    if done is not None:
        return f"{int(done.sum())}/{done.size}"
    # a writer that is still making the entry's arrays has no bitmap yet: that is not damage
    return "none yet" if state == L.STATE_CREATING else "damaged"


def _done_bitmap(entry: zarr.Group) -> np.ndarray | None:
    """The entry's done bitmap, or None when it is missing or damaged."""
    try:
        return checked.read(entry[L.DONE], None, "done", "").astype(bool)
    except (FmcacheError, KeyError):
        return None


class _Samples:
    """The samples arrays of a dataset group, read checked."""

    REMEDY = "run `fmcache cache verify --repair`, then `fmcache embed` on this dataset to write it again"

    def __init__(self, dataset_group: zarr.Group, dataset: str):
        self.g, self.dataset = dataset_group, dataset
        self.info = _dataset_attrs(dataset_group)

    def read(self, path: str, rows: np.ndarray | None = None) -> np.ndarray:
        where = f"cache dataset {self.dataset}, samples/{path}"
        return checked.read(_array(self.g, f"{L.SAMPLES}/{path}", where, self.REMEDY), rows, where, self.REMEDY)

    @property
    def label_names(self) -> list[str]:
        return list(self.info.get("label_names", []))

    @property
    def attributes(self) -> list[str]:
        s = self.g[L.SAMPLES]
        return member_names(s[L.SA], zarr.Array) if L.SA in s else []

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"id": self.read(L.ID), "subject": self.read(L.SUBJECT), "split": self.read(L.SPLIT)})
        df["split"] = df["split"].map({v: k for k, v in SPLIT_NAMES.items()})
        y = self.read(L.LABEL)
        for i, name in enumerate(self.label_names):
            df[f"label/{name}"] = y[:, i]
        s = self.g[L.SAMPLES]
        for a in self.attributes:
            df[f"sa/{a}"] = self.read(f"{L.SA}/{a}")
            if L.SA_RAW in s and a in s[L.SA_RAW]:
                df[f"sa_raw/{a}"] = self.read(f"{L.SA_RAW}/{a}").astype(object)
        return df


class Embeddings:
    """One cached (dataset, model) entry: features, labels, groups and provenance.

    Reads refuse rows that are not encoded and chunks that are missing or damaged; if the
    entry is replaced after it was opened (``fmcache embed --overwrite``), reads raise
    instead of mixing two models' numbers.
    """

    def __init__(self, root: str, dataset_group: zarr.Group, entry: zarr.Group, attrs: dict[str, Any], *,
                 allow_partial: bool = False):
        self._root = root
        self._d = dataset_group
        self._e = entry
        self._samples = _Samples(dataset_group, dataset_group.basename)
        self._allow_partial = allow_partial
        self._attrs = attrs
        self._generation = attrs.get("generation")

    @property
    def dataset(self) -> str:
        return self._d.basename

    @property
    def model(self) -> str:
        return self._e.basename

    @property
    def where(self) -> str:
        return f"cache entry {self.dataset}/{self.model}"

    @property
    def provenance(self) -> dict[str, Any]:
        """Everything recorded about how the features were made (weights, preprocessing...)."""
        return dict(self._attrs)

    def chunks_done(self) -> tuple[int, int] | None:
        """(chunks encoded, chunks in all) of the entry; None when its done bitmap is damaged."""
        done = _done_bitmap(self._e)
        return None if done is None else (int(done.sum()), int(done.size))

    @property
    def dataset_info(self) -> dict[str, Any]:
        return dict(self._samples.info)

    @property
    def kinds(self) -> list[str]:
        return list(self.provenance["feature_kinds"])

    @property
    def label_names(self) -> list[str]:
        return self._samples.label_names

    @property
    def attributes(self) -> list[str]:
        return self._samples.attributes

    @cached_property
    def _split(self) -> np.ndarray:
        return self._samples.read(L.SPLIT)

    def _rows(self, split: Split) -> np.ndarray | None:
        if split is None:
            return None
        code = SPLIT_NAMES.get(split) if isinstance(split, str) else split
        if code not in (0, 1, 2):
            raise UnknownNameError(f"unknown split {split!r}: use 'train', 'val', 'test' or None")
        return np.flatnonzero(self._split == code)

    def split_rows(self, split: Split) -> np.ndarray:
        """Positions (rows of :meth:`samples`) of a split's samples, ascending."""
        return self._rows(split)

    def features(self, split: Split = None, kind: str = "image") -> np.ndarray:
        """Features as float32 (n, d); ``kind`` "image" (pre-projection) or "image_proj".

        A kind of per-item maps (a SAM entry's ``features``, (n, 256, 64, 64)) reads whole:
        :meth:`item_rows` reads some of its rows.
        """
        self._check_kind(kind)
        return self._read(kind, self._rows(split))

    def item_rows(self, kind: str, rows: np.ndarray | list[int], *, as_stored: bool = False) -> np.ndarray:
        """Rows ``rows`` (positions in :meth:`samples`) of a feature kind, checked as every read
        is: float32, or the stored integers of an integer kind (a SAM entry's ``sizes``);
        ``as_stored`` keeps float16 features float16 (half the memory, for a consumer that
        widens them itself)."""
        self._check_kind(kind)
        return self._read_all([kind], np.asarray(rows, dtype=np.int64), widen=not as_stored)[0]

    def items(self, rows: np.ndarray | list[int], kinds: Sequence[str]) -> dict[str, np.ndarray]:
        """:meth:`item_rows` of several kinds, the entry checked once for all of them (the
        checks cost more than reading one item)."""
        for kind in kinds:
            self._check_kind(kind)
        return dict(zip(kinds, self._read_all(list(kinds), np.asarray(rows, dtype=np.int64))))

    def _check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise UnknownNameError(f"{self.dataset}/{self.model} has no feature kind {kind!r} (it has {self.kinds})")

    def slice_features(self, split: Split = None, kind: str = "image") -> np.ndarray:
        """Per-slice features of a 2.5D entry as float32 (n, S, D), slices in volume order.

        ``features()`` of such an entry holds the volume feature pooled over the slices
        (``provenance["volume"]["pool"]``).
        """
        if not self.provenance.get("volume"):
            raise UnknownNameError(f"{self.dataset}/{self.model} holds 2D images, not volumes: it has no slice features")
        self._check_kind(kind)
        return self._read(f"{L.SLICES}/{kind}", self._rows(split))

    def _check_current(self) -> None:
        """Raise if the entry was replaced or unfinished since it was opened."""
        with storage_errors(self.where):
            try:
                attrs = A.read(zarr.open_group(store=self._e.store, path=self._e.path, mode="r"), self.where, ENTRY_REMEDY)
            except FileNotFoundError:
                attrs = {}
        if attrs.get("generation") != self._generation:
            raise CacheError(
                f"{self.where} was replaced or removed after it was opened (another `fmcache embed --overwrite`?); "
                "open it again to read the new entry"
            )
        if attrs.get("state") != L.STATE_COMPLETE and not self._allow_partial:
            raise CacheError(f"{self.where} is being rewritten or repaired; open it again once `fmcache embed` has finished")

    def _read(self, name: str, rows: np.ndarray | None) -> np.ndarray:
        return self._read_all([name], rows)[0]

    def _read_all(self, names: list[str], rows: np.ndarray | None, widen: bool = True) -> list[np.ndarray]:
        remedy = (f"run `fmcache cache verify {self.dataset} {self.model} --repair`, then `fmcache embed` to "
                  "encode those rows again")
        self._check_current()
        arrays = [_array(self._e, name, f"{self.where}, {name}", remedy) for name in names]
        # the marks of the chunks read only: the bitmap is one object per chunk, and a window of
        # a streamed split must not read thousands of them
        needed = sorted(set().union(*(checked.row_chunks(arr, rows) for arr in arrays)))
        marks = checked.read(_array(self._e, L.DONE, f"{self.where}, done bitmap", remedy), np.asarray(needed, np.int64),
                             f"{self.where}, done bitmap", remedy)
        done = dict(zip(needed, marks))
        out = []
        for name, arr in zip(names, arrays):
            undone = [c for c in checked.row_chunks(arr, rows) if not done[c]]
            if undone:
                a, b = checked.chunk_rows(arr, undone[0])
                raise CacheMissError(f"{self.where}: rows {a}-{b - 1} (chunk {undone[0]}) are not encoded yet; "
                                     f"rerun `fmcache embed --model {self.model}` to finish the entry")
            values = checked.read(arr, rows, f"{self.where}, {name}", remedy)
            # float16 features come out as float32; kinds stored wider (3D geometry, float64) keep their precision
            out.append(values.astype(np.float32) if widen and values.dtype == np.float16 else values)
        self._check_current()  # replaced while we read: what we read may be the new model's
        return out

    def labels(self, split: Split = None, label: str | None = None) -> np.ndarray:
        """Labels as int8: (n, C) for all labels, or (n,) for one named ``label``; -1 unknown."""
        y = self._samples.read(L.LABEL, self._rows(split))
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
        return self._samples.read(f"{L.SA}/{attribute}", self._rows(split))

    def group_names(self, attribute: str) -> list[str]:
        """Names of the group codes of ``attribute`` (code i = names[i])."""
        return list(self._samples.info.get("attributes", {}).get(attribute, {}).get("groups", []))

    def samples(self) -> pd.DataFrame:
        """One row per sample: id, subject, split, labels, binarised and raw attributes."""
        return self._samples.frame()

    def prompt_sets(self) -> list[str]:
        return member_names(self._e[L.TEXT], zarr.Array) if L.TEXT in self._e else []

    def text_prototypes(self, prompt_set: str = "default") -> np.ndarray:
        """Text prototypes of a VLM, float32 (C classes, T templates, D); unit norm per template."""
        if prompt_set not in self.prompt_sets():
            raise CacheMissError(
                f"{self.dataset}/{self.model} has no text prototypes {prompt_set!r}"
                + (f" (it has {self.prompt_sets()})" if self.prompt_sets() else " (the model has no text tower)")
            )
        where = f"{self.where}, text/{prompt_set}"
        remedy = f"rebuild the entry: `fmcache cache rm {self.dataset} {self.model}`, then `fmcache embed`"
        return checked.read(self._e[L.TEXT][prompt_set], None, where, remedy).astype(np.float32)

    def prompts(self, prompt_set: str = "default") -> dict[str, Any]:
        """The templates and class names that made ``text_prototypes(prompt_set)``."""
        self.text_prototypes(prompt_set)
        return dict(self._e[L.TEXT][prompt_set].attrs)

    def __repr__(self) -> str:
        return f"Embeddings({self.dataset!r}, {self.model!r}, n={self._attrs.get('n')}, kinds={self.kinds})"


__all__ = ["Cache", "Embeddings", "FmcacheError", "open_cache"]
