"""Promptable segmentation: encode each image once and decode every prompt type from its
features, against the reference protocol, which runs the image encoder again for every prompt
type. Same images, same SAM ViT-B architecture (random weights: the cost does not depend on
them), same run.

Both sides decode the four prompt types (center, rand, rands, bbox) of every image; fmcache's
side decodes from features rounded to float16 and back, as the cache stores them.

    python benchmarks/seg_prompts.py [--n 2] [--arch vit_b] [--size 512]

Prints ``RESULT seg_prompts ratio=<reference time / fmcache time> target=3.5`` and the decode
time per prompt as a fraction of the encoder's time per image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2, help="images")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--arch", default="vit_b", help="segment_anything registry name: vit_b | vit_l | vit_h")
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


if __name__ == "__main__":
    main()
