"""SAM-Med3D (``vit_b_ori``) and FastSAM3D in torch: a 3D ViT image encoder, a points-only
prompt encoder and a mask decoder, with state-dict keys equal to the releases'.

SAM-Med3D (uni-medical/SAM-Med3D, Apache-2.0) segments a 128³ block of a volume resampled to
1.5 mm and z-normalised over voxels > 0, from point prompts given as voxel indices of that
block. FastSAM3D (arcadelab/FastSAM3D, Apache-2.0) distils the image encoder into six global
blocks whose first two have no attention; its prompt encoder and mask decoder are SAM-Med3D's.

    model = load_sam3d("sam_med3d_turbo.pth", "sammed3d", "vit_b_ori")
    feats = model.encode(block)                     # (B, 384, 8, 8, 8)
    logits = model.decode(feats, points, labels)    # (B, 128, 128, 128)

Numerics follow the official code path, quirks included, because the weights were trained
through it: windowed blocks zero-pad the 8³ grid to one 14³ window, the decomposed
relative-position terms land on other key axes than their names say (see
:class:`Attention3D`), the dense positional encoding swaps the roles of axes 0 and 1 relative
to the point encoding, and FastSAM3D's blocks normalise the residual stream itself (see
:class:`EncoderBlock`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fmcache.embed.loaders.local_checkpoint import block_count, load_strict, read_weights, unwrap_state_dict
from fmcache.errors import ModelError

# Nominal geometries. Shapes in a checkpoint override all but the head counts and the block
# style, which no tensor shows (see build_sam3d).
ARCHS: dict[str, dict[str, Any]] = {
    "vit_b_ori": dict(
        img_size=128, patch_size=16, in_chans=1, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
        out_chans=384, window_size=14, global_attn_indexes=(2, 5, 8, 11), skip_layers=0, block_style="sam",
        mask_in_chans=16, decoder_depth=2, decoder_heads=8, decoder_mlp_dim=2048, num_multimask_outputs=3,
        iou_head_depth=3, iou_head_hidden_dim=256,
    ),
}
ARCHS["fastsam3d"] = dict(
    ARCHS["vit_b_ori"], depth=6, num_heads=6, window_size=0, global_attn_indexes=(), skip_layers=2,
    block_style="fastsam3d",
)

BLOCK_STYLES = ("sam", "fastsam3d")


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, X, Y, Z) tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (keys ``lin1``, ``lin2``)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (keys ``layers.{i}``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# ---------------------------------------------------------------------------------------------
# image encoder


def _rel_pos_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(size, size, head_dim) embeddings of the offsets i - j between ``size`` positions.

    The table always has the trained length 2·size - 1 here: :meth:`Sam3D.encode` accepts only
    the trained block size, so the official code's resampling for other sizes is not needed.
    """
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + size - 1]


