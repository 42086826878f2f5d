"""A SAM-style ViT image encoder without a mask decoder (LVM-Med's ViT-B), from a flat state dict.

Hosted by segment-anything's ``ImageEncoderViT`` with ``use_abs_pos=False``: the release has
no absolute position embedding, only relative ones, which SAM interpolates to the input
size, so the encoder runs at 224 although it was built for 1024. The file's neck is loaded
(so the load stays strict) but skipped: the feature is the mean of the last block's tokens,
768 wide, as the benchmark's reference code takes it. The geometry is read off the tensors:
width, depth, patch size, head width (from the relative-position tables), the windowed
blocks (their tables are shorter than the global blocks') and the window size.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

import torch

from fmcache.embed.loaders.local_checkpoint import backbone_state_dict, block_count, load_strict, read_checkpoint
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import local_path, sha256_file
from fmcache.errors import ModelError

# SAM ViT-B (what LVM-Med trained), used as is when a file lacks the keys to read it off
SAM_VIT_B = {"img_size": 1024, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
             "mlp_ratio": 4.0, "out_chans": 256, "qkv_bias": True, "window_size": 14,
             "global_attn_indexes": (2, 5, 8, 11)}


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    try:
        from segment_anything.modeling.image_encoder import ImageEncoderViT
    except ImportError:
        raise ModelError(f"{spec.key!r} needs the package segment-anything: pip install segment-anything") from None

    path = local_path(weights or spec.weights, spec.key)
    sd = backbone_state_dict(read_checkpoint(path, spec, trust_code=trust_code), spec, path)
    # SAM's builder uses eps 1e-6, not nn.LayerNorm's default
    model = ImageEncoderViT(**geometry(sd), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                            use_abs_pos=False, use_rel_pos=True)
    load_strict(model, sd, spec.key, path)
    model = model.to(device).eval()
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model),
        dims={"image": int(model.patch_embed.proj.out_channels)},
        weights_id=path.name,
        weights_sha256=sha256_file(path),
    )


def geometry(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``ImageEncoderViT`` arguments that fit a state dict; SAM ViT-B when keys lack."""
    try:
        proj = sd["patch_embed.proj.weight"]
        width, patch = int(proj.shape[0]), int(proj.shape[-1])
        depth = block_count(sd, "blocks.")
        spans = [int(sd[f"blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
        head_width = int(sd["blocks.0.attn.rel_pos_h"].shape[1])
        longest, shortest = max(spans), min(spans)
        # a table spans 2 n - 1 positions: n = the window in windowed blocks, the grid in global ones
        windowed = longest != shortest
        return {
            "img_size": (longest + 1) // 2 * patch,
            "patch_size": patch,
            "embed_dim": width,
            "depth": depth,
            "num_heads": max(1, width // head_width),
            "mlp_ratio": sd["blocks.0.mlp.lin1.weight"].shape[0] / width,
            "out_chans": int(sd["neck.0.weight"].shape[0]),
            "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
            "window_size": (shortest + 1) // 2 if windowed else 0,
            "global_attn_indexes": tuple(i for i, s in enumerate(spans) if s == longest) if windowed else (),
        }
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        return dict(SAM_VIT_B)  # the strict load then names the keys that are wrong


def _image_encoder(model: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # ImageEncoderViT.forward without the neck: (B, H, W, C) tokens, averaged over the grid
        x = model.patch_embed(x)
        for blk in model.blocks:
            x = blk(x)
        return {"image": x.mean(dim=(1, 2))}

    return encode_image
