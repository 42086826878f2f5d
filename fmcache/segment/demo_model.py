"""A tiny SAM with random weights, for the offline demo: the whole segmentation pipeline runs
without any download, and nothing about it can pass for a real model.

No SAM-family weights are installed with fmcache, so the demo builds a seeded
``segment_anything`` ``Sam`` of tiny widths (ViT: 2 blocks of width 32, one of them global;
features and decoder 64 channels instead of 256), saves it once as a flat state dict under
the cache root, and loads that file through :func:`fmcache.segment.sam.load_sam` like any
checkpoint, with an entry (:func:`demo_spec`) that is not in the public registry. Its masks
exercise the pipeline (encode, cache, decode, Dice, bootstrap); they say nothing about how
well a model delineates anything, so neither does any gap measured with them.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from fmcache.segment.models import SAM_INPUT, InputRule, SamSpec

KEY = "sam_tiny_random"  # the cache entry's name: never one of a real model
SEED = 0
DIM = 64  # prompt / feature width (256 in SAM)
# 256 px (grid 16) keeps the demo's encoder fast: the 1024 px geometry costs ~16 x more per image
DEMO_SIZE = 256
WEIGHTS_DIR = ".demo-weights"  # hidden, so the cache's listings pass over it


def tiny_random_sam(img_size: int = 1024, window_size: int = 14, seed: int = SEED) -> Any:
    """A seeded ``segment_anything.modeling.Sam`` of tiny widths with random weights, eval mode.

    Parameters
    ----------
    img_size
        Input side in pixels (patch 16: the feature grid is ``img_size / 16``).
    window_size
        Window of the first (windowed) ViT block; the second attends globally.
    seed
        torch seed of the initialisation: the same seed gives the same weights.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(seed)
    sam = tiny_sam_around(ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=32, depth=2, num_heads=1,
                                          mlp_ratio=2.0, out_chans=DIM, qkv_bias=True, window_size=window_size,
                                          global_attn_indexes=(1,), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                          use_rel_pos=True))
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.5)  # SAM zero-initialises them; random ones make the geometry matter
    return sam.eval()


def tiny_sam_around(image_encoder: Any) -> Any:
    """A ``Sam`` of ``image_encoder`` (with an ``img_size`` and a ``DIM``-channel, stride-16 output) and
    SAM's prompt encoder and mask decoder at ``DIM`` channels (a 64-wide MLP, 32-wide IoU head)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size = image_encoder.img_size
    grid = size // 16
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=DIM, image_embedding_size=(grid, grid), input_image_size=(size, size),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=8),
                                 transformer_dim=DIM, iou_head_depth=3, iou_head_hidden_dim=32),
    )


def demo_spec(size: int = DEMO_SIZE) -> SamSpec:
    """The demo model's entry: SAM's input rule at ``size`` px; not in :data:`SAM_MODELS`."""
    return SamSpec(KEY, f"tiny SAM with random weights ({size} px; demo only, not a trained model)", "vit_b",
                   f"file:{KEY}.pth", InputRule(SAM_INPUT.resize, SAM_INPUT.interpolation, SAM_INPUT.normalise, size),
                   notes="built by fmcache for the offline demo; its masks only exercise the pipeline")


def demo_weights(folder: str | os.PathLike[str], size: int = DEMO_SIZE, overwrite: bool = False) -> Path:
    """The demo model's weights file in ``folder``, written on first use (or when ``overwrite``).

    Written once and then read, so that the cache entry's recorded weights digest stays the
    file's whatever torch version later runs the demo.
    """
    import torch

    path = Path(folder) / f"{KEY}-{size}.pth"
    if overwrite or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        torch.save(tiny_random_sam(size, window_size=size // 32).state_dict(), tmp)
        os.replace(tmp, path)  # a reader never meets half a file
    return path


def load_demo_sam(folder: str | os.PathLike[str], size: int = DEMO_SIZE, overwrite: bool = False,
                  device: str = "cpu"):
    """The demo model (a :class:`fmcache.segment.sam.SamModel`), loaded strictly from its file in ``folder``."""
    from fmcache.segment.sam import load_sam

    return load_sam(demo_spec(size), weights=str(demo_weights(folder, size, overwrite)), device=device)
