"""The encoder of an MAE pretraining checkpoint (Medical MAE) as a timm ``VisionTransformer``.

MAE's encoder uses timm's key names, so after the entry drops the decoder the state dict
loads strictly into a token-pooled timm ViT without a head. The geometry is read off the
tensors (width, depth, patch and input size, MLP ratio); the head count is not stored, and
every MAE ViT (S/B/L) uses 64 channels per head. The feature is the CLS token after the
final ``norm``, as in the repository's linear probe (its fine-tuning default, global pooling
through a new ``fc_norm``, has no pretrained weights).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from fmcache.embed.loaders.local_checkpoint import backbone_state_dict, block_count, load_strict, read_checkpoint
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import local_path, sha256_file

HEAD_WIDTH = 64
# ViT-B/16 at 224: what the entry's weights are, and what a foreign file is checked against
VIT_B16 = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0,
           "qkv_bias": True}


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    from timm.models.vision_transformer import VisionTransformer

    path = local_path(weights or spec.weights, spec.key)
    sd = backbone_state_dict(read_checkpoint(path, spec, trust_code=trust_code), spec, path)
    model = VisionTransformer(**geometry(sd), num_classes=0, global_pool="token")
    load_strict(model, sd, spec.key, path)
    model = model.to(device).eval()
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model),
        dims={"image": int(model.num_features)},
        weights_id=path.name,
        weights_sha256=sha256_file(path),
    )


def geometry(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """timm ``VisionTransformer`` arguments that fit a ViT state dict; ViT-B/16 when keys lack."""
    try:
        width = int(sd["cls_token"].shape[-1])
        patch = int(sd["patch_embed.proj.weight"].shape[-1])
        grid = round((sd["pos_embed"].shape[1] - 1) ** 0.5)
        return {
            "img_size": patch * grid,
            "patch_size": patch,
            "embed_dim": width,
            "depth": block_count(sd, "blocks."),
            "num_heads": max(1, width // HEAD_WIDTH),
            "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / width,
            "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        }
    except (KeyError, IndexError):
        return dict(VIT_B16)  # the strict load then names the keys that are wrong


def _image_encoder(model: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": model.forward_head(model.forward_features(x), pre_logits=True)}

    return encode_image
