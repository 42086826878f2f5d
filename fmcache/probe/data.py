"""A cache entry's features, labels and groups, split and checked for training heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmcache.cache.reader import Cache, Embeddings
from fmcache.errors import HeadInputError, UnknownNameError, did_you_mean
from fmcache.protocols import QUERIES_KIND, REFERENCE_FEATURE, REFERENCE_LOGIT_FACTOR, entry_suffix, resolve

SPLITS = ("train", "val", "test")
VOLUME_MODES = ("max", "mean", "features")
QUERY_POOLS = ("mean", "max")


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
    # for VLM heads: prototypes, prompts, logit scale, and "X", the projected features they
    # score per split (whatever ``kind`` the other heads train on)
    text: dict[str, Any] = field(default_factory=dict)
    # 2.5D scored slice by slice: X rows are (volume, slice) pairs, S per volume, and a
    # volume's score is the max or mean of its slices' scores
    slices: int = 0
    pool: str = ""
    # multi-class labels: their class names (one list shared by every label, as the cache
    # records it); empty for binary and multi-label datasets
    classes: list[str] = field(default_factory=list)
    dataset_info: dict[str, Any] = field(default_factory=dict)  # the dataset group's attributes
    # where the training rows' cache chunks begin (positions in X["train"]): the blocks that
    # the chunk-wise minibatch order visits
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # features too large for the memory budget stay in the cache: X holds CachedRows
    streamed: bool = False

    @property
    def n_classes(self) -> int:
        """Classes of every chosen label: 2 for binary labels."""
        return len(self.classes) if self.classes else 2

    @property
    def multiclass(self) -> bool:
        return bool(self.classes)

    def inputs(self, text: bool = False) -> dict[str, np.ndarray]:
        """Features per split: those of the text heads (``text``), else ``X``."""
        return self.text["X"] if text else self.X

    def training_set(self, text: bool = False, shuffle: str = "rows") -> tuple[Any, np.ndarray, np.ndarray]:
        """Features, labels and groups of the training rows (each slice carries its volume's).

        With ``shuffle="chunks"`` the features come as blocks of the cache's chunks (an
        :class:`~fmcache.heads.stream.ArraySource`, or the streamed :class:`CachedRows`).
        """
        X, y, g = self.inputs(text)["train"], self.y["train"], self.g["train"]
        if shuffle == "chunks" and not isinstance(X, CachedRows):
            from fmcache.heads.stream import ArraySource

            X = ArraySource(X, self.starts)
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
    query_pool: str = "mean",
    logit_scale: str = "model",
    memory_budget: int | None = None,
) -> ProbeData:
    """Read and check an entry: names exist, features are finite, each split has both classes
    (every class of a multi-class label, whose class names ``ProbeData.classes`` holds).

    ``kind="auto"`` takes the post-projection feature where the model has one, else the image
    feature; ``"reference"`` the feature FairMedFM's probe takes for the model
    (:data:`fmcache.protocols.REFERENCE_FEATURE`; C2L's is L2-normalised), else as auto. For
    a 2.5D entry, ``volume`` says how a volume is scored: ``max`` (the benchmark's rule) or
    ``mean`` of per-slice predictions from heads trained on slices, or ``features``: heads
    trained on the pooled volume feature.

    The text heads always score the projected feature: ``query_pool="max"`` gives them every
    query's projection (an entry embedded with ``queries=reference``) to take the maximum
    over. ``logit_scale="reference"`` multiplies the model's logit scale by the reference
    code's factor (:data:`fmcache.protocols.REFERENCE_LOGIT_FACTOR`).

    Features are read into memory when they take at most half of ``memory_budget`` (None:
    :func:`fmcache.heads.memory.default_budget`); larger ones stay in the cache and are
    read as heads train and score (``ProbeData.streamed``, ``X`` of :class:`CachedRows`).
    """
    if volume not in VOLUME_MODES:
        raise HeadInputError(f"unknown volume mode {volume!r}: use one of {', '.join(VOLUME_MODES)}")
    if is_segmentation_entry(emb):
        raise HeadInputError(f"{emb.dataset}/{emb.model} holds SAM-family image features: decode prompts from them "
                             f"with `fmcache segment -d {emb.dataset} -m {emb.model}`; probes need embeddings")
    labels = _choose(labels, emb.label_names, "label", emb.dataset)
    classes = _classes(emb) if emb.dataset_info.get("task") == "multiclass" else []
    attributes = _choose(attributes, emb.attributes, "sensitive attribute", emb.dataset)
    if not attributes:
        raise HeadInputError(f"{emb.dataset} has no sensitive attribute: a fairness sweep needs at least one (csv: -o attributes=...)")
    base = str(emb.provenance.get("model", emb.model))
    l2 = False
    if kind == "reference":
        kind, l2 = REFERENCE_FEATURE.get(base, ("auto", False))
        _check_queries(emb, "--feature-kind reference takes BLIP-2's query 0")
    if kind == "auto":
        kind = "image_proj" if "image_proj" in emb.kinds else "image"
    samples = emb.samples()
    slices = int(emb.provenance["volume"]["slices"]) if emb.provenance.get("volume") and volume != "features" else 0
    text_kind = _text_kind(emb, query_pool) if emb.prompt_sets() else None
    # the text heads score the projected feature: a second copy where the other heads read another
    separate_text = text_kind is not None and (text_kind != kind or l2)
    streamed = _must_stream(emb, [kind, text_kind] if separate_text else [kind], slices, memory_budget)
    X, y, g = {}, {}, {}
    for split in SPLITS:
        X[split] = CachedRows(emb, kind, split, l2) if streamed else _read(emb, kind, split, slices, l2)
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
    if text_kind is not None:
        factor = REFERENCE_LOGIT_FACTOR.get(base, 1.0) if logit_scale == "reference" else 1.0
        text = {"prototypes": emb.text_prototypes(), "prompts": emb.prompts(),
                "logit_scale": (emb.provenance.get("logit_scale") or 100.0) * factor,
                "X": X if not separate_text else {split: CachedRows(emb, text_kind, split, False) if streamed
                                     else _read(emb, text_kind, split, slices, False) for split in SPLITS}}
    starts = _block_starts(emb.split_rows("train"), int(emb.provenance["chunk_rows"]))
    return ProbeData(
        dataset=emb.dataset, model=emb.model, kind=kind, X=X, y=y, g=g, labels=labels, attributes=attributes,
        group_names={a: emb.group_names(a) for a in attributes}, test_ids=test["id"].to_numpy(dtype=str),
        test_rows=test.index.to_numpy(), provenance=emb.provenance, text=text, slices=slices,
        pool=volume if slices else "", classes=classes, dataset_info=emb.dataset_info,
        starts=starts * slices if slices else starts, streamed=streamed,
    )


def is_segmentation_entry(emb: Embeddings) -> bool:
    """An entry of a SAM-family model's image features (for `fmcache segment`), not embeddings."""
    return emb.provenance.get("family") == "sam"


def entry_name(cache: Cache, dataset: str, model: str, protocol: str = "fmcache") -> str:
    """The cache entry a probe of ``model`` reads under ``protocol``: ``model`` itself when it
    names an entry with switches (``clip+pre-reference``) or the protocol's embed switches are
    fmcache's, else the entry those switches made. Missing: an error with the embed command."""
    embed = resolve(protocol, "embed")
    if "+" in model or not entry_suffix(embed, True):
        return model
    have = set(cache.models(dataset))
    names = dict.fromkeys(model + entry_suffix(embed, multi) for multi in (True, False))
    found = [n for n in names if n in have]
    if found:
        return found[0]
    raise UnknownNameError(
        f"{dataset} has no {' or '.join(map(repr, names))} entry: the {protocol} protocol probes the features its embed switches "
        f"make; run `fmcache embed --protocol {protocol} --model {model} ...` with the options that made {dataset!r}, "
        f"or name the entry to probe (cached: {', '.join(sorted(have))})"
    )


def _read(emb: Embeddings, kind: str, split: str, slices: int, l2: bool) -> np.ndarray:
    """One split's features (per slice for a 2.5D entry scored by slices), checked finite."""
    if slices:
        per_slice = emb.slice_features(split=split, kind=kind)
        X = per_slice.reshape(-1, per_slice.shape[-1])
    else:
        X = emb.features(split=split, kind=kind)
    return _checked(emb, kind, split, X, l2)


def _checked(emb: Embeddings, kind: str, split: str, X: np.ndarray, l2: bool) -> np.ndarray:
    # float16 (streamed as stored): inf and NaN read off the exponent bits, 5 times faster
    finite = (X.view(np.uint16) & 0x7C00) != 0x7C00 if X.dtype == np.float16 else np.isfinite(X)
    bad = ~finite.all(axis=1)
    if bad.any():
        raise HeadInputError(
            f"{emb.dataset}/{emb.model}: {int(bad.sum())} {split} row(s) have NaN or inf {kind} features; "
            f"re-embed with `fmcache embed --overwrite`"
        )
    if l2:
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


class CachedRows:
    """One split's features of a cache entry, left in the cache and read a block at a time
    (a :class:`~fmcache.heads.stream.RowSource`): heads train and score on them in bounded memory."""

    def __init__(self, emb: Embeddings, kind: str, split: str, l2: bool):
        self.emb, self.kind, self.split, self.l2 = emb, kind, split, l2
        self.rows = emb.split_rows(split)
        self.n, self.d = len(self.rows), int(emb.provenance["dims"][kind])
        self.starts = _block_starts(self.rows, int(emb.provenance["chunk_rows"]))

    def read(self, positions: np.ndarray) -> np.ndarray:
        held, back = np.unique(positions, return_inverse=True)
        # float16 as stored, widened on the device: half the bytes held and moved (the L2
        # normalised reference feature is computed, so float32)
        X = _checked(self.emb, self.kind, self.split, self.emb.item_rows(self.kind, self.rows[held], as_stored=not self.l2),
                     self.l2)
        return X if len(held) == len(positions) and np.array_equal(held, positions) else X[back]


def _block_starts(rows: np.ndarray, rows_per_block: int) -> np.ndarray:
    """Blocks of positions of ``rows`` (ascending store rows) that lie in one stored block each."""
    block = np.asarray(rows) // rows_per_block
    change = np.flatnonzero(np.diff(block)) + 1
    return np.concatenate([[0], change, [len(block)]]).astype(np.int64)


def _must_stream(emb: Embeddings, kinds: list[str], slices: int, memory_budget: int | None) -> bool:
    """Whether the features of ``kinds`` over all splits take more than half the budget."""
    from fmcache.heads.memory import default_budget, format_bytes

    budget = default_budget() if memory_budget is None else memory_budget
    rows = int(emb.provenance["n"]) * max(slices, 1)
    need = sum(rows * int(emb.provenance["dims"][k]) * 4 for k in kinds)
    if need <= budget // 2:
        return False
    if slices:
        raise HeadInputError(
            f"{emb.dataset}/{emb.model}: the per-slice features take {format_bytes(need)}, more than half the memory "
            f"budget ({format_bytes(budget)}), and slice-scored volumes are not streamed: raise --memory-budget, or "
            "train on the pooled volume feature (--volume features)"
        )
    return True


def _text_kind(emb: Embeddings, query_pool: str) -> str:
    if query_pool not in QUERY_POOLS:
        raise HeadInputError(f"unknown query pool {query_pool!r}: use one of {', '.join(QUERY_POOLS)}")
    if query_pool == "mean":
        return "image_proj"
    _check_queries(emb, "--query-pool max scores each BLIP-2 query")
    return QUERIES_KIND if QUERIES_KIND in emb.kinds else "image_proj"


def _check_queries(emb: Embeddings, what: str) -> None:
    """A BLIP-2 entry of query means cannot stand in for the reference's per-query features."""
    if emb.provenance.get("family") == "hf_blip2" and QUERIES_KIND not in emb.kinds:
        raise HeadInputError(
            f"{emb.dataset}/{emb.model}: {what}, but this entry caches the mean of the queries; embed it with "
            "`--queries reference` (or `--protocol fairmedfm`) first"
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
