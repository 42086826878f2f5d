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

Volumes are items too, scored on their own voxels: a 3D model's cached blocks are decoded and
each mask mapped back (:mod:`fmcache.segment.volumetric`); a 2D model's foreground slices
(:mod:`fmcache.segment.slices`) are prompted one by one (the stored prompts are then per slice,
their ids the slices') and restacked into the volume. The run's config says which (``items``).

Optional: the normalised surface distance at a tolerance in pixels, mm for volumes (``nsd_tolerance``,
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
from abc import ABC, abstractmethod
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
from fmcache.segment.features import POOLED, cached_items, cached_volume
from fmcache.segment.models import TEXT_PROMPT, VOLUME_MODELS, check_prompt_types, entry_dataset
from fmcache.segment.prompts import PROMPT_TYPES, build_prompts, prompt_at
from fmcache.segment.sam import SamModel, decode, load_sam
from fmcache.segment.slices import is_slice_view, rebuild, restack, volume_groups
from fmcache.segment.surface import nsd_per_sample
from fmcache.segment.thumbnails import THUMBNAIL, choose_items, pad_to, thumbnail
from fmcache.segment.volumetric import TextPrompt, VolumeModel, decode_blocks, load_volume_model, normalised_volume

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
    nsd_tolerance: float | None = None  # also the normalised surface distance: pixels (images) or mm (volumes)
    save_masks: bool = False  # keep every predicted mask in the run (masks.npz)
    zoom_in: bool = False  # SegVol: also its zoom-in pass (encodes windows around each prediction afresh)


def run_segment(cfg: SegmentConfig, *, data: str | os.PathLike[str] | None = None,
                root: str | os.PathLike[str] | None = None, runs: str | os.PathLike[str] | None = None,
                weights: str | None = None, sam: Any = None,
                on_batch: Callable[[int, int], None] | None = None) -> Run:
    """Decode every prompt type of ``cfg`` for the chosen split, evaluate, write a run.

    ``data`` is the dataset's release (for the masks; default ``$FMCACHE_DATA/<adapter>``),
    ``weights`` / ``sam`` the model (its prompt encoder and mask decoder run here; the image
    encoder's output comes from the cache). ``on_batch(done, total)`` reports progress.

    A volumetric dataset is scored per volume: with a 3D model from its cached blocks; with a
    2D model from its cached foreground slices (the entry ``<dataset>_slices``), each slice
    prompted from its own mask and the predicted slices restacked into the volume.
    """
    volumetric = cfg.model in VOLUME_MODELS or isinstance(sam, VolumeModel)
    spec = (sam.spec if sam is not None else VOLUME_MODELS[cfg.model]) if volumetric else None
    for kind in cfg.prompts:
        if kind not in PROMPT_TYPES and not (spec is not None and kind in spec.prompts):
            raise FmcacheError(f"unknown prompt type {kind!r}: use {', '.join(PROMPT_TYPES)}")
    if spec is not None:
        check_prompt_types(spec, cfg.prompts)
    if cfg.split not in (*SPLIT_NAMES, "all"):
        raise FmcacheError(f"unknown split {cfg.split!r}: use train, val, test or all")
    if cfg.empty not in ("one", "skip"):
        raise FmcacheError(f"empty rule {cfg.empty!r}: use one or skip")
    if cfg.nsd_tolerance is not None and not (math.isfinite(cfg.nsd_tolerance) and cfg.nsd_tolerance >= 0):
        raise FmcacheError(f"NSD tolerance {cfg.nsd_tolerance!r}: give a number >= 0 (pixels; mm for volumes)")
    if cfg.zoom_in and not (spec is not None and spec.family == "segvol"):
        raise FmcacheError(f"--zoom-in is SegVol's second pass; {cfg.model} has none")
    emb = open_cache(root).embeddings(entry_dataset(cfg.dataset, cfg.model), cfg.model)
    family = emb.provenance.get("family")
    if family not in ("sam", "sam3d"):
        raise FmcacheError(f"{cfg.dataset}/{cfg.model} holds classification features, not SAM-family image "
                           f"features: embed the dataset with a segmentation model (e.g. `fmcache embed -m sam`)")
    ds = _masks_source(emb, data)
    attributes = cfg.attributes or emb.attributes
    for a in attributes:
        emb.groups(a)  # an unknown attribute is named before any work
    if family == "sam3d":
        sam = sam or load_volume_model(str(emb.provenance["model"]), weights=weights)
        source: _Source = _Volumes(emb, ds, sam, cfg)
    else:
        sam = sam or load_sam(str(emb.provenance["model"]), weights=weights)
        source = _Slices(emb, ds, sam, cfg) if is_slice_view(emb.dataset_info) else _Images(emb, ds, sam, cfg)
    rows = source.item_rows(cfg.split)
    if not len(rows):
        raise FmcacheError(f"{cfg.dataset} has no {cfg.split} items")
    path = new_run_dir(f"{cfg.dataset}-{cfg.model}-segment", root, runs)
    try:
        _sweep_into(path, cfg, source, rows, attributes, str(cache_root(root)), on_batch)
    except BaseException:
        discard_run(path)
        raise
    return load_results(path)


def _masks_source(emb: Embeddings, data: str | os.PathLike[str] | None) -> Dataset:
    """The dataset as the cache recorded it, from the user's copy, checked to be the same samples
    (for a slice entry: the volumetric dataset its slices came from)."""
    info = emb.dataset_info
    if not info.get("mask_classes"):
        raise FmcacheError(f"{emb.dataset} has no segmentation masks (its adapter {info.get('adapter')!r} is not a "
                           "segmentation dataset)")
    if is_slice_view(info):
        return rebuild(info, data)
    ds = load_dataset(str(info["adapter"]), data, options=info.get("options") or {}, seed=int(info.get("split_seed", 0)))
    if ds.fingerprint != info.get("source_fingerprint"):
        raise DatasetError(f"the data at {ds.root} is not what {emb.dataset} was cached from (other files, options "
                           "or seed): pass --data the copy it was embedded from")
    return ds


@dataclass
class _Unit:
    """One step of a sweep: items' true label maps, per prompt type and class the predicted
    masks (``pred[kind][c][j]``), the prompts as stored, and per item the spacing (or None)."""

    truth: list[np.ndarray]
    pred: dict[str, list[list[np.ndarray]]]
    prompts: dict[str, np.ndarray]
    spacings: list[tuple[float, ...] | None]


class _Source(ABC):
    """Where a sweep's items, their truth and their predictions come from."""

    items = "images"  # what the run's items are, as its config says
    one_at_a_time = False  # a volume is decoded alone; images in batches of cfg.batch_size

    def __init__(self, emb: Embeddings, ds: Dataset, model, cfg: SegmentConfig):
        self.emb, self.ds, self.model, self.cfg = emb, ds, model, cfg
        self.classes = list(emb.dataset_info["mask_classes"])
        self.n_classes = len(self.classes)

    def item_rows(self, split: str) -> np.ndarray:
        values = self.emb.samples()["split"].to_numpy()
        return np.arange(len(values)) if split == "all" else np.flatnonzero(values == SPLIT_NAMES[split])

    def ids(self) -> np.ndarray:
        return self.emb.samples()["id"].to_numpy(dtype=str)

    def groups(self, attribute: str) -> np.ndarray:
        return self.emb.groups(attribute)

    def units(self, rows: np.ndarray) -> list[np.ndarray]:
        """Positions (into ``rows``) decoded together."""
        step = 1 if self.one_at_a_time else self.cfg.batch_size
        return [np.arange(lo, min(lo + step, len(rows))) for lo in range(0, len(rows), step)]

    @abstractmethod
    def predict(self, rows: np.ndarray, kinds: list[str]) -> _Unit:
        """The truth and the predictions of the items ``rows`` for every prompt type ``kinds``."""

    def overlay(self, row: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``row``'s image (H, W, 3) uint8, true and predicted label maps (a volume: the
        axial slice where the truth is largest)."""
        unit = self.predict(np.array([row]), [kind])
        label = np.zeros(unit.truth[0].shape, np.uint8)
        for c in range(self.n_classes):
            label[unit.pred[kind][c][0]] = c + 1
        return self._picture(row, unit.truth[0], label)

    def _picture(self, row, truth, label):
        return np.asarray(self.ds.image(int(row)).convert("RGB")), truth, label


class _Images(_Source):
    """A 2D dataset: items are images, features the cached encoder output per image."""

    def predict(self, rows: np.ndarray, kinds: list[str]) -> _Unit:
        truth = [self.ds.mask(int(i)) for i in rows]
        return _Unit(truth, *self._decode(rows, truth, kinds, self.ids()[rows]), [None] * len(rows))

    def _decode(self, entry_rows, truth, kinds, ids):
        features, meta = cached_items(self.emb, entry_rows)
        prompts = build_prompts(truth, ids, kinds, seed=self.cfg.seed, n_classes=self.n_classes,
                                jitter=self.cfg.jitter)
        pred = {k: _predict(self.model, features, meta, [t.shape for t in truth], prompts, np.arange(len(truth)), k,
                            self.n_classes) for k in kinds}
        return pred, prompts


class _Slices(_Images):
    """A volumetric dataset through a 2D model: items are volumes; each foreground slice (a row
    of the ``_slices`` entry, :mod:`fmcache.segment.slices`) is prompted from its own mask and
    decoded from its cached features, the predicted slices are restacked into the volume,
    which is scored whole (empty slices are background in both)."""

    items, one_at_a_time = "volumes (2D model, slice by slice)", True

    def __init__(self, emb, view, model, cfg):
        super().__init__(emb, view, model, cfg)
        self.view = view
        self.by_volume = volume_groups(view)
        self.slice_of = view.table["meta/slice"].to_numpy(dtype=np.int64)
        self.slice_ids = emb.samples()["id"].to_numpy(dtype=str)

    def item_rows(self, split: str) -> np.ndarray:
        rows = np.array(sorted(self.by_volume), dtype=np.int64)
        split_of = self.view.source.table["split"].to_numpy()
        return rows if split == "all" else rows[split_of[rows] == SPLIT_NAMES[split]]

    def ids(self) -> np.ndarray:
        return self.view.source.table["id"].to_numpy(dtype=str)

    def groups(self, attribute: str) -> np.ndarray:
        per_slice = self.emb.groups(attribute)
        out = np.full(len(self.view.source.table), -1, np.int8)
        for v, slices in self.by_volume.items():
            out[v] = per_slice[slices[0]]  # every slice carries its volume's group
        return out

    def predict(self, rows: np.ndarray, kinds: list[str]) -> _Unit:
        (v,) = rows
        truth = self.view.label_stack(int(v))  # (slices, H, W) in the view's plane
        slices = self.by_volume[int(v)]
        per_slice: dict[str, list[list[np.ndarray]]] = {k: [[] for _ in range(self.n_classes)] for k in kinds}
        parts = []
        for lo in range(0, len(slices), self.cfg.batch_size):
            batch = slices[lo:lo + self.cfg.batch_size]
            pred, prompts = self._decode(batch, [truth[self.slice_of[i]] for i in batch], kinds, self.slice_ids[batch])
            parts.append(prompts)
            for k in kinds:
                for c in range(self.n_classes):
                    per_slice[k][c].extend(pred[k][c])
        stacked = {k: [[restack(truth.shape, self.slice_of[slices], per_slice[k][c]).astype(bool)]
                       for c in range(self.n_classes)] for k in kinds}
        return _Unit([truth], stacked, _concat_prompts(parts), [self.view.spacing(int(v))])

    def _picture(self, row, truth, label):
        slices = self.by_volume[int(row)]
        z = int(np.argmax((truth > 0).sum(axis=(1, 2))))  # a slice with foreground: one of the view's rows
        image = self.view.image(int(slices[self.slice_of[slices] == z][0]))
        return np.asarray(image.convert("RGB")), truth[z], label[z]


class _Volumes(_Source):
    """A volumetric dataset through a 3D model: items are volumes, decoded from their cached
    blocks, the masks mapped back onto the volume's voxels and scored there."""

    items, one_at_a_time = "volumes (3D model)", True

    def predict(self, rows: np.ndarray, kinds: list[str]) -> _Unit:
        (v,) = rows
        truth = self.ds.mask_volume(int(v))
        features, geometries = cached_volume(self.emb, int(v))
        self._check_grid(int(v), truth, geometries)
        volume = normalised_volume(self.model, self.ds.volume(int(v))) if self.cfg.zoom_in else None
        spatial = [k for k in kinds if k != TEXT_PROMPT]
        prompts = build_prompts([truth.array], [self.ids()[v]], spatial, seed=self.cfg.seed,
                                n_classes=self.n_classes, jitter=self.cfg.jitter, spacings=[truth.spacing])
        pred = {}
        for k in kinds:
            per_class = [TextPrompt(name, not prompts["present"][0, c]) if k == TEXT_PROMPT
                         else prompt_at(prompts, k, 0, c + 1) for c, name in enumerate(self.classes)]
            pred[k] = [[m] for m in decode_blocks(self.model, features, geometries, per_class, truth.shape, volume)]
        return _Unit([truth.array], pred, prompts, [truth.spacing])

    def _check_grid(self, row: int, truth, geometries) -> None:
        """DatasetError when the label volume is not on the grid its blocks were cached from: the
        masks would be mapped onto the wrong voxels (the fingerprint covers the table, not pixels)."""
        from fmcache.datasets.volume_grid import GRID_TOLERANCE_MM

        for g in geometries:
            if g is not None and (tuple(g.original_shape) != truth.shape or
                                  np.abs(np.asarray(g.original_affine) - truth.affine).max() >= GRID_TOLERANCE_MM):
                raise DatasetError(f"{self.ds.name}: the label volume {self.ds.mask_file(row)} of "
                                   f"{self.ids()[row]!r} is not on the voxel grid its blocks were cached from (the "
                                   "file changed since `fmcache embed`): pass --data the copy it was embedded "
                                   "from, or embed again with --overwrite")

    def _picture(self, row, truth, label):
        from fmcache.datasets.volume_grid import Volume

        affine = self.ds.mask_volume(int(row)).affine
        t, p = Volume(truth, affine).slices(), Volume(label, affine).slices()
        z = int(np.argmax((t > 0).sum(axis=(1, 2))))
        image = np.asarray(self.ds.image(int(row))[z])
        return np.repeat(np.round(image * 255).astype(np.uint8)[..., None], 3, axis=-1), t[z], p[z]


def _sweep_into(path, cfg: SegmentConfig, source: _Source, rows: np.ndarray, attributes: list[str], root: str,
                on_batch) -> None:
    classes = source.classes
    ids = source.ids()
    metric_names = _metric_names(cfg.nsd_tolerance)
    scores = {k: {m: [] for m in metric_names} for k in cfg.prompts}
    prompt_parts = []
    masks = MaskWriter(path, cfg.prompts, classes) if cfg.save_masks else None
    done = 0
    try:
        for unit_pos in source.units(rows):
            unit = source.predict(rows[unit_pos], cfg.prompts)
            prompt_parts.append(unit.prompts)
            for kind in cfg.prompts:
                for m, values in score_items(unit.truth, unit.pred[kind], cfg.empty, cfg.nsd_tolerance,
                                        unit.spacings).items():
                    scores[kind][m].append(values)
                if masks is not None:
                    for j, k in enumerate(unit_pos):
                        masks.add(kind, int(k), [p[j] for p in unit.pred[kind]])
            done += len(unit_pos)
            if on_batch:
                on_batch(done, len(rows))
        if masks is not None:
            masks.close(ids[rows], rows)
    except BaseException:
        if masks is not None:
            masks.abort()
        raise
    groups = {a: source.groups(a)[rows] for a in attributes}
    names = {a: source.emb.group_names(a) for a in attributes}
    all_prompts = _concat_prompts(prompt_parts)
    blocks, predictions = [], {"prompts": all_prompts}
    per_item = {}
    for kind in cfg.prompts:
        values = {m: np.concatenate(scores[kind][m]) for m in metric_names}
        # the mean over an item's classes (under empty="skip", over those not left out)
        per_item[kind] = {m: class_mean(v) for m, v in values.items()}
        for a in attributes:
            table = evaluate_dice(per_item[kind]["dsc"], {a: groups[a]}, iou=per_item[kind]["iou"],
                                  nsd=per_item[kind].get("nsd"), n_boot=cfg.n_boot, seed=cfg.seed,
                                  group_names={a: names[a]} if names[a] else None)
            blocks.append(table.assign(prompt=kind, head=kind, label=LABEL))
            predictions[prediction_key(kind, LABEL, a)] = {**values, "row": rows, "id": ids[rows], "group": groups[a]}
    metrics = pd.concat(blocks, ignore_index=True).assign(dataset=cfg.dataset, model=cfg.model)
    if attributes:
        _write_overlays(path, source, rows, per_item, attributes[0], groups[attributes[0]], names[attributes[0]],
                        ids)
    write_run(path, config=_config(cfg, source, attributes, names, rows, root), metrics=metrics,
              sweep=pd.DataFrame(), predictions=predictions)


def class_mean(values: np.ndarray) -> np.ndarray:
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


def score_items(truth: list[np.ndarray], pred: list[list[np.ndarray]], empty: str, nsd_tolerance: float | None,
           spacings: list[tuple[float, ...] | None] | None = None) -> dict[str, np.ndarray]:
    """(items, classes) Dice and IoU (and NSD with a tolerance: in mm where an item has a
    spacing, else in pixels) of one prompt type's masks."""
    n_classes = len(pred)
    out = {m: np.zeros((len(truth), n_classes)) for m in _metric_names(nsd_tolerance)}
    for c in range(1, n_classes + 1):
        binary = [t == c for t in truth]
        out["dsc"][:, c - 1] = dice_per_sample(binary, pred[c - 1], n_classes=1, empty=empty)
        out["iou"][:, c - 1] = iou_per_sample(binary, pred[c - 1], n_classes=1, empty=empty)
        if nsd_tolerance is not None:
            out["nsd"][:, c - 1] = nsd_per_sample(binary, pred[c - 1], tolerance=nsd_tolerance, n_classes=1,
                                                  empty=empty, spacings=spacings)
    return out


def _write_overlays(path, source: _Source, rows: np.ndarray, per_item: dict[str, dict[str, np.ndarray]],
                    attribute: str, groups: np.ndarray, group_names: list[str] | None, ids: np.ndarray) -> None:
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
    parts: dict[str, list] = {"image": [], "truth": [], "pred": [], "size": []}
    for k in pos:
        im, t, p = thumbnail(*source.overlay(int(rows[k]), best))
        parts["image"].append(pad_to(im))
        parts["truth"].append(pad_to(t))
        parts["pred"].append(pad_to(p))
        parts["size"].append(t.shape)
    write_overlays(path, {
        **{k: np.stack(v) for k, v in parts.items()},
        "id": np.asarray(ids[rows[pos]]),
        "group": groups[pos], "dsc": per_item[best]["dsc"][pos], "pick": np.array([p for _, p in chosen]),
        "attribute": np.array(attribute), "prompt": np.array(best), "thumbnail": np.array(THUMBNAIL),
        "group_names": np.array(group_names or [str(g) for g in range(n_groups)]),
        "classes": np.array(source.classes),
    })


def _concat_prompts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch prompt arrays as one: per-item arrays joined, run-wide ones (classes, seed, jitter)
    kept once, as 1-element arrays where they are scalars (a run stores arrays)."""
    first = parts[0]
    n = len(first["ids"])
    return {k: np.concatenate([p[k] for p in parts]) if np.ndim(v) and len(v) == n and k != "classes"
            else np.atleast_1d(v) for k, v in first.items()}


def _config(cfg: SegmentConfig, source: _Source, attributes, names, rows, root: str) -> dict[str, Any]:
    emb = source.emb
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
        "items": source.items,
        "cache": {k: emb.provenance.get(k) for k in ("weights_id", "weights_sha256", "preprocess", "row_fingerprint",
                                                     "created")},
        "versions": {"fmcache": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
