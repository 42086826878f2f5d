"""A tiny deterministic image encoder for tests that run `embed` many times (fault injection,
concurrency): real torch, milliseconds per batch, and two weight versions that give
different features, as two checkpoints of one model would."""

from __future__ import annotations

import torch

from fmcache.datasets import load_dataset
from fmcache.embed.spec import Encoder, ModelSpec, Preprocess

MODEL = "tinyconv"
SIZE = 32
OPTIONS = {"size": "16", "image_size": str(SIZE)}
SPEC = ModelSpec(key=MODEL, title="tiny conv net", family="test", weights="test", dims={"image": 8},
                 preprocess=Preprocess(size=SIZE, resize=SIZE, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3))


def encoder(version: int = 1) -> Encoder:
    torch.manual_seed(version)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(16, 8)).eval()
    return Encoder(spec=SPEC, module=net, encode_image=lambda x: {"image": net(x)}, dims={"image": 8},
                   weights_id=f"tinyconv-v{version}", weights_sha256=f"{version:064d}")


def dataset():
    return load_dataset("synthetic", options=OPTIONS)


def embed_kwargs(**over):
    """The settings every fault test embeds with: 4 chunks of 4 rows, batches of 2, no workers."""
    return {"batch_size": 2, "chunk_rows": 4, "num_workers": 0, "progress": False, "device": "cpu", **over}
