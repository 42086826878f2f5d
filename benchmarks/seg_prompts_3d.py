"""Promptable 3D segmentation: encode each volume's block once and decode every prompt type
SAM-Med3D takes from its features, against re-encoding the block for every prompt type (what a
pipeline without a feature cache does). Same volumes, same SAM-Med3D ViT-B architecture at its
release size (128³ input, 12 blocks of width 768; random weights: the cost does not depend on
them), same run, on this machine's CPU.

Both sides read the volume, resample it to 1.5 mm and cut the 128³ block around the object, and
decode the four point prompt types (center, box_center, rand, rands); fmcache's side decodes
from features rounded to float16 and back, as the cache stores them, and maps every mask back
onto the volume's voxels, as the reference side does.

    python benchmarks/seg_prompts_3d.py [--n 1] [--threads 0]

Prints ``RESULT seg_prompts_3d ratio=<reference time / fmcache time> target=3.0`` and the
decode time per prompt as a fraction of the encoder's time per block.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fmcache.datasets.volume_grid import Volume
from fmcache.embed.sam3d import ARCHS, Sam3D
from fmcache.segment.models import VOLUME_MODELS
from fmcache.segment.prompts import make_prompt
from fmcache.segment.volumetric import VolumeModel, decode_blocks, encode_blocks, prepare_blocks

PROMPT_TYPES = VOLUME_MODELS["sam_med3d"].prompts


def volume_and_mask(seed: int, shape=(192, 192, 64), spacing=(0.9, 0.9, 2.5)) -> tuple[Volume, np.ndarray]:
    """A CT-like volume (HU noise) with one bright ellipsoid (40 x 30 x 25 mm) as its mask."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), axis=-1)
    centre = np.array(shape) * np.array(spacing) * rng.uniform(0.4, 0.6, 3)
    mask = (((grid - centre) / np.array([20.0, 15.0, 12.5])) ** 2).sum(-1) <= 1
    image = rng.normal(-50, 30, shape) + 120 * mask
    return Volume(image.astype(np.float32), np.diag([*spacing, 1.0])), mask.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1, help="volumes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VolumeModel(VOLUME_MODELS["sam_med3d"], Sam3D(**ARCHS["vit_b_ori"]).eval(), "random", None)
    cases = [volume_and_mask(i) for i in range(args.n)]
    prompts = [{k: make_prompt(m, k, seed=0, item_id=i, spacing=v.spacing) for k in PROMPT_TYPES}
               for i, (v, m) in enumerate(cases)]

    # the warm-up pass is the first volume's encoding (torch's first call sets up its kernels)
    encode_blocks(model, prepare_blocks(model, *cases[0], 1)[0])

    start = time.perf_counter()
    encode_time = decode_time = 0.0
    for (volume, mask), ps in zip(cases, prompts):
        blocks, geometries = prepare_blocks(model, volume, mask, 1)
        t = time.perf_counter()
        features = encode_blocks(model, blocks).astype(np.float16).astype(np.float32)
        encode_time += time.perf_counter() - t
        t = time.perf_counter()
        for kind in PROMPT_TYPES:
            decode_blocks(model, features, geometries, [ps[kind]], volume.shape)
        decode_time += time.perf_counter() - t
    ours = time.perf_counter() - start

    start = time.perf_counter()
    for (volume, mask), ps in zip(cases, prompts):
        for kind in PROMPT_TYPES:
            blocks, geometries = prepare_blocks(model, volume, mask, 1)
            decode_blocks(model, encode_blocks(model, blocks), geometries, [ps[kind]], volume.shape)
    reference = time.perf_counter() - start

    per_prompt = decode_time / (len(cases) * len(PROMPT_TYPES))
    print(f"{len(cases)} volume(s), {len(PROMPT_TYPES)} prompt types ({', '.join(PROMPT_TYPES)}), "
          f"SAM-Med3D ViT-B at 128³ on {torch.get_num_threads()} CPU thread(s)")
    print(f"encoder: {encode_time / len(cases):.2f} s per block; decode + map back: {per_prompt:.2f} s per prompt "
          f"({per_prompt / (encode_time / len(cases)):.1%} of an encoding)")
    print(f"fmcache (encode once): {ours:.1f} s; re-encoding per prompt type: {reference:.1f} s")
    print(f"RESULT seg_prompts_3d ratio={reference / ours:.2f} target=3.0")


if __name__ == "__main__":
    main()
