"""TinyViT, the image encoder of MobileSAM and TinySAM, with SAM's 256-channel neck.

TinyViT (Wu et al., ECCV 2022) is a four-stage hierarchical network: a convolutional stem
(two 3 x 3 stride-2 convolutions, each followed by BatchNorm), a stage of MBConv blocks, then
three stages of windowed-attention blocks, with a convolutional patch merging between
stages. MobileSAM distilled SAM's ViT-H encoder into TinyViT-5M (widths 64, 128, 160, 320)
and changed two things for 1024 px inputs: the merging into the last stage keeps the
resolution (stride 1), so the output is 1/16 of the input like SAM's ViT (64 x 64 at 1024),
and a SAM-style neck maps the last stage to 256 channels. TinySAM uses the same encoder.
LiteMedSAM (MedSAM distilled into TinyViT-5M for 256 px inputs) changes the stem instead:
its two convolutions are 1 x 1 at stride 1, so the output is 1/4 of the input (64 x 64 at
256), and it keeps no ImageNet classifier. The stem's kernel is in its tensors' shapes, so
:func:`geometry` tells the two apart.

Module and tensor names follow the released files (``patch_embed.seq``, ``layers.<i>.blocks``,
``layers.<i>.downsample``, ``c``/``bn`` of a convolution with BatchNorm, ``attention_biases``,
``local_conv``, ``neck``), so their ``image_encoder.*`` tensors load strictly, the unused
ImageNet classifier (``norm_head``, ``head``) of MobileSAM and TinySAM included. Inference only: no dropout or
stochastic depth (both are 0 in these releases).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmcache.embed.loaders.local_checkpoint import block_count


class ConvBN(nn.Sequential):
    """A bias-free convolution followed by BatchNorm (tensors ``c.weight`` and ``bn.*``)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)


