"""SAM-Med2D's image encoder: SAM's ViT at 256 px whose blocks may carry an adapter.

SAM-Med2D (OpenGVLab/SAM-Med2D) fine-tunes SAM ViT-B at a 256 x 256 input (a 16 x 16 feature
grid, 64 x 64 low-res masks) and adds to every block of the image encoder an ``Adapter``
beside the MLP: the block's output is ``h + mlp(norm2(h)) + Adapter(norm2(h))`` with ``h``
the block's input plus its attention. The adapter, on ``y`` (B, H, W, C):

- a channel gate: ``sigmoid(W2 relu(W1 mean_hw(y)))`` (Linear C -> C/4 -> C, no biases);
- a spatial path on the gated ``y``: Conv2d 3x3 stride 2 padding 1, ReLU, ConvTranspose2d
  4x4 stride 2 padding 1, ReLU (no biases), back to H x W;
- ``LayerNorm(y + spatial)`` with ``nn.LayerNorm``'s default eps 1e-5 (the blocks' own norms
  use SAM's 1e-6).

Its keys are ``blocks.{i}.Adapter.{norm, channel.0, channel.2, spatial.0, spatial.2}``. FT-SAM,
SAM fine-tuned the same way without adapters, is the plain ViT at 256. The prompt encoder and
mask decoder are SAM's, key for key. The released files are ``{'model': state_dict,
'optimizer': <torch.optim.Adam object>}``: fmcache does not unpickle the optimizer object, so
the file is refused with the one-line command that saves its ``model`` entry alone.

Input, as SAM-Med2D's ``SammedPredictor``: RGB normalised with the ImageNet mean/std x 255,
then resized straight to 256 x 256 with OpenCV's ``INTER_NEAREST`` (:func:`nearest_resize`
repeats its source indices exactly). Nearest picks pixels, so normalising after the resize,
as :func:`fmcache.segment.sam.prepare` does, gives the same input. Two paths of SAM-Med2D's
own code are not followed: its test script centre-pads an image smaller than 256 on both
sides instead of resizing it, and its training loader reads images with OpenCV (BGR order)
while subtracting the RGB-ordered means (the predictor takes RGB). Masks are mapped back as
the predictor does: bilinear to 256 x 256, then bilinear to the original size, which is what
``Sam.postprocess_masks`` does for an unpadded square input; the mask of highest predicted
IoU is kept, as there.

Cost, measured once with random weights of the released geometry on 2 CPU cores shared with
other work: the image encoder took about 6 s per image with adapters (271 M parameters, the
adapters' two 768-channel convolutions per block being most of them) and 5.8 s without
(91 M; the 16 x 16 grid is padded to 28 x 28 for the windows of 14, as upstream); decoding a
box 0.16 s per prompt. Not measured with the released weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

# SAM-Med2D's Adapter_Layer(mlp_ratio=0.25): the channel gate's hidden width over the block width
ADAPTER_RATIO = 0.25
ADAPTER_KEY = ".Adapter."


class Adapter(nn.Module):
    """SAM-Med2D's adapter on a block's normalised tokens (B, H, W, C); same shape out."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)  # eps 1e-5: upstream builds it with nn.LayerNorm's default
        self.channel = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.Sigmoid())
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False), nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False), nn.ReLU(),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = y.permute(0, 3, 1, 2)
        gated = x * self.channel(x.mean(dim=(2, 3)))[:, :, None, None]
        return self.norm((x + self.spatial(gated)).permute(0, 2, 3, 1))


class AdapterBlock(nn.Module):
    """A segment_anything ``Block`` with SAM-Med2D's adapter beside its MLP.

    It takes over the block's own modules (so the keys stay ``norm1``, ``attn``, ``norm2``,
    ``mlp``) and adds ``Adapter``; the attention, windowed or global, is the block's.
    """

    def __init__(self, block: nn.Module, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = block.window_size
        self.Adapter = Adapter(block.norm1.normalized_shape[0], hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from segment_anything.modeling.image_encoder import window_partition, window_unpartition

        y = self.norm1(x)
        if self.window_size > 0:
            hw = (y.shape[1], y.shape[2])
            windows, padded = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(windows), self.window_size, padded, hw)
        else:
            y = self.attn(y)
        h = x + y
        z = self.norm2(h)
        return h + self.mlp(z) + self.Adapter(z)


def vit_adapter_encoder(enc_sd: Mapping[str, torch.Tensor], spec: Any) -> tuple[nn.Module, int]:
    """SAM's ``ImageEncoderViT`` fitting ``enc_sd``, with an adapter in every block if it has any.

    The ViT is the ``vit`` family's (geometry and input size read off the tensors); when the
    file holds ``blocks.{i}.Adapter.*`` keys every block gets an adapter, as SAM-Med2D's
    builder does, so a file missing one block's adapter is named by the strict load.
    """
    from fmcache.segment.sam import ENCODERS

    encoder, size = ENCODERS["vit"](enc_sd, spec)
    if not any(ADAPTER_KEY in k for k in enc_sd):
        return encoder, size  # FT-SAM
    width = encoder.patch_embed.proj.out_channels
    gate = next((v for k, v in enc_sd.items() if k.endswith(".Adapter.channel.0.weight")), None)
    hidden = int(gate.shape[0]) if gate is not None and gate.ndim == 2 else int(width * ADAPTER_RATIO)
    encoder.blocks = nn.ModuleList(AdapterBlock(b, hidden) for b in encoder.blocks)
    return encoder, size


def nearest_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., H, W) resized to (..., size, size) by OpenCV's ``INTER_NEAREST`` rule.

    OpenCV takes source index ``floor(i * (1 / (size / n)))`` in double precision (capped at
    n - 1). The double reciprocal can land just below an exact multiple, so at a few sizes one
    row or column comes from its neighbour (row 128 of 256 from a 186-row image is row 92, not
    93); torch's ``nearest`` takes the exact ``floor(i * n / size)`` and would differ there.
    """
    rows = _opencv_nearest_index(x.shape[-2], size)
    cols = _opencv_nearest_index(x.shape[-1], size)
    return x[..., torch.as_tensor(rows, device=x.device)[:, None], torch.as_tensor(cols, device=x.device)]


def _opencv_nearest_index(n: int, size: int) -> np.ndarray:
    return np.minimum(np.floor(np.arange(size) * (1.0 / (size / n))).astype(np.int64), n - 1)
