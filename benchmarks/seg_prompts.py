"""Promptable segmentation: encode each image once and decode every prompt type from its
features, against the reference protocol, which runs the image encoder again for every prompt
type. Same images, same SAM ViT-B architecture (random weights: the cost does not depend on
them), same run.

Both sides decode the four prompt types (center, rand, rands, bbox) of every image; fmcache's
side decodes from features rounded to float16 and back, as the cache stores them.

    python benchmarks/seg_prompts.py [--n 2] [--arch vit_b] [--size 512]

Prints ``RESULT seg_prompts ratio=<reference time / fmcache time> target=3.5`` and the decode
time per prompt as a fraction of the encoder's time per image; then the sharded store's bytes
per item and read throughput (items/s, one item at a time in random order, and all at once),
for ``--store-items`` items tiled from the encoded ones with noise (so they do not compress
better than real ones would), written through the cache's own writer.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fmcache
from fmcache.cache.store import open_root
from fmcache.cache.writer import open_entry, write_samples
from fmcache.datasets import load_dataset
from fmcache.segment.features import FEATURES, POOLED, SIZES, entry_provenance
from fmcache.segment.models import get_sam_model
from fmcache.segment.prompts import make_prompt
from fmcache.segment.sam import SamModel, decode, encode

PROMPT_TYPES = ("center", "rand", "rands", "bbox")


def images_and_masks(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grey noise with one bright ellipse per image, the ellipse as its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        (cy, cx), (ry, rx) = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.08, 0.2, 2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        grey = rng.integers(0, 80, (size, size)) + 150 * mask
        images.append(np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
        masks.append(mask)
    return images, masks


def decode_all(model: SamModel, features, meta, prompts: dict[str, list]) -> float:
    start = time.perf_counter()
    for kind, items in prompts.items():
        if kind == "bbox":
            decode(model, features, meta, boxes=np.stack([p.box for p in items]))
        else:
            decode(model, features, meta, points=np.stack([p.points for p in items]),
                   point_labels=np.stack([p.point_labels for p in items]))
    return time.perf_counter() - start


def store_figures(model: SamModel, features: np.ndarray, meta, n_items: int, chunk_rows: int) -> tuple[float, float, float]:
    """(bytes per item, items/s one at a time at random, items/s all at once) of a SAM entry."""
    ds = load_dataset("synthetic", options={"size": str(n_items), "image_size": "32"})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        group = write_samples(open_root(root, mode="a"), ds.name, ds.table, ds.group_attrs())
        writer = open_entry(group, "sam", entry_provenance(model, "sam", ds, 1), chunk_rows=chunk_rows)
        for chunk in writer.pending_chunks():
            a, b = writer.rows(chunk)
            take = np.arange(a, b) % len(features)
            noisy = features[take] + rng.normal(0, 0.01 * features.std(), features[take].shape).astype(np.float32)
            writer.write_chunk(chunk, {FEATURES: noisy, POOLED: meta.pooled[take], SIZES: meta.sizes()[take]})
        writer.finish()
        stored = sum(p.stat().st_size for p in (Path(root) / ds.name / "sam" / FEATURES).rglob("*") if p.is_file())
        emb = fmcache.open_cache(root).embeddings(ds.name, "sam")
        order = rng.permutation(n_items)
        start = time.perf_counter()
        for i in order:
            emb.item_rows(FEATURES, [int(i)])
        one_by_one = n_items / (time.perf_counter() - start)
        start = time.perf_counter()
        emb.item_rows(FEATURES, np.arange(n_items))
        at_once = n_items / (time.perf_counter() - start)
    return stored / n_items, one_by_one, at_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2, help="images")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--arch", default="vit_b", help="segment_anything registry name: vit_b | vit_l | vit_h")
    ap.add_argument("--store-items", type=int, default=64, help="items written to measure the store")
    ap.add_argument("--chunk-rows", type=int, default=16, help="items per shard")
    args = ap.parse_args()

    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    model = SamModel(spec=get_sam_model("sam"), sam=sam_model_registry[args.arch]().eval(), weights_id="random",
                     weights_sha256=None)
    images, masks = images_and_masks(args.n, args.size)
    prompts = {k: [make_prompt(m, k, seed=0, item_id=i) for i, m in enumerate(masks)] for k in PROMPT_TYPES}

    with torch.inference_mode():
        # fmcache: one encode, the features through float16 as the cache keeps them, four decodes
        start = time.perf_counter()
        features, meta = encode(model, images, batch_size=1)
        encoded = time.perf_counter() - start
        cached = features.astype(np.float16)
        decoded = decode_all(model, cached, meta, prompts)
        ours = encoded + decoded
        # the reference protocol: the encoder runs again for each prompt type
        start = time.perf_counter()
        for kind in PROMPT_TYPES:
            again, meta_again = encode(model, images, batch_size=1)
            decode_all(model, again, meta_again, {kind: prompts[kind]})
        reference = time.perf_counter() - start

    per_prompt = decoded / (len(PROMPT_TYPES) * args.n)
    per_image = encoded / args.n
    print(f"{args.arch} on {args.n} images of {args.size} px (CPU threads {torch.get_num_threads()}): "
          f"encoder {per_image:.2f} s/image, decode {per_prompt * 1000:.0f} ms/prompt "
          f"({100 * per_prompt / per_image:.1f}% of an encode)")
    print(f"RESULT seg_prompts ratio={reference / ours:.2f} target=3.5 fmcache_s={ours:.1f} reference_s={reference:.1f} "
          f"decode_fraction={per_prompt / per_image:.3f}")
    per_item, one_by_one, at_once = store_figures(model, features, meta, args.store_items, args.chunk_rows)
    raw = features[0].size * 2
    print(f"store: {per_item / 1e6:.2f} MB per item on disk ({per_item / raw:.2f} of its float16 bytes), "
          f"{one_by_one:.0f} items/s read one at a time at random, {at_once:.0f} items/s read all at once")
    print(f"RESULT seg_store bytes_per_item={per_item:.0f} random_items_per_s={one_by_one:.1f} "
          f"bulk_items_per_s={at_once:.1f}")


if __name__ == "__main__":
    main()