class PatchEmbed(nn.Module):
    """The stem: two convolutions (to half the width, then the width), GELU between.

    ``kernel`` 3: each at stride 2, so the stem divides the resolution by 4 (TinyViT, MobileSAM);
    ``kernel`` 1: each at stride 1, the resolution kept (LiteMedSAM).
    """

    def __init__(self, in_chans: int, dim: int, kernel: int = 3):
        super().__init__()
        if kernel not in STEM_STRIDES:
            raise ValueError(f"TinyViT's stem convolutions are 3 x 3 or 1 x 1, got {kernel} x {kernel}")
        stride = 2 if kernel == 3 else 1
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, kernel, stride), nn.GELU(),
                                 ConvBN(dim // 2, dim, kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1 x 1 expand, 3 x 3 depthwise, 1 x 1 project, GELU after the sum too."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1 x 1 to the next width, 3 x 3 depthwise at ``stride``, 1 x 1; GELU after the first two."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention over one window of w x w tokens, with a learnt bias per head
    for each (|dy|, |dx|) offset between two tokens (LeViT's attention bias).

    The bias table ``attention_biases`` is (heads, w * w); ``attention_bias_idxs`` (w*w, w*w)
    maps a pair of tokens to its offset's column, |dy| * w + |dx|, the order in which the
    released code enumerates them. It is derived, not stored in the files.
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"a width of {dim} does not split into {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        yx = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        offset = (yx[:, :, None] - yx[:, None, :]).abs()
        self.register_buffer("attention_bias_idxs", offset[0] * window + offset[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # the projection is laid out head by head, each head's q, k, v side by side
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2).chunk(3, dim=-1)
        # indexed at every call: a bias cached at .eval() would go stale when weights are loaded later
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        # written out: torch's fused attention with an additive mask measured twice as slow on CPU
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5 + bias, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """LayerNorm, then a two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), a 3 x 3 depthwise convolution (no residual), MLP (residual).

    Works on (B, C, H, W) maps. The map is zero-padded bottom/right to whole windows before the
    attention's LayerNorm, and the padded tokens are attended to (no mask), as released.
    """

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.mlp(x)
        return x.permute(0, 3, 1, 2)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        ph, pw = -h % s, -w % s
        y = F.pad(x, (0, 0, 0, pw, 0, ph)) if ph or pw else x
        nh, nw = (h + ph) // s, (w + pw) // s
        y = y.reshape(b, nh, s, nw, s, c).transpose(2, 3).reshape(b * nh * nw, s * s, c)
        y = self.attn(y)
        y = y.reshape(b, nh, nw, s, s, c).transpose(2, 3).reshape(b, h + ph, w + pw, c)
        return y[:, :h, :w]


class Stage(nn.Module):
    """One stage: its blocks, then (all but the last stage) the merging to the next width."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, eps 1e-6 (SAM's neck)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


# Input pixels per output cell of the stem, by the kernel of its convolutions (two stride-2
# 3 x 3, or two stride-1 1 x 1); the stages after it divide by 4 more (two stride-2 mergings)
STEM_STRIDES = {3: 4, 1: 1}


class TinyViT(nn.Module):
    """TinyViT with SAM's neck: (B, in_chans, S, S) images to (B, out_chans, S/r, S/r) features,
    r the :attr:`feature_stride` (16 with the usual stem, 4 with LiteMedSAM's).

    Parameters
    ----------
    img_size
        The input side S (1024 in MobileSAM and TinySAM, 256 in LiteMedSAM); a multiple of r.
    in_chans
        Input channels.
    embed_dims, depths
        Width and number of blocks of each of the four stages.
    num_heads, window_sizes
        Attention heads and window side of each stage (the first, convolutional stage's are
        not used).
    mlp_ratio
        Hidden width of the attention blocks' MLP over their width.
    mbconv_expand_ratio
        Hidden width of the first stage's MBConv blocks over their width.
    local_conv_size
        Kernel of the depthwise convolution between attention and MLP.
    num_classes
        Outputs of the ImageNet classifier the released files keep (``norm_head``, ``head``);
        not used by :meth:`forward`; 0 for none (LiteMedSAM's: neither module exists).
    out_chans
        Channels of the neck, the features' width (256 in SAM).
    stem_kernel
        3 for TinyViT's stem (two 3 x 3 stride-2 convolutions), 1 for LiteMedSAM's (two 1 x 1
        at stride 1).
    """

    def __init__(self, img_size: int = 1024, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, num_classes: int = 1000,
                 out_chans: int = 256, stem_kernel: int = 3):
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == 4:
            raise ValueError("TinyViT has four stages: embed_dims, depths, num_heads and window_sizes need 4 values")
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], stem_kernel)
        self.feature_stride = STEM_STRIDES[stem_kernel] * 4
        if img_size % self.feature_stride:
            raise ValueError(f"this TinyViT's input side must be a multiple of {self.feature_stride}, got {img_size}")
        self.img_size = img_size
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                          for _ in range(depth)]
            # two stride-2 mergings after the stem (to /16 after TinyViT's stem), and the merging
            # into the last stage keeps the resolution: MobileSAM's change for SAM's 1/16 grid
            last = i == len(embed_dims) - 1
            merge = None if last else PatchMerging(dim, embed_dims[i + 1], stride=1 if i == len(embed_dims) - 2 else 2)
            self.layers.append(Stage(blocks, merge))
        if num_classes > 0:
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the released forward reshapes the last stage to a fixed grid, so only img_size inputs work
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT was built for {self.img_size} x {self.img_size} inputs, got "
                             f"{tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


def geometry(sd: Mapping[str, torch.Tensor], nominal: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`TinyViT` arguments (all but ``img_size``) that fit the state dict ``sd``.

    Every value is read off a tensor's shape where one holds it: widths and the stem's kernel
    (hence its stride) off the convolutions,
    depths off the block numbers, heads and window side off ``attention_biases``
    (heads x window², as heads are not otherwise visible), the ratios off the hidden layers.
    Where the keys lack, the value is ``nominal``'s, so a damaged file then fails the strict
    load naming its keys rather than here.

    Parameters
    ----------
    sd
        The encoder's tensors, without the ``image_encoder.`` prefix.
    nominal
        The geometry to fall back on: every :class:`TinyViT` argument but ``img_size``.

    Returns
    -------
    dict
        Keyword arguments for :class:`TinyViT`.
    """
    def size(candidates: Sequence[tuple[str, int]], default: Any) -> Any:
        for key, axis in candidates:
            t = sd.get(key)
            if t is not None and t.ndim > axis:
                return int(t.shape[axis])
        return default

    n = len(nominal["embed_dims"])
    dims = [size([("patch_embed.seq.2.c.weight", 0), ("layers.0.blocks.0.conv1.c.weight", 1)],
                 nominal["embed_dims"][0])]
    for i in range(1, n):
        dims.append(size([(f"layers.{i - 1}.downsample.conv1.c.weight", 0),
                          (f"layers.{i}.blocks.0.attn.norm.weight", 0), (f"layers.{i}.blocks.0.attn.qkv.weight", 1)],
                         nominal["embed_dims"][i]))
    depths = [block_count(sd, f"layers.{i}.blocks.") or nominal["depths"][i] for i in range(n)]
    heads, windows = [nominal["num_heads"][0]], [nominal["window_sizes"][0]]
    for i in range(1, n):
        # the stage's blocks share one shape: the first that can be (heads, side²) gives both
        tables = (sd.get(f"layers.{i}.blocks.{j}.attn.attention_biases") for j in range(depths[i]))
        shape = next((tuple(t.shape) for t in tables if t is not None and _bias_table(t.shape, dims[i])), None)
        heads.append(shape[0] if shape else nominal["num_heads"][i])
        windows.append(math.isqrt(shape[1]) if shape else nominal["window_sizes"][i])
    return {
        "in_chans": size([("patch_embed.seq.0.c.weight", 1)], nominal["in_chans"]),
        "embed_dims": tuple(dims),
        "depths": tuple(depths),
        "num_heads": tuple(heads),
        "window_sizes": tuple(windows),
        "mlp_ratio": size([("layers.1.blocks.0.mlp.fc1.weight", 0)], nominal["mlp_ratio"] * dims[1]) / dims[1],
        "mbconv_expand_ratio": size([("layers.0.blocks.0.conv1.c.weight", 0)],
                                    nominal["mbconv_expand_ratio"] * dims[0]) / dims[0],
        "local_conv_size": size([("layers.1.blocks.0.local_conv.c.weight", 3)], nominal["local_conv_size"]),
        "num_classes": size([("head.weight", 0), ("head.bias", 0)], nominal["num_classes"]),
        "out_chans": size([("neck.0.weight", 0)], nominal["out_chans"]),
        "stem_kernel": size([("patch_embed.seq.0.c.weight", 3), ("patch_embed.seq.2.c.weight", 3)],
                            nominal.get("stem_kernel", 3)),
    }


def _bias_table(shape: Sequence[int], dim: int) -> bool:
    """Whether ``shape`` can be a stage's bias table: heads that split its width, a square window."""
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        return False
    return dim % shape[0] == 0 and math.isqrt(shape[1]) ** 2 == shape[1]
