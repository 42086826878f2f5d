"""SAM-family image features into the cache: every image through the image encoder once.

An entry holds, per item, the encoder's output ``features`` (C x g x g float16: 256 x 64 x 64
for a 1024 input), the mean over the cells covering the image (``pooled``, C, for the
representation analyses) and the item's ``sizes`` (int32: original H, W, then the resized
h, w before padding), which decoding needs to map prompts in and masks out. A feature map is
one chunk and a write unit of ``chunk_rows`` items one shard object, so a 10k-image dataset
is a few hundred objects, each item still readable alone. The entry uses the classification
entries' machinery: identity, lock, resume where it stopped, checksums, ``cache verify``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

from fmcache.cache.entry import is_intact, recorded_batch_size, writing
from fmcache.cache.store import resolve_root
from fmcache.datasets.image_headers import check_image_headers
from fmcache.datasets.samples import Dataset
from fmcache.embed.encode import (
    EmbedSummary,
    check_images_exist,
    progress_bar,
    resolve_device,
)
from fmcache.errors import DatasetError, FmcacheError
from fmcache.segment.sam import ImageMeta, SamModel, encode, load_sam

FEATURES, POOLED, SIZES = "features", "pooled", "sizes"
DEFAULT_BATCH_SIZE = 4
DEFAULT_CHUNK_ROWS = 16  # items per shard: ~32 MB of float16 256 x 64 x 64 maps


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
    """Encode every image of ``dataset`` with a SAM-family ``model`` into the cache; resume if partial.

    Parameters
    ----------
    dataset
        A 2D dataset from :func:`fmcache.datasets.load_dataset`.
    model
        Key of :data:`fmcache.segment.models.SAM_MODELS`.
    weights
        Local checkpoint file replacing the entry's file.
    batch_size
        Images per encoder call; part of the entry's identity as for classification entries
        (None: the resumed entry's, else 4).
    chunk_rows
        Items per shard: the unit that is written, marked done and resumed.
    sam
        An already loaded model (tests, benchmarks); ``model`` still names the entry.
    overwrite, wait, on_wait, on_repair, on_chunk, progress
        As for :func:`fmcache.embed.encode.embed`.
    """
    if dataset.spec.volumetric_segmentation:
        from fmcache.datasets.registry import refuse_volumetric_segmentation

        refuse_volumetric_segmentation(dataset.spec.key, model)
    if dataset.spec.dim == "3d":
        raise FmcacheError(f"{dataset.name} holds volumes: SAM-family features are cached for 2D datasets only")
    device = resolve_device(device)
    check_images_exist(dataset)
    root_s = resolve_root(root)
    sam = sam or load_sam(model, weights=weights, device=device)
    if batch_size is None:
        batch_size = recorded_batch_size(root_s, dataset.name, model) or DEFAULT_BATCH_SIZE
    provenance = entry_provenance(sam, model, dataset, batch_size)
    kinds = dict(provenance["dims"])
    if not overwrite and is_intact(root_s, dataset.name, dataset.fingerprint, model, provenance):
        return EmbedSummary(dataset.name, model, root_s, len(dataset.table), 0, 0.0, device, kinds)
    check_image_headers(dataset)
    with writing(root_s, dataset.name, dataset.table, dataset.group_attrs(), model, provenance, chunk_rows=chunk_rows,
                 overwrite=overwrite, wait=wait, on_wait=on_wait, on_repair=on_repair) as writer:
        if writer.complete:
            return EmbedSummary(dataset.name, model, root_s, writer.n, 0, 0.0, device, kinds)
        pending = writer.pending_chunks()
        total = sum(b - a for a, b in map(writer.rows, pending))
        start = time.perf_counter()
        with progress_bar(progress, total, f"{dataset.name}/{model}") as prog:
            task = prog.add_task("embed", total=total) if prog else None
            for chunk in pending:
                a, b = writer.rows(chunk)
                # batches never straddle chunks: a resumed entry equals an uninterrupted one
                parts = [_encode_rows(dataset, sam, range(lo, min(lo + batch_size, b))) for lo in range(a, b, batch_size)]
                features = np.concatenate([f for f, _ in parts])
                meta = [m for _, m in parts]
                writer.write_chunk(chunk, {FEATURES: features, POOLED: np.concatenate([m.pooled for m in meta]),
                                           SIZES: np.concatenate([m.sizes() for m in meta])})
                if on_chunk is not None:
                    on_chunk(chunk)
                if prog:
                    prog.advance(task, b - a)
        seconds = time.perf_counter() - start
        writer.finish(last_run={"encoded": total, "seconds": round(seconds, 3), "device": device})
    return EmbedSummary(dataset.name, model, root_s, writer.n, total, seconds, device, kinds)


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


def _encode_rows(dataset: Dataset, sam: SamModel, rows: range) -> tuple[np.ndarray, ImageMeta]:
    images = []
    for row in rows:
        try:
            images.append(np.asarray(dataset.image(row).convert("RGB")))
        except DatasetError as e:
            raise DatasetError(f"{e} (row {dataset.table['id'].iloc[row]!r}); the chunks encoded so far are kept "
                               "and a rerun resumes once it is fixed") from None
    features, meta = encode(sam, images, batch_size=len(images))
    if not np.isfinite(features).all() or np.abs(features).max() > 65504:
        raise FmcacheError(f"{sam.key} produced non-finite or float16-overflowing features for rows "
                           f"{rows.start}-{rows.stop - 1}; check those images and the model's weights")
    return features, meta


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
