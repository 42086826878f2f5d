"""Tiny random SAM-Med3D / FastSAM3D models (fmcache.embed.sam3d) of the releases' structure."""

from __future__ import annotations

from pathlib import Path

import torch

from fmcache.embed.sam3d import Sam3D

# img 64, patch 16 -> a 4³ grid; window 3 pads it to 6³ (8 windows), block 1 global
TINY = dict(
    img_size=64, patch_size=16, embed_dim=48, depth=3, num_heads=4, out_chans=48, window_size=3,
    global_attn_indexes=(1,), mask_in_chans=8, iou_head_hidden_dim=32,
)
# FastSAM3D's student in small: all global, first two blocks without attention
FAST = dict(TINY, depth=4, window_size=0, global_attn_indexes=(), skip_layers=2, block_style="fastsam3d")


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every tensor (zero-initialised ones included) so no term can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("positional_encoding_gaussian_matrix"):
                t.copy_(noise)
            elif t.ndim == 1 and ("norm" in name or "neck.1" in name or "neck.3" in name):
                t.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif "embed" in name or "token" in name:  # embeddings: unit scale, like the features they join
                t.copy_(noise)
            else:  # fan-in scaling keeps activations O(1) through the layers
                t.copy_(noise / t[0].numel() ** 0.5 if t.ndim > 1 else 0.3 * noise)
    return model.eval()


def save_release(model: torch.nn.Module, path: Path) -> Path:
    """``model`` saved as the releases are: ``{"model_state_dict": ...}`` beside training state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    return path


def tiny_sam3d(geometry: dict | None = None, seed: int = 0) -> Sam3D:
    """A seeded random :class:`Sam3D` of ``geometry`` (default :data:`TINY`), eval mode."""
    return randomise(Sam3D(**(geometry or TINY)), seed)
