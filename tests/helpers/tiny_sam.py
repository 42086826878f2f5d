"""A tiny random-weight SAM saved as the official checkpoints are: one flat state dict.

The real input geometry is kept (1024 px, patch 16, a 64 x 64 feature grid, 256 x 256
low-res masks) so the real resize, padding and post-processing apply; the widths are small
(ViT: 2 blocks of width 32; features and decoder: 64 channels instead of 256), which keeps
an image well under a second on two CPU cores.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

SEED = 0
# the prompt / feature width (256 in SAM): 64 keeps the neck and the decoder fast on CPUs
DIM = 64
TINY_SAM = {"img_size": 1024, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 1, "mlp_ratio": 2.0,
            "out_chans": DIM, "qkv_bias": True, "window_size": 14, "global_attn_indexes": (1,)}


def tiny_sam() -> torch.nn.Module:
    """A seeded ``segment_anything.modeling.Sam`` of the real geometry, small widths, eval mode."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(SEED)
    grid = TINY_SAM["img_size"] // TINY_SAM["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(**TINY_SAM, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True),
        prompt_encoder=PromptEncoder(embed_dim=DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(TINY_SAM["img_size"],) * 2, mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=8),
                                 transformer_dim=DIM, iou_head_depth=3, iou_head_hidden_dim=32),
    )
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.5)  # SAM zero-initialises them; random ones make the geometry matter
    return sam.eval()


def save_flat(sam: torch.nn.Module, path: Path, drop: tuple[str, ...] = (), extra: dict | None = None) -> Path:
    """``torch.save`` of the flat state dict (keys ``image_encoder.`` / ``prompt_encoder.`` / ``mask_decoder.``)."""
    sd = {k: v for k, v in sam.state_dict().items() if k not in drop}
    sd.update(extra or {})
    torch.save(sd, path)
    return path
