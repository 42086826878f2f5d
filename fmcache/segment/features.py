"""SAM-family image features into the cache: every image through the image encoder once.

An entry holds, per item, the encoder's output ``features`` (C x g x g float16: 256 x 64 x 64
for a 1024 input), the mean over the cells covering the image (``pooled``, C, for the
representation analyses) and the item's ``sizes`` (int32: original H, W, then the resized
h, w before padding), which decoding needs to map prompts in and masks out. A feature map is
one chunk and a write unit of ``chunk_rows`` items one shard object, so a 10k-image dataset
is a few hundred objects, each item still readable alone. The entry uses the classification
entries' machinery: identity, lock, resume where it stopped, checksums, ``cache verify``.

A 3D model's entry (:mod:`fmcache.segment.volumetric`) holds per volume the features of its
K input blocks (K x C x g³: one block per class for SAM-Med3D, one for SegVol; an absent
class's block is zeros), ``crops`` (K int32: which blocks exist), ``geometry`` (K x 47 float64:
each block's :class:`~fmcache.segment.volume_input.VolumeGeometry`, spacing and orientation
included) and ``pooled``; so decoding and mapping back onto the voxels never re-encode.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from fmcache.cache.entry import is_intact, recorded_batch_size
from fmcache.cache.store import resolve_root
from fmcache.datasets.image_headers import check_image_headers
from fmcache.datasets.samples import Dataset
from fmcache.embed import distributed
from fmcache.embed.encode import (
    EmbedSummary,
    check_images_exist,
    resolve_device,
)
from fmcache.errors import DatasetError, FmcacheError
from fmcache.segment.models import VOLUME_MODELS
from fmcache.segment.sam import ImageMeta, SamModel, encode, load_sam
from fmcache.segment.volumetric import VolumeModel, load_volume_model

FEATURES, POOLED, SIZES = "features", "pooled", "sizes"
CROPS, GEOMETRY = "crops", "geometry"  # 3D entries: which blocks a volume has, and where they lie
DEFAULT_BATCH_SIZE = 4
DEFAULT_CHUNK_ROWS = 16  # items per shard: ~32 MB of float16 256 x 64 x 64 maps
DEFAULT_VOLUME_CHUNK_ROWS = 4  # volumes per shard: up to 15 blocks of 384 x 8³ each


def embed_features(
    dataset: Dataset,
    model: str,
    *,
    root: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    overwrite: bool = False,
    progress: bool = True,
    sam: SamModel | None = None,
    on_chunk: Callable[[int], None] | None = None,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
    on_repair: Callable[[str], None] | None = None,
) -> EmbedSummary:
    """Encode every image (volume) of ``dataset`` with a segmentation ``model`` into the cache; resume if partial.

    Parameters
    ----------
    dataset
        A 2D dataset from :func:`fmcache.datasets.load_dataset` (for a 2D model; a volumetric
        one through :func:`fmcache.segment.slices.slice_dataset`), or a volumetric
        segmentation dataset for a 3D model.
    model
        Key of :data:`fmcache.segment.models.SAM_MODELS` or of ``VOLUME_MODELS``.
    weights
        Local checkpoint file replacing the entry's file.
    batch_size
        Images per encoder call; part of the entry's identity as for classification entries
        (None: the resumed entry's, else 4). A 3D model encodes one block at a time.
    chunk_rows
        Items per shard: the unit that is written, marked done and resumed.
    sam
        An already loaded model (tests, benchmarks); ``model`` still names the entry.
    overwrite, wait, on_wait, on_repair, on_chunk, progress
        As for :func:`fmcache.embed.encode.embed`; under torchrun, likewise each process encodes a
        share of the chunks (:mod:`fmcache.embed.distributed`).
    """
    volumetric = model in VOLUME_MODELS or isinstance(sam, VolumeModel)
    _check_dimensions(dataset, model, volumetric)
    unit = "volumes" if volumetric else "images"
    with distributed.job() as job:
        device = resolve_device(job.device(device))
        job.on_lead(lambda: check_images_exist(dataset))
        root_s = resolve_root(root)
        if volumetric:
            sam = sam or load_volume_model(model, weights=weights, device=device)
            batch_size, chunk_rows = 1, min(chunk_rows, DEFAULT_VOLUME_CHUNK_ROWS)
            provenance = volume_entry_provenance(sam, model, dataset)
            encode_rows = _encode_volumes
        else:
            sam = sam or load_sam(model, weights=weights, device=device)
            if batch_size is None:
                batch_size = job.on_lead(lambda: recorded_batch_size(root_s, dataset.name, model)) or DEFAULT_BATCH_SIZE
            provenance = entry_provenance(sam, model, dataset, batch_size)
            encode_rows = _encode_rows
        kinds = dict(provenance["dims"])
        if not overwrite and job.on_lead(lambda: is_intact(root_s, dataset.name, dataset.fingerprint, model,
                                                           provenance)):
            return EmbedSummary(dataset.name, model, root_s, len(dataset.table), 0, 0.0, device, kinds, unit)
        job.on_lead(lambda: check_image_headers(dataset))
        bar = distributed.Progress(progress, f"{dataset.name}/{model}", "vol" if volumetric else "img")
        with distributed.writing(job, root_s, dataset.name, dataset.table, dataset.group_attrs(), model, provenance,
                                 progress=bar, chunk_rows=chunk_rows, overwrite=overwrite, wait=wait, on_wait=on_wait,
                                 on_repair=on_repair) as share:
            if share.complete:
                return EmbedSummary(dataset.name, model, root_s, share.writer.n, 0, 0.0, device, kinds, unit)
            share.start()
            for chunk in share.chunks:
                a, b = share.writer.rows(chunk)
                # batches never straddle chunks: a resumed entry equals an uninterrupted one
                parts = [encode_rows(dataset, sam, range(lo, min(lo + batch_size, b)))
                         for lo in range(a, b, batch_size)]
                share.writer.write_chunk(chunk, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
                if on_chunk is not None:
                    on_chunk(chunk)
                share.advance(b - a)
            share.finish(device=device)
    return EmbedSummary(dataset.name, model, root_s, share.writer.n, share.encoded, share.seconds, device, kinds, unit)


def entry_provenance(sam: SamModel, model: str, dataset: Dataset, batch_size: int) -> dict[str, Any]:
    """What a SAM entry records, its identity included: weights, input rule, the per-item arrays."""
    channels = int(sam.sam.prompt_encoder.embed_dim)
    grid = [int(g) for g in sam.sam.prompt_encoder.image_embedding_size]
    return {
        "model": model,
        "model_title": sam.spec.title,
        "family": "sam",
        "weights_id": sam.weights_id,
        "weights_sha256": sam.weights_sha256,
        "preprocess": sam.input.to_attrs(),
        "dims": {FEATURES: [channels, *grid], POOLED: channels, SIZES: 4},
        "kind_dtypes": {SIZES: "int32"},
        "row_fingerprint": dataset.fingerprint,
        "volume": None,
        "compute_dtype": "float32",
        "batch_size": int(batch_size),
        "task": "segmentation",
    }


def _check_dimensions(dataset: Dataset, model: str, volumetric: bool) -> None:
    """A 3D model reads volumes with their grid; a 2D model images (a volume's slices through
    :func:`fmcache.segment.slices.slice_dataset`)."""
    if volumetric and not dataset.spec.volumetric_segmentation:
        raise FmcacheError(f"{model} is a 3D segmentation model; {dataset.name} is not a volumetric segmentation "
                           f"dataset (kits23, candi, ircadb, spider are): use a 2D model such as sam or medsam")
    if not volumetric and dataset.spec.dim == "3d":
        raise FmcacheError(f"{dataset.name} holds volumes: a 2D model reads their slices "
                           f"(fmcache.segment.slices.slice_dataset; `fmcache embed` does this itself)")


def _reading(dataset: Dataset, row: int, read):
    try:
        return read(row)
    except DatasetError as e:
        raise DatasetError(f"{e} (row {dataset.table['id'].iloc[row]!r}); the chunks encoded so far are kept "
                           "and a rerun resumes once it is fixed") from None


def _check_finite(model: str, features: np.ndarray, rows: range) -> None:
    if not np.isfinite(features).all() or np.abs(features).max() > 65504:
        raise FmcacheError(f"{model} produced non-finite or float16-overflowing features for rows "
                           f"{rows.start}-{rows.stop - 1}; check those images and the model's weights")


def _encode_rows(dataset: Dataset, sam: SamModel, rows: range) -> dict[str, np.ndarray]:
    images = [np.asarray(_reading(dataset, row, dataset.image).convert("RGB")) for row in rows]
    features, meta = encode(sam, images, batch_size=len(images))
    _check_finite(sam.key, features, rows)
    return {FEATURES: features, POOLED: meta.pooled, SIZES: meta.sizes()}


def _encode_volumes(dataset: Dataset, model, rows: range) -> dict[str, np.ndarray]:
    """Each volume's blocks encoded (see :mod:`fmcache.segment.volumetric`), with their geometry."""
    from fmcache.segment.volume_input import VECTOR_LENGTH
    from fmcache.segment.volumetric import encode_blocks, prepare_blocks

    n_classes = len(dataset.spec.mask_classes)
    parts: dict[str, list[np.ndarray]] = {FEATURES: [], POOLED: [], CROPS: [], GEOMETRY: []}
    for row in rows:
        volume = _reading(dataset, row, dataset.volume)
        labels = _reading(dataset, row, dataset.mask_volume)
        if not volume.same_grid(labels):
            raise DatasetError(f"{dataset.name}: the label volume {dataset.mask_file(row)} is not on its image's "
                               "voxel grid (`fmcache datasets check` lists every such case)")
        blocks, geometries = prepare_blocks(model, volume, labels.array, n_classes)
        present = np.array([g is not None for g in geometries])
        features = np.zeros((len(blocks), *volume_feature_shape(model)), np.float32)
        if present.any():  # a volume without any class has no block to encode: zeros, never prompted
            features[present] = encode_blocks(model, blocks[present])
        _check_finite(model.key, features, range(row, row + 1))
        parts[FEATURES].append(features)
        parts[POOLED].append(features[present].mean(axis=(0, 2, 3, 4)) if present.any()
                             else np.zeros(features.shape[1], np.float32))
        parts[CROPS].append(present.astype(np.int32))
        parts[GEOMETRY].append(np.stack([g.to_vector() if g is not None else np.zeros(VECTOR_LENGTH)
                                         for g in geometries]))
    return {k: np.stack(v) for k, v in parts.items()}


def volume_feature_shape(model) -> tuple[int, ...]:
    """(C, g, g, g): a 3D model's encoder output per block."""
    return tuple(int(n) for n in model.net.feature_shape)


def volume_entry_provenance(model, key: str, dataset: Dataset) -> dict[str, Any]:
    """What a 3D entry records: per volume, K blocks' features (K the classes for a per-class
    rule, else 1), which blocks exist (``crops``) and where each lies (``geometry``)."""
    shape = list(volume_feature_shape(model))
    k = len(dataset.spec.mask_classes) if model.spec.input.per_class else 1
    from fmcache.segment.volume_input import VECTOR_LENGTH

    return {
        "model": key,
        "model_title": model.spec.title,
        "family": "sam3d",
        "weights_id": model.weights_id,
        "weights_sha256": model.weights_sha256,
        "preprocess": model.spec.input.to_attrs(),
        "dims": {FEATURES: [k, *shape], POOLED: shape[0], CROPS: k, GEOMETRY: [k, VECTOR_LENGTH]},
        "kind_dtypes": {CROPS: "int32", GEOMETRY: "float64"},
        "row_fingerprint": dataset.fingerprint,
        "volume": None,
        "compute_dtype": "float32",
        "batch_size": 1,
        "task": "segmentation",
    }


def cached_items(emb, rows: np.ndarray | list[int]) -> tuple[np.ndarray, ImageMeta]:
    """Features (float32) and :class:`ImageMeta` of cached items, ready for :func:`fmcache.segment.sam.decode`.

    Parameters
    ----------
    emb
        The entry, from ``fmcache.open_cache().embeddings(dataset, model)``.
    rows
        Positions of the items in the dataset's samples table.
    """
    got = emb.items(rows, (FEATURES, SIZES, POOLED))
    return got[FEATURES], ImageMeta.from_sizes(got[SIZES], got[POOLED])


def cached_volume(emb, row: int) -> tuple[np.ndarray, list]:
    """A cached volume's block features (K, C, g, g, g) float32 and geometries (None: no block)."""
    from fmcache.segment.volume_input import VolumeGeometry

    got = emb.items([int(row)], (FEATURES, CROPS, GEOMETRY))
    geometries = [VolumeGeometry.from_vector(v) if present else None
                  for v, present in zip(got[GEOMETRY][0], got[CROPS][0])]
    return np.asarray(got[FEATURES][0], np.float32), geometries
