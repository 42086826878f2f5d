"""Turning PIL images into the normalised tensors a model expects."""

from __future__ import annotations

from typing import Callable

import torch
from torchvision import transforms as T

from fmcache.embed.spec import Preprocess

_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def build_transform(pre: Preprocess) -> Callable[[object], torch.Tensor]:
    """Resize shortest side, centre-crop, scale to [0, 1], normalise: (3, size, size) float32."""
    return T.Compose(
        [
            T.Resize(pre.resize, interpolation=_INTERP[pre.interpolation], antialias=True),
            T.CenterCrop(pre.size),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def build_augmentation(pre: Preprocess) -> Callable[[object], torch.Tensor]:
    """The FairMedFM benchmark's training augmentation at the model's own size and statistics:
    resize, horizontal flip, rotation within 15 degrees, random crop."""
    return T.Compose(
        [
            T.Resize(pre.resize, interpolation=_INTERP[pre.interpolation], antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomRotation((-15, 15)),
            T.RandomCrop(pre.size),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )
