"""A prompt sweep: every prompt type decoded from a SAM-family cache entry, Dice and IoU per
item against the ground truth, and their fairness with bootstrap intervals, in a run directory
that `fmcache results` and `fmcache report` read like a probe's.

The image features come from the cache (:mod:`fmcache.segment.features`); the ground-truth
masks from the dataset's release (``--data``), read with the options the cache recorded and
checked against its fingerprint. A dataset with several classes is segmented class by class,
one prompt per class, and an item's score is the mean over its classes, as the benchmark does;
a class absent from an item gets no prompt and counts by ``empty`` (see
:func:`fmcache.fairness.dice_per_sample`). The prompts are stored with the run, so every score
can be derived again.

Optional: the normalised surface distance at a tolerance in pixels (``nsd_tolerance``,
:mod:`fmcache.segment.surface`), with the same empty rule, means and gaps as Dice; every
predicted mask in the run (``save_masks``, read back with
:func:`fmcache.runs.masks.predicted_mask`). Always: thumbnails of a few items per group for the
report's overlays (:mod:`fmcache.segment.thumbnails`), decoded again after the sweep for those
items only, so the sweep itself costs the same.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pandas as pd

from fmcache import __version__
from fmcache.cache.reader import Embeddings, open_cache
from fmcache.datasets import load_dataset
from fmcache.datasets.samples import Dataset
from fmcache.datasets.splits import SPLIT_NAMES
from fmcache.errors import DatasetError, FmcacheError
from fmcache.fairness import dice_per_sample, evaluate_dice, iou_per_sample
from fmcache.runs import (
    Run,
    cache_root,
    discard_run,
    load_results,
    new_run_dir,
    prediction_key,
    write_run,
)
from fmcache.runs.masks import MaskWriter, write_overlays
from fmcache.segment.features import POOLED, cached_items
from fmcache.segment.prompts import PROMPT_TYPES, build_prompts, prompt_at
from fmcache.segment.sam import SamModel, decode, load_sam
from fmcache.segment.surface import nsd_per_sample
from fmcache.segment.thumbnails import THUMBNAIL, choose_items, pad_to, thumbnail

LABEL = "mask"  # the label column of a segmentation run's tables


@dataclass
class SegmentConfig:
    """What a prompt sweep decodes and how it evaluates (recorded in the run)."""

    dataset: str
    model: str
    prompts: list[str] = field(default_factory=lambda: ["center", "rand", "rands", "bbox"])
    attributes: list[str] | None = None
    split: str = "test"  # train | val | test | all
    seed: int = 0  # prompts (per item, class and type) and bootstrap resamples
    jitter: int = 0  # bbox: each side moved by up to this many pixels
    n_boot: int = 1000
    batch_size: int = 8  # items decoded at once
    empty: str = "one"  # a class absent from truth and prediction: 1 ("one") or left out ("skip")
    nsd_tolerance: float | None = None  # pixels of the original image: also the normalised surface distance
    save_masks: bool = False  # keep every predicted mask in the run (masks.npz)


def run_segment(cfg: SegmentConfig, *, data: str | os.PathLike[str] | None = None,
                root: str | os.PathLike[str] | None = None, runs: str | os.PathLike[str] | None = None,
                weights: str | None = None, sam: SamModel | None = None,
                on_batch: Callable[[int, int], None] | None = None) -> Run:
    """Decode every prompt type of ``cfg`` for the chosen split, evaluate, write a run.

    ``data`` is the dataset's release (for the masks; default ``$FMCACHE_DATA/<adapter>``),
    ``weights`` / ``sam`` the model (its prompt encoder and mask decoder run here; the image
    encoder's output comes from the cache). ``on_batch(done, total)`` reports progress.
    """
    for kind in cfg.prompts:
        if kind not in PROMPT_TYPES:
            raise FmcacheError(f"unknown prompt type {kind!r}: use {', '.join(PROMPT_TYPES)}")
    if cfg.split not in (*SPLIT_NAMES, "all"):
        raise FmcacheError(f"unknown split {cfg.split!r}: use train, val, test or all")
    if cfg.empty not in ("one", "skip"):
        raise FmcacheError(f"empty rule {cfg.empty!r}: use one or skip")
    if cfg.nsd_tolerance is not None and not (math.isfinite(cfg.nsd_tolerance) and cfg.nsd_tolerance >= 0):
        raise FmcacheError(f"NSD tolerance {cfg.nsd_tolerance!r}: give a number of pixels >= 0")
    emb = open_cache(root).embeddings(cfg.dataset, cfg.model)
    if emb.provenance.get("family") != "sam":
        raise FmcacheError(f"{cfg.dataset}/{cfg.model} holds classification features, not SAM-family image "
                           f"features: embed the dataset with a segmentation model (e.g. `fmcache embed -m sam`)")
    ds = _masks_source(emb, data)
    attributes = cfg.attributes or emb.attributes
    for a in attributes:
        emb.groups(a)  # an unknown attribute is named before any work
    sam = sam or load_sam(str(emb.provenance["model"]), weights=weights)
    split = emb.samples()["split"].to_numpy()
    rows = np.arange(len(split)) if cfg.split == "all" else np.flatnonzero(split == SPLIT_NAMES[cfg.split])
    if not len(rows):
        raise FmcacheError(f"{cfg.dataset} has no {cfg.split} items")
    path = new_run_dir(f"{cfg.dataset}-{cfg.model}-segment", root, runs)
    try:
        _sweep_into(path, cfg, emb, ds, sam, rows, attributes, str(cache_root(root)), on_batch)
    except BaseException:
        discard_run(path)
        raise
    return load_results(path)


def _masks_source(emb: Embeddings, data: str | os.PathLike[str] | None) -> Dataset:
    """The dataset as the cache recorded it, from the user's copy, checked to be the same samples."""
    info = emb.dataset_info
    if not info.get("mask_classes"):
        raise FmcacheError(f"{emb.dataset} has no segmentation masks (its adapter {info.get('adapter')!r} is not a "
                           "segmentation dataset)")
    ds = load_dataset(str(info["adapter"]), data, options=info.get("options") or {}, seed=int(info.get("split_seed", 0)))
    if ds.fingerprint != info.get("source_fingerprint"):
        raise DatasetError(f"the data at {ds.root} is not what {emb.dataset} was cached from (other files, options "
                           "or seed): pass --data the copy it was embedded from")
    return ds


def _sweep_into(path, cfg: SegmentConfig, emb: Embeddings, ds: Dataset, sam: SamModel, rows: np.ndarray,
                attributes: list[str], root: str, on_batch) -> None:
    classes = list(emb.dataset_info["mask_classes"])
    n_classes = len(classes)
    ids = emb.samples()["id"].to_numpy(dtype=str)
    metric_names = _metric_names(cfg.nsd_tolerance)
    scores = {k: {m: [] for m in metric_names} for k in cfg.prompts}
    prompt_parts = []
    masks = MaskWriter(path, cfg.prompts, classes) if cfg.save_masks else None
    try:
        for lo in range(0, len(rows), cfg.batch_size):
            batch = rows[lo:lo + cfg.batch_size]
            truth = [ds.mask(int(i)) for i in batch]
            features, meta = cached_items(emb, batch)
            prompts = build_prompts(truth, ids[batch], cfg.prompts, seed=cfg.seed, n_classes=n_classes,
                                    jitter=cfg.jitter)
            prompt_parts.append(prompts)
            for kind in cfg.prompts:
                pred = _predict(sam, features, meta, [t.shape for t in truth], prompts, np.arange(len(batch)), kind,
                                n_classes)
                for m, values in _score(truth, pred, cfg.empty, cfg.nsd_tolerance).items():
                    scores[kind][m].append(values)
                if masks is not None:
                    for j in range(len(batch)):
                        masks.add(kind, lo + j, [p[j] for p in pred])
            if on_batch:
                on_batch(min(lo + cfg.batch_size, len(rows)), len(rows))
        if masks is not None:
            masks.close(ids[rows], rows)
    except BaseException:
        if masks is not None:
            masks.abort()
        raise
    groups = {a: emb.groups(a)[rows] for a in attributes}
    names = {a: emb.group_names(a) for a in attributes}
    all_prompts = _concat_prompts(prompt_parts)
    blocks, predictions = [], {"prompts": all_prompts}
    per_item = {}
    for kind in cfg.prompts:
        values = {m: np.concatenate(scores[kind][m]) for m in metric_names}
        # the mean over an item's classes (under empty="skip", over those not left out)
        per_item[kind] = {m: _class_mean(v) for m, v in values.items()}
        for a in attributes:
            table = evaluate_dice(per_item[kind]["dsc"], {a: groups[a]}, iou=per_item[kind]["iou"],
                                  nsd=per_item[kind].get("nsd"), n_boot=cfg.n_boot, seed=cfg.seed,
                                  group_names={a: names[a]} if names[a] else None)
            blocks.append(table.assign(prompt=kind, head=kind, label=LABEL))
            predictions[prediction_key(kind, LABEL, a)] = {**values, "row": rows, "id": ids[rows], "group": groups[a]}
    metrics = pd.concat(blocks, ignore_index=True).assign(dataset=cfg.dataset, model=cfg.model)
    if attributes:
        _write_overlays(path, emb, ds, sam, rows, all_prompts, per_item, attributes[0], groups[attributes[0]],
                        names[attributes[0]], classes)
    write_run(path, config=_config(cfg, emb, attributes, names, rows, root), metrics=metrics, sweep=pd.DataFrame(),
              predictions=predictions)


def _class_mean(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # every class left out: NaN, as dice_per_sample
        return np.nanmean(values, axis=1)


def _predict(sam: SamModel, features: np.ndarray, meta, shapes: list[tuple[int, ...]], prompts: dict[str, np.ndarray],
             items: np.ndarray, kind: str, n_classes: int) -> list[list[np.ndarray]]:
    """Per class, one predicted bool mask per item: ``items`` index ``prompts``, rows of
    ``features``/``meta``/``shapes`` match them; a class without a prompt is predicted empty."""
    out = []
    for c in range(1, n_classes + 1):
        pred = [np.zeros(shape, bool) for shape in shapes]
        have = np.flatnonzero(prompts["present"][items, c - 1])
        if len(have):
            ps = [prompt_at(prompts, kind, int(items[j]), c) for j in have]
            decoded = decode(sam, features[have], meta.select(have),
                             points=None if kind == "bbox" else np.stack([p.points for p in ps]),
                             point_labels=None if kind == "bbox" else np.stack([p.point_labels for p in ps]),
                             boxes=np.stack([p.box for p in ps]) if kind == "bbox" else None)
            for j, mask in zip(have, decoded.masks):
                pred[j] = mask
        out.append(pred)
    return out


def _metric_names(nsd_tolerance: float | None) -> tuple[str, ...]:
    """The per-item scores a sweep computes: Dice and IoU, and NSD where a tolerance is given."""
    return ("dsc", "iou") + (("nsd",) if nsd_tolerance is not None else ())


def _score(truth: list[np.ndarray], pred: list[list[np.ndarray]], empty: str,
           nsd_tolerance: float | None) -> dict[str, np.ndarray]:
    """(items, classes) Dice and IoU (and NSD with a tolerance) of one prompt type's masks."""
    n_classes = len(pred)
    out = {m: np.zeros((len(truth), n_classes)) for m in _metric_names(nsd_tolerance)}
    for c in range(1, n_classes + 1):
        binary = [t == c for t in truth]
        out["dsc"][:, c - 1] = dice_per_sample(binary, pred[c - 1], n_classes=1, empty=empty)
        out["iou"][:, c - 1] = iou_per_sample(binary, pred[c - 1], n_classes=1, empty=empty)
        if nsd_tolerance is not None:
            out["nsd"][:, c - 1] = nsd_per_sample(binary, pred[c - 1], tolerance=nsd_tolerance, n_classes=1,
                                                  empty=empty)
    return out


def _write_overlays(path, emb: Embeddings, ds: Dataset, sam: SamModel, rows: np.ndarray, prompts: dict[str, np.ndarray],
                    per_item: dict[str, dict[str, np.ndarray]], attribute: str, groups: np.ndarray,
                    group_names: list[str] | None, classes: list[str]) -> None:
    """Thumbnails of the lowest, median and highest Dice items of each group of ``attribute``
    under the best prompt type, decoded again from the cache (a handful of items)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {k: np.nanmean(v["dsc"]) for k, v in per_item.items()}
    best = max(means, key=lambda k: (np.nan_to_num(means[k], nan=-1.0), -list(means).index(k)))
    n_groups = len(group_names) if group_names else int(groups.max(initial=-1)) + 1
    chosen = choose_items(per_item[best]["dsc"], groups, n_groups)
    if not chosen:
        return
    pos = np.array([k for k, _ in chosen])
    features, meta = cached_items(emb, rows[pos])
    truth = [ds.mask(int(rows[k])) for k in pos]
    pred = _predict(sam, features, meta, [t.shape for t in truth], prompts, pos, best, len(classes))
    parts: dict[str, list] = {"image": [], "truth": [], "pred": [], "size": []}
    for j, k in enumerate(pos):
        label = np.zeros(truth[j].shape, np.uint8)
        for c in range(len(classes)):
            label[pred[c][j]] = c + 1
        image = np.asarray(ds.image(int(rows[k])).convert("RGB"))
        im, t, p = thumbnail(image, truth[j], label)
        parts["image"].append(pad_to(im))
        parts["truth"].append(pad_to(t))
        parts["pred"].append(pad_to(p))
        parts["size"].append(t.shape)
    write_overlays(path, {
        **{k: np.stack(v) for k, v in parts.items()},
        "id": np.asarray(emb.samples()["id"].to_numpy(dtype=str)[rows[pos]]),
        "group": groups[pos], "dsc": per_item[best]["dsc"][pos], "pick": np.array([p for _, p in chosen]),
        "attribute": np.array(attribute), "prompt": np.array(best), "thumbnail": np.array(THUMBNAIL),
        "group_names": np.array(group_names or [str(g) for g in range(n_groups)]), "classes": np.array(classes),
    })


def _concat_prompts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch prompt arrays as one: per-item arrays joined, run-wide ones (classes, seed, jitter)
    kept once, as 1-element arrays where they are scalars (a run stores arrays)."""
    first = parts[0]
    n = len(first["ids"])
    return {k: np.concatenate([p[k] for p in parts]) if np.ndim(v) and len(v) == n and k != "classes"
            else np.atleast_1d(v) for k, v in first.items()}


def _config(cfg: SegmentConfig, emb: Embeddings, attributes, names, rows, root: str) -> dict[str, Any]:
    return {
        **asdict(cfg),
        "task": "segmentation",
        "root": root,
        "attributes": attributes,
        "group_names": names,
        "labels": [LABEL],
        "mask_classes": list(emb.dataset_info["mask_classes"]),
        "feature_kind": POOLED,  # what the report's representation analyses read
        "n_items": int(len(rows)),
        "cache": {k: emb.provenance.get(k) for k in ("weights_id", "weights_sha256", "preprocess", "row_fingerprint",
                                                     "created")},
        "versions": {"fmcache": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
