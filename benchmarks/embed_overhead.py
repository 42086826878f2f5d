"""End-to-end `fmcache embed` throughput against the bare model forward, same images, same run.

The peer is the model's forward pass alone over images that were decoded and preprocessed
beforehand (untimed): the least any pipeline must pay. fmcache's run includes rendering or
decoding, preprocessing, the DataLoader, float16 conversion and the Zarr writes.

    python benchmarks/embed_overhead.py [--n 512] [--batch-size 32] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from fmcache.datasets import load_dataset
from fmcache.embed.encode import embed
from fmcache.embed.preprocess import build_transform
from fmcache.embed.registry import load_model


def bare_forward(enc, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            enc.encode_image(x)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: fmcache's)")
    ap.add_argument("--repeats", type=int, default=2, help="best of R runs for each side")
    args = ap.parse_args()

    ds = load_dataset("synthetic", options={"size": str(args.n), "image_size": "256"})
    enc = load_model(args.model)
    tf = build_transform(enc.spec.preprocess)
    images = torch.stack([tf(ds.image(i)) for i in range(args.n)])
    batches = list(images.split(args.batch_size))
    bare_forward(enc, batches[:2])  # warm-up: first calls allocate and pick kernels

    bare = min(bare_forward(enc, batches) for _ in range(args.repeats))
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            embed(ds, args.model, root=root, encoder=enc, batch_size=args.batch_size, num_workers=args.num_workers, progress=False)
            runs.append(time.perf_counter() - start)
    pipeline = min(runs)
    ratio = pipeline / bare
    print(
        f"RESULT embed_overhead ratio={ratio:.3f} target=1.15 model={args.model} n={args.n} "
        f"batch={args.batch_size} pipeline_img_s={args.n / pipeline:.1f} bare_img_s={args.n / bare:.1f} "
        f"threads={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