class Attention3D(nn.Module):
    """Multi-head self-attention over a (B, D, H, W, C) token grid with decomposed relative
    positions along each of the three axes (``rel_pos_d``, ``rel_pos_h``, ``rel_pos_w``).

    ``size`` is the side of the cube attended over: the window, or the whole grid.
    """

    def __init__(self, dim: int, num_heads: int, size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the embedding width {dim}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        # the relative terms use the unscaled query, as trained
        rq = q.reshape(-1, d, h, w, q.shape[-1])
        rd = torch.einsum("bdhwc,dkc->bdhwk", rq, _rel_pos_table(d, self.rel_pos_d))
        rh = torch.einsum("bdhwc,hkc->bdhwk", rq, _rel_pos_table(h, self.rel_pos_h))
        rw = torch.einsum("bdhwc,wkc->bdhwk", rq, _rel_pos_table(w, self.rel_pos_w))
        # The official 3D port indexes these terms as its 2D ancestor did, so each lands on other
        # axes than its name says: all three vary along the key's last axis, the query's third
        # index meets the key's first (h term) or second (w term) axis, and the d term ignores
        # the key's first two. The releases were trained with exactly this; cubes make it fit.
        attn = attn.view(-1, d, h, w, d, h, w)
        attn = attn + rd.view(-1, d, h, w, 1, 1, d) + rh.view(-1, d, h, 1, w, 1, h) + rw.view(-1, d, h, 1, 1, w, w)
        attn = attn.view(-1, n, n).softmax(dim=-1)
        out = (attn @ v).view(b, self.num_heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, -1)
        return self.proj(out)


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut a (B, D, H, W, C) grid, zero-padded up to multiples of ``ws``, into (B·n, ws, ws, ws, C)
    windows; also returns the padded extent."""
    b, d, h, w, c = x.shape
    pd, ph, pw = (-d) % ws, (-h) % ws, (-w) % ws
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    dp, hp, wp = d + pd, h + ph, w + pw
    x = x.view(b, dp // ws, ws, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, ws, ws, ws, c), (dp, hp, wp)


def window_unpartition(
    windows: torch.Tensor, ws: int, padded: tuple[int, int, int], size: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: the (B, D, H, W, C) grid with the padding cut off."""
    dp, hp, wp = padded
    b = windows.shape[0] // ((dp // ws) * (hp // ws) * (wp // ws))
    x = windows.view(b, dp // ws, hp // ws, wp // ws, ws, ws, ws, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(b, dp, hp, wp, -1)
    d, h, w = size
    return x[:, :d, :h, :w].contiguous()


class EncoderBlock(nn.Module):
    """One transformer block of the 3D ViT.

    ``attend=False`` gives FastSAM3D's attention-free block: only ``norm2`` and ``mlp`` exist.
    ``style`` picks where the residual sums are normalised, which the two releases trained
    differently (neither shows in the keys):

    ``"sam"`` (SAM-Med3D, pre-norm)
        ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``
    ``"fastsam3d"`` (FastSAM3D's ``image_encoder3D.Block3D`` / ``Block3D_woatt``)
        ``x = norm2(x + attn(norm1(x))); x = x + mlp(x)``, and without attention
        ``x = norm2(x); x = x + mlp(x)``.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, grid: int, window_size: int, attend: bool, style: str
    ) -> None:
        super().__init__()
        if style not in BLOCK_STYLES:
            raise ValueError(f"block style {style!r} is not one of {BLOCK_STYLES}")
        self.style = style
        self.window_size = window_size
        self.attend = attend
        if attend:
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention3D(dim, num_heads, window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            size = tuple(y.shape[1:4])
            y, padded = window_partition(y, self.window_size)
            return window_unpartition(self.attn(y), self.window_size, padded, size)
        return self.attn(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attend:
            x = x + self._attention(x)
        if self.style == "sam":
            return x + self.mlp(self.norm2(x))
        x = self.norm2(x)
        return x + self.mlp(x)


class PatchEmbed3D(nn.Module):
    """Non-overlapping Conv3d patches, returned channels-last (B, g, g, g, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoder3D(nn.Module):
    """3D ViT: patch embedding + absolute positions, ``depth`` blocks, Conv3d/LayerNorm3d neck.

    ``window_size=0`` makes every block global; otherwise blocks not in ``global_attn_indexes``
    attend within windows. The first ``skip_layers`` blocks have no attention (FastSAM3D).
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: Sequence[int],
        skip_layers: int,
        block_style: str,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(
                embed_dim, num_heads, mlp_ratio, grid,
                window_size=0 if i in global_attn_indexes else window_size,
                attend=i >= skip_layers, style=block_style,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))


# ---------------------------------------------------------------------------------------------
# prompt encoder


class RandomFourierPE3D(nn.Module):
    """Random Fourier features of 3D coordinates in [0, 1]: sin, cos, sin of 2π(2c-1)G.

    The third block repeats sin so that 3·``num_feats`` channels fill the prompt width.
    """

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        c = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([torch.sin(c), torch.cos(c), torch.sin(c)], dim=-1)

    def grid(self, size: tuple[int, int, int]) -> torch.Tensor:
        """(C, X, Y, Z) encoding of the voxel centres of a grid.

        Channel 0 carries the position along axis 1 (scaled by size[0]) and channel 1 the
        position along axis 0 (scaled by size[1]), unlike the point encoding, whose channel
        0 is axis 0: the official code does this (a 2D x/y convention carried into 3D) and the
        weights were trained with it.
        """
        sx, sy, sz = size
        ones = torch.ones(size, device=self.positional_encoding_gaussian_matrix.device)
        along0 = (ones.cumsum(0) - 0.5) / sy
        along1 = (ones.cumsum(1) - 0.5) / sx
        along2 = (ones.cumsum(2) - 0.5) / sz
        return self._encode(torch.stack([along1, along0, along2], dim=-1)).permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, C) encoding of (B, N, 3) voxel coordinates in a block of ``size``."""
        scale = torch.tensor(size, dtype=torch.float32, device=coords.device)
        return self._encode(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    """Points-only prompt encoder of SAM-Med3D (the box embeddings are not in the release).

    Sparse: Fourier encoding of each point + a learnt embedding for negative (0) or positive
    (1) points; padding (-1) gets ``not_a_point_embed`` alone. Dense: ``mask_downscaling`` of a
    (B, 1, 4g, 4g, 4g) mask, or ``no_mask_embed`` everywhere.
    """

    def __init__(self, embed_dim: int, grid: int, img_size: int, mask_in_chans: int) -> None:
        super().__init__()
        if embed_dim % 3:
            raise ValueError(f"prompt width {embed_dim} is not a multiple of 3")
        self.embed_dim = embed_dim
        self.grid = (grid, grid, grid)
        self.input_size = (img_size, img_size, img_size)
        self.pe_layer = RandomFourierPE3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> torch.Tensor:
        """(1, C, g, g, g) positional encoding of the feature grid."""
        return self.pe_layer.grid(self.grid)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, k+1, C): the k points, then one padding point, as the official encoder appends
        when no box is given."""
        b = points.shape[0]
        coords = torch.cat([points.float() + 0.5, points.new_zeros(b, 1, 3, dtype=torch.float32)], dim=1)
        labels = torch.cat([labels.long(), labels.new_full((b, 1), -1, dtype=torch.long)], dim=1)
        emb = self.pe_layer.points(coords, self.input_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
        emb = emb + (lab == -1) * self.not_a_point_embed.weight
        emb = emb + (lab == 0) * self.point_embeddings[0].weight
        emb = emb + (lab == 1) * self.point_embeddings[1].weight
        return emb

    def embed_mask(self, mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B, C, g, g, g) dense embedding of a low-resolution mask, or of no mask."""
        if mask is not None:
            return self.mask_downscaling(mask)
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.grid)


# ---------------------------------------------------------------------------------------------
# mask decoder


class DownscaleAttention(nn.Module):
    """Multi-head attention whose q/k/v projections may narrow the width by ``downsample``."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        if inner % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        out = attn.softmax(dim=-1) @ v
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class TwoWayBlock(nn.Module):
    """Tokens attend to themselves and to the image, then the image attends to the tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, first: bool) -> None:
        super().__init__()
        self.self_attn = DownscaleAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DownscaleAttention(dim, num_heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DownscaleAttention(dim, num_heads, 2)
        # the first block's self-attention sees the prompt embeddings themselves, which already
        # carry their positions, and replaces the tokens rather than adding to them
        self.first = first

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    """``depth`` two-way blocks and a last token-to-image attention."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, num_heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = DownscaleAttention(dim, num_heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys


class MaskDecoder3D(nn.Module):
    """SAM's mask decoder in 3D: output tokens (IoU + masks) and prompt tokens run through the
    two-way transformer; each mask token's hypernetwork weights the upscaled (4g)³ image
    features."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        num_multimask_outputs: int,
        iou_head_depth: int,
        iou_head_hidden_dim: int,
    ) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer3D(depth, dim, num_heads, mlp_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` low-resolution masks (B, M, 4g, 4g, 4g) and their IoU
        predictions (B, M); index 0 is the single-mask output."""
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = image + dense
        pos = image_pe.expand(src.shape[0], -1, -1, -1, -1)
        b, c = src.shape[:2]
        hs, keys = self.transformer(src, pos, tokens)
        src = keys.transpose(1, 2).reshape(b, c, *image.shape[2:])
        up = self.output_upscaling(src)
        hyper = torch.stack(
            [mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c2 = up.shape[:2]
        masks = (hyper @ up.reshape(b, c2, -1)).reshape(b, -1, *up.shape[2:])
        return masks, self.iou_prediction_head(hs[:, 0])


# ---------------------------------------------------------------------------------------------
# the model


class Sam3D(nn.Module):
    """SAM-Med3D / FastSAM3D for one input block.

    Parameters are those of :data:`ARCHS` (any omitted take the ``vit_b_ori`` value); the
    prompt width is ``out_chans``.
    """

    def __init__(self, **geometry: Any) -> None:
        super().__init__()
        g = dict(ARCHS["vit_b_ori"], **geometry)
        unknown = set(g) - set(ARCHS["vit_b_ori"])
        if unknown:
            raise TypeError(f"unknown Sam3D parameters: {sorted(unknown)}")
        self.geometry = g
        grid = g["img_size"] // g["patch_size"]
        self.image_encoder = ImageEncoder3D(
            img_size=g["img_size"], patch_size=g["patch_size"], in_chans=g["in_chans"], embed_dim=g["embed_dim"],
            depth=g["depth"], num_heads=g["num_heads"], mlp_ratio=g["mlp_ratio"], out_chans=g["out_chans"],
            window_size=g["window_size"], global_attn_indexes=tuple(g["global_attn_indexes"]),
            skip_layers=g["skip_layers"], block_style=g["block_style"],
        )
        self.prompt_encoder = PromptEncoder3D(g["out_chans"], grid, g["img_size"], g["mask_in_chans"])
        self.mask_decoder = MaskDecoder3D(
            g["out_chans"], depth=g["decoder_depth"], num_heads=g["decoder_heads"], mlp_dim=g["decoder_mlp_dim"],
            num_multimask_outputs=g["num_multimask_outputs"], iou_head_depth=g["iou_head_depth"],
            iou_head_hidden_dim=g["iou_head_hidden_dim"],
        )

    @property
    def grid(self) -> int:
        return self.geometry["img_size"] // self.geometry["patch_size"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (X, Y, Z) block :meth:`encode` takes."""
        s = self.geometry["img_size"]
        return (s, s, s)

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        """(C, g, g, g): what :meth:`encode` returns per block."""
        return (self.geometry["out_chans"], self.grid, self.grid, self.grid)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image features (B, C, g, g, g) of a (B, 1, S, S, S) float block, S = ``img_size``
        (128 in the releases, giving C=384, g=8), already z-normalised as the releases expect."""
        s = self.geometry["img_size"]
        if x.ndim != 5 or tuple(x.shape[1:]) != (self.geometry["in_chans"], s, s, s):
            raise ValueError(f"expected a (B, {self.geometry['in_chans']}, {s}, {s}, {s}) block, got {tuple(x.shape)}")
        return self.image_encoder(x.float())

    def decode(self, features: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mask logits (B, S, S, S) on the input block from its features and point prompts.

        Parameters
        ----------
        features
            (B, C, g, g, g) from :meth:`encode`.
        points
            (B, k, 3) voxel indices in the input block along its axes 0, 1, 2; the official
            clicks are ``torch.argwhere`` rows of the (S, S, S) label block, in this order. The
            prompt encoder adds 0.5 (voxel centre) itself.
        labels
            (B, k) ints: 1 positive, 0 negative, -1 padding (ignored).

        Notes
        -----
        This is SAM-Med3D's ``sam_model_infer`` (``utils/infer_utils.py``, first click):
        the mask input is a zeros "previous low-resolution mask" of (B, 1, 4g, 4g, 4g)
        (``roi_image.shape // 4`` there), passed through ``mask_downscaling``, *not*
        ``masks=None``, so ``no_mask_embed`` is unused; one padding point (label -1) is
        appended as the official prompt encoder does without a box; the decoder's single-mask
        output is taken (``multimask_output=False``) and upsampled trilinearly,
        ``align_corners=False``, to the block size. Logits, not probabilities: the official
        mask is ``sigmoid > 0.5``, i.e. logits > 0.
        """
        b = features.shape[0]
        if points.ndim != 3 or points.shape[0] != b or points.shape[2] != 3 or labels.shape != points.shape[:2]:
            raise ValueError(
                f"expected points (B, k, 3) and labels (B, k) for B={b}, got {tuple(points.shape)} "
                f"and {tuple(labels.shape)}"
            )
        pe = self.prompt_encoder
        sparse = pe.embed_points(points.to(features.device), labels.to(features.device))
        low = 4 * self.grid
        dense = pe.embed_mask(features.new_zeros(1, 1, low, low, low), 1).expand(b, -1, -1, -1, -1)
        masks, _ = self.mask_decoder(features, pe.dense_pe(), sparse, dense)
        s = self.geometry["img_size"]
        return F.interpolate(masks[:, :1], size=(s, s, s), mode="trilinear", align_corners=False)[:, 0]

    def forward(self, x: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x), points, labels)``."""
        return self.decode(self.encode(x), points, labels)


# ---------------------------------------------------------------------------------------------
# building from a state dict and loading a release


def _nominal(nominal: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(nominal, str):
        if nominal not in ARCHS:
            raise ValueError(f"unknown SAM-Med3D geometry {nominal!r}; known: {sorted(ARCHS)}")
        return dict(ARCHS[nominal])
    return dict(ARCHS["vit_b_ori"], **nominal)


def build_sam3d(sd: Mapping[str, torch.Tensor], nominal: str | Mapping[str, Any]) -> Sam3D:
    """An untrained :class:`Sam3D` shaped like the state dict ``sd``.

    Widths, depths, patch and image size, window size and (where some blocks are windowed) the
    global blocks, attention-free leading blocks, the encoder's heads (from its relative-position
    tables' width), the prompt encoder's mask channels and the decoder's depth, MLP width,
    mask-token count and IoU head are read off the tensor shapes; the decoder's heads and the
    block style come from ``nominal`` (an :data:`ARCHS` key or a mapping of
    overrides), as do any parts ``sd`` lacks (the strict load then names those keys).
    """
    g = _nominal(nominal)

    def shape(key: str) -> tuple[int, ...] | None:
        t = sd.get(key)
        return tuple(t.shape) if isinstance(t, torch.Tensor) else None

    enc = "image_encoder."
    if (s := shape(enc + "patch_embed.proj.weight")) is not None and len(s) == 5:
        g.update(embed_dim=s[0], in_chans=s[1], patch_size=s[2])
    if (s := shape(enc + "pos_embed")) is not None and len(s) == 5:
        g["img_size"] = s[1] * g["patch_size"]
    grid = g["img_size"] // g["patch_size"]
    depth = block_count(sd, enc + "blocks.")
    if depth:
        g["depth"] = depth
        attends = [f"{enc}blocks.{i}.attn.qkv.weight" in sd for i in range(depth)]
        g["skip_layers"] = attends.index(True) if True in attends else depth
        lengths = {shape(f"{enc}blocks.{i}.attn.rel_pos_d") for i in range(depth) if attends[i]} - {None}
        windowed = sorted(s[0] for s in lengths if s[0] != 2 * grid - 1)
        g["window_size"] = (windowed[0] + 1) // 2 if windowed else 0
        if windowed:  # then the global blocks show too: their tables span the whole grid
            g["global_attn_indexes"] = tuple(
                i for i in range(depth)
                if attends[i] and (shape(f"{enc}blocks.{i}.attn.rel_pos_d") or (0,))[0] == 2 * grid - 1
            )
        if (s := shape(f"{enc}blocks.{depth - 1}.mlp.lin1.weight")) is not None:
            g["mlp_ratio"] = s[0] / g["embed_dim"]
        # a relative-position table is (length, head width): the encoder's heads are embed / width
        widths = {shape(f"{enc}blocks.{i}.attn.rel_pos_d")[1] for i in range(depth)
                  if attends[i] and shape(f"{enc}blocks.{i}.attn.rel_pos_d") is not None}
        if len(widths) == 1 and g["embed_dim"] % next(iter(widths)) == 0:
            g["num_heads"] = g["embed_dim"] // next(iter(widths))
    if (s := shape(enc + "neck.0.weight")) is not None:
        g["out_chans"] = s[0]
    if (s := shape("prompt_encoder.mask_downscaling.3.weight")) is not None:
        g["mask_in_chans"] = s[0]
    dec = "mask_decoder."
    if n := block_count(sd, dec + "transformer.layers."):
        g["decoder_depth"] = n
    if (s := shape(dec + "transformer.layers.0.mlp.lin1.weight")) is not None:
        g["decoder_mlp_dim"] = s[0]
    if (s := shape(dec + "mask_tokens.weight")) is not None:
        g["num_multimask_outputs"] = s[0] - 1
    if n := block_count(sd, dec + "iou_prediction_head.layers."):
        g["iou_head_depth"] = n
        if n > 1 and (s := shape(dec + "iou_prediction_head.layers.0.weight")) is not None:
            g["iou_head_hidden_dim"] = s[0]
    return Sam3D(**g)


_BARE_ENCODER = ("blocks.", "patch_embed.", "neck.", "pos_embed")


def _state_dict(ckpt: Any, container: str | None, path: Path, key: str) -> dict[str, torch.Tensor]:
    """The flat tensor mapping of a checkpoint, unwrapped from ``container``, ``module.`` cut."""
    ckpt = unwrap_state_dict(ckpt, container, path, key)
    # nn.DataParallel training saves every key under module.
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def load_sam3d(
    path: str | Path,
    key: str,
    nominal: str | Mapping[str, Any],
    container: str | None = "model_state_dict",
    *,
    decoder_from: str | Path | Callable[[], Path] | None = None,
) -> Sam3D:
    """A :class:`Sam3D` in eval mode with the weights of ``path``, loaded strictly.

    Parameters
    ----------
    path
        ``torch.save`` file: ``{container: state_dict, ...}`` (the releases' layout) or a flat
        state dict. Read with ``weights_only=True``, ``argparse.Namespace`` allowed (torch
        itself allows ``collections.Counter`` and ``torch.device``: the three classes FastSAM3D's
        release pickles besides tensors); any other class raises :class:`ModelError` with the
        command to re-save the weights alone. Keys may carry a ``module.`` prefix.
    key
        The model's registry name, used in messages.
    nominal
        :data:`ARCHS` key or mapping, for what the shapes do not show (see :func:`build_sam3d`).
    container
        The checkpoint entry holding the state dict.
    decoder_from
        For a file holding only an image encoder (keys ``blocks.``, ``patch_embed.``, ``neck.``,
        ``pos_embed``: what FastSAM3D's distillation saves), a SAM-Med3D checkpoint
        (``sam_med3d_turbo.pth``) whose prompt encoder and mask decoder complete the model, as
        FastSAM3D's evaluation does; or a function returning one, called only for such a file.
        Without it such a file raises :class:`ModelError`.

    Raises
    ------
    ModelError
        Unreadable file, missing, unexpected or misshapen keys (named), a bare encoder without
        ``decoder_from``.
    """
    path = Path(path)
    sd = _state_dict(read_weights(path, key, container), container, path, key)
    if not any(k.startswith("image_encoder.") for k in sd) and any(k.startswith(_BARE_ENCODER) for k in sd):
        if decoder_from is None:
            raise ModelError(
                f"weights {path} for {key!r} hold only an image encoder (keys {', '.join(sorted(sd)[:3])}, ...), "
                f"not a full model: FastSAM3D's prompt encoder and mask decoder are SAM-Med3D's, so pass "
                f"SAM-Med3D's checkpoint (sam_med3d_turbo.pth) as decoder_from"
            )
        other = Path(decoder_from() if callable(decoder_from) else decoder_from)
        rest = _state_dict(read_weights(other, key, container), container, other, key)
        sd = {"image_encoder." + k: v for k, v in sd.items()} | {
            k: v for k, v in rest.items() if k.startswith(("prompt_encoder.", "mask_decoder."))
        }
    model = build_sam3d(sd, nominal)
    load_strict(model, sd, key, path)
    return model.eval()
