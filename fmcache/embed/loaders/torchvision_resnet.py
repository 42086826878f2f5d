"""torchvision ResNets from training checkpoints: C2L, MoCo-CXR and LVM-Med's ResNet-50.

The architecture is torchvision's ``config["arch"]``, or the ``arch`` the checkpoint names
(MoCo's training script stores it, and MoCo-CXR released ResNet-18 and ResNet-50 files). The
image feature is the globally pooled last stage. Where the backbone keeps an ``fc`` layer
after the entry's ``drop`` list (C2L's 512 -> 128 contrastive projection), its output is the
``image_proj`` feature. C2L's own ResNet pools with ``AvgPool2d(7)``, which equals
torchvision's adaptive pooling at its 224 input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from fmcache.embed.loaders.local_checkpoint import backbone_state_dict, load_strict, read_checkpoint
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import local_path, sha256_file
from fmcache.errors import ModelError

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    path = local_path(weights or spec.weights, spec.key)
    ckpt = read_checkpoint(path, spec, trust_code=trust_code)
    sd = backbone_state_dict(ckpt, spec, path)
    arch = _arch(ckpt, spec, path)
    model, width = _build(arch, sd)
    load_strict(model, sd, spec.key, path)
    head = model.fc if isinstance(model.fc, torch.nn.Linear) else None
    model.fc = torch.nn.Identity()  # the trunk then returns the pooled features
    model = model.to(device).eval()
    dims = {"image": width}
    if head is not None:
        dims["image_proj"] = int(head.out_features)
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model, head),
        dims=dims,
        weights_id=path.name,
        weights_sha256=sha256_file(path),
    )


def _arch(ckpt: Any, spec: ModelSpec, path: Path) -> str:
    named = ckpt.get("arch") if isinstance(ckpt, Mapping) else None
    arch = named if isinstance(named, str) else spec.config["arch"]
    if arch not in ARCHS:
        raise ModelError(
            f"weights file {path} for {spec.key!r} holds a {arch!r} model; only torchvision ResNets "
            f"({', '.join(ARCHS)}) are supported"
        )
    return arch


def _build(arch: str, sd: Mapping[str, torch.Tensor]) -> tuple[torch.nn.Module, int]:
    """The ResNet with an ``fc`` as wide as the checkpoint's, or none; and its pooled width."""
    import torchvision

    fc = sd.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 1000
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    width = int(model.fc.in_features)
    if fc is None:
        model.fc = torch.nn.Identity()
    return model, width


def _image_encoder(model: torch.nn.Module, head: torch.nn.Module | None) -> Callable:
    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = model(x)
        out = {"image": pooled}
        if head is not None:
            out["image_proj"] = head(pooled)
        return out

    return encode_image
