"""Tiny random-weight SAM-family models saved as the official checkpoints are: one flat state dict.

The SAM is the demo's (:func:`fmcache.segment.demo_model.tiny_random_sam`) at the real
input geometry (1024 px, patch 16, a 64 x 64 feature grid, 256 x 256 low-res masks), so the
real resize, padding and post-processing apply; the widths are small (ViT: 2 blocks of width
32; features and decoder: 64 channels instead of 256), which keeps an image well under a
second on two CPU cores. The MobileSAM-style model has the same
decoder and a TinyViT of the release's structure (four stages, windowed attention with
biases, the classifier head the files keep) at small widths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmcache.segment.demo_model import DIM, SEED, tiny_random_sam, tiny_sam_around

# MobileSAM's TinyViT at small widths; heads and windows differ per stage (and from the release's),
# so they must be read off the tensors, and windows of 5 and 7 need padding on 128 and 64 grids
TINY_TINY_VIT = {"embed_dims": (8, 16, 24, 32), "depths": (1, 2, 2, 1), "num_heads": (1, 2, 3, 4),
                 "window_sizes": (7, 5, 8, 7), "mlp_ratio": 2.0, "mbconv_expand_ratio": 2.0, "local_conv_size": 3,
                 "in_chans": 3, "num_classes": 10, "out_chans": DIM}


def tiny_sam() -> torch.nn.Module:
    """A seeded ``segment_anything.modeling.Sam`` of the real geometry, small widths, eval mode."""
    return tiny_random_sam(img_size=1024, window_size=14, seed=SEED)


def tiny_mobile_sam() -> torch.nn.Module:
    """A seeded ``Sam`` with a small TinyViT image encoder (MobileSAM's structure), eval mode.

    BatchNorm statistics, affine parameters and attention biases are random (a fresh model
    has them at identities and zeros, which would hide a misplaced one).
    """
    from fmcache.embed.tiny_vit import TinyViT

    torch.manual_seed(SEED)
    sam = tiny_sam_around(TinyViT(img_size=1024, **TINY_TINY_VIT))
    randomise_norms(sam.image_encoder)
    return sam.eval()


def randomise_norms(module: torch.nn.Module) -> None:
    """Random BatchNorm / LayerNorm parameters and statistics and attention biases, in place."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "attention_biases" in name:
                p.normal_(std=1.0)
            elif p.ndim == 1 and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.ndim == 1:
                p.normal_(std=0.2)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(std=0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                b.fill_(1000)


def save_flat(sam: torch.nn.Module, path: Path, drop: tuple[str, ...] = (), extra: dict | None = None) -> Path:
    """``torch.save`` of the flat state dict (keys ``image_encoder.`` / ``prompt_encoder.`` / ``mask_decoder.``)."""
    sd = {k: v for k, v in sam.state_dict().items() if k not in drop}
    sd.update(extra or {})
    torch.save(sd, path)
    return path


# (H, W) of two images, portrait and landscape, and one point and one box per image in their pixels (x, y)
SIZES = [(300, 200), (120, 480)]
POINTS = np.array([[[100.0, 150.0]], [[240.0, 60.0]]])
BOXES = np.array([[20.0, 30.0, 150.0, 250.0], [100.0, 10.0, 400.0, 100.0]])


def blob_images(sizes, seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB images of the given (H, W): a bright ellipse on a noisy background, so masks
    are neither empty nor full."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        yy, xx = np.mgrid[:h, :w]
        blob = ((yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 2) ** 2 / (w / 4) ** 2) < 1
        img = rng.integers(0, 90, (h, w, 3)) + 150 * blob[..., None]
        out.append(img.clip(0, 255).astype(np.uint8))
    return out


def predictor_reference(predictor, images, points, boxes) -> list[tuple]:
    """A ``SamPredictor`` end to end per image: (its features, point result, box result), each
    result the (mask, IoU, low-res logits) of the best predicted IoU of three."""
    out = []
    for img, pt, box in zip(images, points, boxes):
        predictor.set_image(img)
        res = []
        for kw in ({"point_coords": pt, "point_labels": np.ones(len(pt))}, {"box": box}):
            masks, iou, low = predictor.predict(**kw, multimask_output=True)
            best = int(np.argmax(iou))
            res.append((masks[best], iou[best], low[best]))
        out.append((predictor.features[0].numpy().copy(), *res))
    return out
