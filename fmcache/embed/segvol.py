"""SegVol (Du et al., NeurIPS 2024), a promptable volumetric CT segmenter, in plain torch.

SegVol pairs a MONAI ``ViT`` image encoder (input 32 x 256 x 256, patches 4 x 16 x 16, so an
8 x 16 x 16 token grid of width 768) with a 3D version of SAM's prompt encoder and two-way
mask decoder, and a CLIP text tower (``CLIPTextModel(CLIPTextConfig())`` + ``dim_align``
Linear(512, 768)) whose embedding is both a sparse prompt token and a per-voxel similarity
added to the mask logits. Inference is "zoom-out-zoom-in": the whole volume resized to the
encoder's input gives a coarse prediction; its foreground box, widened to at least one
window, is then segmented at full resolution by sliding windows and written over it.

Axes. fmcache volumes are (X, Y, Z) arrays as nibabel reads them (Z the slice axis). SegVol's
transforms swap the first and last spatial axes of such an array (``np.swapaxes(a, -1, -3)``,
its ``DimTranspose``), so its network works in (D, H, W) = (Z, Y, X): its 32-slice depth is
Z and the input block is (X, Y, Z) = (256, 256, 32). :class:`SegVol` applies this swap
itself; every argument and result here is in (x, y, z) voxel order.

Tensor names equal the released files once their wrapper prefix is removed: ``model.`` in
the Hugging Face ``pytorch_model.bin`` (``SegVolModel.model``), ``module.`` under ``'model'``
in the GitHub training checkpoint (DataParallel). Two differences between the libraries the
release was saved with (MONAI 0.9, transformers 4.18) and current ones are handled by
:data:`RELEASE_RENAMES` and :data:`RELEASE_DROPPED`; current MONAI's per-block
``norm_cross_attn``, absent from the release and unused without cross-attention, is removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmcache.embed.loaders.local_checkpoint import load_strict, read_weights, unwrap_state_dict
from fmcache.embed.sam3d import MLP, TwoWayTransformer3D
from fmcache.embed.tiny_vit import LayerNorm2d
from fmcache.errors import ModelError

# The sentence SegVol wraps a category name in before tokenising it (its TextEncoder).
TEXT_TEMPLATE = "A computerized tomography of a {}."

# Release key prefix (left) -> name in this module (right), applied in order. transformers
# 4.18's CLIPTextModel nested its layers under ``text_model``; current versions do not.
RELEASE_RENAMES: tuple[tuple[str, str], ...] = (
    ("text_encoder.clip_text_model.text_model.", "text_encoder.clip_text_model."),
)
# Release tensors with no counterpart here: CLIP's position ids were a persistent buffer in
# transformers 4.18 and are now rebuilt by the model; they must be 0..n-1 to be dropped.
RELEASE_DROPPED: tuple[str, ...] = ("text_encoder.clip_text_model.text_model.embeddings.position_ids",)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class SegVolConfig:
    """Sizes of a SegVol network; the defaults are the released model's.

    ``spatial_size`` and ``patch_size`` are in SegVol's internal (D, H, W) order. ``text`` holds
    overrides of :class:`transformers.CLIPTextConfig` (the release used its defaults);
    ``with_text=False`` builds no text tower.
    """

    spatial_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    mask_in_chans: int = 16
    with_text: bool = True
    text: Mapping[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int, int]:
        """The token grid (D, H, W)."""
        return tuple(s // p for s, p in zip(self.spatial_size, self.patch_size))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# axis convention


def to_internal(x: torch.Tensor) -> torch.Tensor:
    """(..., X, Y, Z) -> SegVol's (..., D, H, W) = (..., Z, Y, X); the swap is its own inverse."""
    return x.transpose(-1, -3)


def points_to_internal(points: torch.Tensor) -> torch.Tensor:
    """Point coordinates (..., 3) in (x, y, z) -> (d, h, w) = (z, y, x)."""
    return points.flip(-1)


def boxes_to_internal(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (..., 6) ``(x0, y0, z0, x1, y1, z1)`` -> ``(d0, h0, w0, d1, h1, w1)``."""
    return boxes[..., [2, 1, 0, 5, 4, 3]]


# --------------------------------------------------------------------------------------------
# network parts (module names follow the release's tensor names)


class _FourierPositions(nn.Module):
    """SAM's random-Fourier positional encoding, extended to three coordinates."""

    def __init__(self, num_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_feats))

    def _encode(self, unit: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * ((2 * unit - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def grid(self, size: Sequence[int]) -> torch.Tensor:
        """Encoding of each cell of a (D, H, W) grid, shape (C, D, H, W).

        The coordinate triple of cell (i, j, k) is (j, i, k) normalised by (H, D, W): SegVol kept
        SAM's 2D habit of putting the second grid axis first, and its weights were trained so.
        """
        n0, n1, n2 = (int(s) for s in size)
        dev = self.positional_encoding_gaussian_matrix.device
        i = (torch.arange(n0, device=dev, dtype=torch.float32) + 0.5) / n0
        j = (torch.arange(n1, device=dev, dtype=torch.float32) + 0.5) / n1
        k = (torch.arange(n2, device=dev, dtype=torch.float32) + 0.5) / n2
        ii, jj, kk = torch.meshgrid(i, j, k, indexing="ij")
        return self._encode(torch.stack([jj, ii, kk], dim=-1)).permute(3, 0, 1, 2)

    def coords(self, points: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Encoding of (B, N, 3) internal coordinates in a (D, H, W) block.

        SegVol divides the first coordinate by H and the second by D (again SAM's 2D order);
        reproduced because the released weights expect it.
        """
        scale = torch.tensor([size[1], size[0], size[2]], dtype=torch.float32, device=points.device)
        return self._encode(points.float() / scale)


class PromptEncoder3D(nn.Module):
    """Sparse embeddings of points, box corners and a text embedding; a constant dense one."""

    def __init__(self, cfg: SegVolConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.embed_dim = dim
        self.grid_size = cfg.grid
        self.input_size = cfg.spatial_size
        self.pe_layer = _FourierPositions(dim // 2)
        # 0/1: negative/positive point, 2/3: box corners
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        # SegVol never feeds a mask prompt; this (2D) branch exists only because the release
        # holds its tensors
        c = cfg.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2), LayerNorm2d(c // 4), nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2), LayerNorm2d(c), nn.GELU(),
            nn.Conv2d(c, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        return self.pe_layer.grid(self.grid_size).unsqueeze(0)

    def forward(self, points, labels, boxes, text_embedding, batch: int):
        parts = []
        if points is not None:
            pts = points.float() + 0.5  # voxel centres
            lab = labels.to(pts.dtype)
            if boxes is None:  # SAM pads a not-a-point token when no box closes the sequence
                pts = torch.cat([pts, pts.new_zeros(pts.shape[0], 1, 3)], dim=1)
                lab = torch.cat([lab, -lab.new_ones(lab.shape[0], 1)], dim=1)
            emb = self.pe_layer.coords(pts, self.input_size)
            emb = torch.where((lab == -1)[..., None], self.not_a_point_embed.weight, emb)
            emb = emb + (lab == 0)[..., None] * self.point_embeddings[0].weight
            emb = emb + (lab == 1)[..., None] * self.point_embeddings[1].weight
            parts.append(emb)
        if boxes is not None:
            corners = (boxes.float() + 0.5).reshape(-1, 2, 3)
            emb = self.pe_layer.coords(corners, self.input_size)
            emb = emb + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])[None]
            parts.append(emb)
        if text_embedding is not None:
            parts.append(text_embedding[:, None])
        dev = self.no_mask_embed.weight.device
        sparse = torch.cat(parts, dim=1) if parts else torch.empty(batch, 0, self.embed_dim, device=dev)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.grid_size)
        return sparse, dense


class MaskDecoder3D(nn.Module):
    """SAM's mask decoder in 3D, plus SegVol's text-to-voxel similarity term."""

    def __init__(self, cfg: SegVolConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer3D(cfg.decoder_depth, dim, cfg.decoder_heads, cfg.decoder_mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        up = tuple(2 * g for g in cfg.grid)
        # SegVol normalises over channels and the whole doubled grid, so this LayerNorm's
        # affine tensors have the grid's shape
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            nn.LayerNorm((dim // 4, *up)),
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, cfg.iou_head_hidden_dim, self.num_mask_tokens, 3)
        self.txt_align_upscaled_embedding = nn.Linear(dim, dim // 8)

    def forward(self, image, image_pe, sparse, dense, text_embedding):
        """Low-resolution logits of the single-mask output, (B, 1, 4gd, 4gh, 4gw)."""
        out = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = image if image.shape[0] == tokens.shape[0] else image.repeat_interleave(tokens.shape[0], 0)
        src = src + dense
        pos = image_pe.repeat_interleave(tokens.shape[0], 0)
        b, c, d, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens = hs[:, 1:1 + self.num_mask_tokens]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, d, h, w))
        b, c, d, h, w = up.shape
        flat = up.reshape(b, c, d * h * w)
        # only the first (single-mask) output is used in SegVol's inference
        hyper = self.output_hypernetworks_mlps[0](mask_tokens[:, 0])
        masks = (hyper[:, None] @ flat).reshape(b, 1, d, h, w)
        if text_embedding is not None:
            sim = self.txt_align_upscaled_embedding(text_embedding)[:, None] @ flat
            masks = masks + sim.reshape(b, 1, d, h, w)
        return masks


class TextTower(nn.Module):
    """CLIP's text transformer, its pooled output mapped to the decoder width (``dim_align``).

    Pooling follows the transformers release SegVol was trained with: its default config had
    ``eos_token_id=2``, which selects the position of the largest token id (CLIP's end token).
    """

    def __init__(self, cfg: SegVolConfig):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        kwargs = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, **dict(cfg.text)}
        self.clip_text_model = CLIPTextModel(CLIPTextConfig(**kwargs))
        self.dim_align = nn.Linear(self.clip_text_model.config.hidden_size, cfg.hidden_size)
        self.tokenizer = None

    def forward(self, names: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ModelError(
                "SegVol text prompts need the CLIP tokenizer files of the release (tokenizer.json, or "
                "vocab.json and merges.txt); pass the release folder to load_segvol or call "
                "model.attach_tokenizer(folder)"
            )
        tok = self.tokenizer([TEXT_TEMPLATE.format(n) for n in names], padding=True, return_tensors="pt")
        dev = self.dim_align.weight.device
        out = self.clip_text_model(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev))
        return self.dim_align(out.pooler_output)


def load_tokenizer(folder: str | Path):
    """The CLIP tokenizer saved in ``folder``; :class:`ModelError` when its files are absent."""
    folder = Path(folder)
    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        raise ModelError(
            f"no CLIP tokenizer in {folder}: SegVol text prompts need tokenizer.json, or vocab.json and "
            "merges.txt, from the release folder"
        )
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


# --------------------------------------------------------------------------------------------
# the model


def _monai_vit(cfg: SegVolConfig) -> nn.Module:
    from monai.networks.nets import ViT

    vit = ViT(
        in_channels=1, img_size=cfg.spatial_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        mlp_dim=cfg.mlp_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads, proj_type="perceptron",
        classification=False, dropout_rate=0.0,
    )
    for block in vit.blocks:
        # MONAI >= 1.4 creates this norm even without cross-attention, where it is never used;
        # MONAI 0.9, which saved the release, had none
        if hasattr(block, "norm_cross_attn") and not getattr(block, "with_cross_attention", False):
            block.norm_cross_attn = nn.Identity()
    return vit


class SegVol(nn.Module):
    """SegVol's network with an (X, Y, Z) interface.

    Parameters
    ----------
    config
        Network sizes; the released model's by default.
    """

    def __init__(self, config: SegVolConfig | None = None):
        super().__init__()
        self.config = cfg = config or SegVolConfig()
        self.image_encoder = _monai_vit(cfg)
        self.prompt_encoder = PromptEncoder3D(cfg)
        self.mask_decoder = MaskDecoder3D(cfg)
        self.text_encoder = TextTower(cfg) if cfg.with_text else None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (X, Y, Z) block the encoder takes: SegVol's (D, H, W) reversed."""
        d, h, w = self.config.spatial_size
        return (w, h, d)

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        """(C, gx, gy, gz): what :meth:`encode` returns per block."""
        gd, gh, gw = self.config.grid
        return (self.config.hidden_size, gw, gh, gd)

    @property
    def has_text(self) -> bool:
        return self.text_encoder is not None

    def attach_tokenizer(self, tokenizer_or_folder: Any) -> None:
        """Give the text tower its tokenizer (an instance, or a folder with its files)."""
        if self.text_encoder is None:
            raise ModelError("this SegVol was built without its text tower; text prompts are unavailable")
        if isinstance(tokenizer_or_folder, (str, Path)):
            tokenizer_or_folder = load_tokenizer(tokenizer_or_folder)
        self.text_encoder.tokenizer = tokenizer_or_folder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image features of intensity-normalised blocks.

        Parameters
        ----------
        x
            float (B, 1, *input_shape), in (X, Y, Z) order.

        Returns
        -------
        (B, C, gx, gy, gz) encoder tokens on their grid, in (X, Y, Z) order (gz = Z / 4).
        """
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"SegVol encodes blocks of shape {self.input_shape}, got {tuple(x.shape[2:])}")
        tokens, _ = self.image_encoder(to_internal(x))
        b = x.shape[0]
        grid = tokens.transpose(1, 2).reshape(b, tokens.shape[-1], *self.config.grid)
        return to_internal(grid).contiguous()

    def decode(
        self,
        features: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        text: Sequence[str] | str | None = None,
    ) -> torch.Tensor:
        """Mask logits for prompts on encoded blocks.

        Parameters
        ----------
        features
            :meth:`encode`'s output (B, C, gx, gy, gz).
        points, labels
            (B, k, 3) voxel indices (x, y, z) in the block, and (B, k) labels: 1 foreground,
            0 background, -1 ignored.
        boxes
            (B, 6) ``(x0, y0, z0, x1, y1, z1)``, inclusive voxel indices in the block.
        text
            One category name per item (a single string is used for all), e.g. ``"liver"``.

        Returns
        -------
        float32 logits (B, *input_shape).
        """
        if points is None and boxes is None and text is None:
            raise ValueError("SegVol needs at least one prompt (points, a box or text)")
        if (points is None) != (labels is None):
            raise ValueError("points and labels go together")
        b = features.shape[0]
        text_emb = None
        if text is not None:
            if self.text_encoder is None:
                raise ModelError(
                    "this SegVol has no text tower (its checkpoint held none); text prompts are unavailable"
                )
            names = [text] * b if isinstance(text, str) else list(text)
            if len(names) != b:
                raise ValueError(f"{len(names)} text prompts for {b} feature blocks")
            text_emb = self.text_encoder(names)
        p = points_to_internal(points.float()) if points is not None else None
        bx = boxes_to_internal(boxes.float()) if boxes is not None else None
        sparse, dense = self.prompt_encoder(p, labels, bx, text_emb, b)
        low = self.mask_decoder(to_internal(features), self.prompt_encoder.dense_pe(), sparse, dense, text_emb)
        logits = F.interpolate(low, size=self.config.spatial_size, mode="trilinear", align_corners=False)
        return to_internal(logits[:, 0]).float().contiguous()

    def forward(self, x, points=None, labels=None, boxes=None, text=None) -> torch.Tensor:
        """``decode(encode(x), points, labels, boxes, text)``."""
        return self.decode(self.encode(x), points, labels, boxes, text)


# --------------------------------------------------------------------------------------------
# checkpoints


def from_release_keys(sd: Mapping[str, torch.Tensor], path: Path | str = "<state dict>") -> dict[str, torch.Tensor]:
    """A released state dict (wrapper prefix removed) renamed to this module's names."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in RELEASE_DROPPED:
            if not torch.equal(v.reshape(-1).long(), torch.arange(v.numel())):
                raise ModelError(f"weights {path}: {k} is not 0..{v.numel() - 1}; this is not a SegVol release")
            continue
        for old, new in RELEASE_RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def to_release_keys(model: SegVol, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """``model``'s tensors under the names of the Hugging Face ``pytorch_model.bin``."""
    sd: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        for old, new in RELEASE_RENAMES:
            if k.startswith(new):
                k = old + k[len(new):]
                break
        sd[prefix + k] = v
    if model.text_encoder is not None:
        n = model.text_encoder.clip_text_model.config.max_position_embeddings
        sd[prefix + RELEASE_DROPPED[0]] = torch.arange(n)[None]
    return sd


def release_state_dict(ckpt: Any, path: Path | str = "<checkpoint>", key: str = "segvol") -> dict[str, torch.Tensor]:
    """The network's tensors of a SegVol checkpoint, in this module's names.

    Accepts the Hugging Face file (flat, ``model.``-prefixed), the GitHub training checkpoint
    (``{'model': {'module.'-prefixed}, 'optimizer', 'epoch', 'scheduler'}``), and a state dict
    already without prefix.
    """
    sd = dict(unwrap_state_dict(ckpt, "model", Path(path), key))
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return from_release_keys(sd, path)


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"no SegVol weights in {folder} (expected model.safetensors or pytorch_model.bin)")


def load_segvol(
    path_or_folder: str | Path,
    key: str = "segvol",
    *,
    config: SegVolConfig | None = None,
    tokenizer: str | Path | None = None,
) -> SegVol:
    """A SegVol network strictly loaded from a released checkpoint, in eval mode.

    Parameters
    ----------
    path_or_folder
        The Hugging Face snapshot folder (``pytorch_model.bin`` or ``model.safetensors``) or a
        weights file (that file, or the GitHub ``{'model': ...}`` checkpoint).
    key
        The registry name used in error messages.
    config
        Network sizes (default: the release's). ``with_text`` is decided by the file: without
        ``text_encoder.*`` tensors the model is built without a text tower.
    tokenizer
        Folder with the CLIP tokenizer files; by default the weights' folder. Text prompts work
        only when these files are found.
    """
    p = Path(path_or_folder).expanduser()
    weights = _weights_file(p) if p.is_dir() else p
    if not weights.is_file():
        raise ModelError(f"SegVol weights {weights} do not exist")
    sd = release_state_dict(read_weights(weights, key, "model"), weights, key)
    cfg = config or SegVolConfig()
    has_text = any(k.startswith("text_encoder.") for k in sd)
    if cfg.with_text != has_text:
        cfg = replace(cfg, with_text=has_text)
    model = SegVol(cfg)
    load_strict(model, sd, key, weights)
    model.eval()
    if has_text:
        folder = Path(tokenizer).expanduser() if tokenizer is not None else weights.parent
        if tokenizer is not None or any((folder / f).is_file() for f in TOKENIZER_FILES):
            model.attach_tokenizer(folder)
    return model


# --------------------------------------------------------------------------------------------
# intensity


def normalise_intensity(array: np.ndarray) -> np.ndarray:
    """SegVol's CT intensity recipe, float32 in [0, 1].

    Voxels above the volume's mean are the foreground; the volume is clipped to their 0.05 and
    99.95 percentiles, z-scored with their mean and standard deviation (before clipping), then
    shifted and scaled to [0, 1] (SegVol's ForegroundNormalization, then MinMaxNormalization).
    """
    a = np.asarray(array, dtype=np.float64)
    fg = a[a > a.mean()]
    if fg.size == 0:  # a constant volume has no voxel above its mean
        return np.zeros(a.shape, np.float32)
    lo, hi = np.percentile(fg, 0.05), np.percentile(fg, 99.95)
    z = (np.clip(a, lo, hi) - fg.mean()) / max(fg.std(), 1e-8)
    z = z - z.min()
    return (z / max(z.max(), 1e-8)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# zoom-out-zoom-in


def _as_volume(volume: Any, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    if t.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def zoom_out_input(volume: Any, shape: Sequence[int] = (256, 256, 32)) -> torch.Tensor:
    """The whole volume resized to the encoder's block, (1, 1, *shape).

    SegVol resizes with ``nearest-exact`` (its ``Resized(mode='nearest-exact')``).
    """
    v = _as_volume(volume)
    return F.interpolate(v[None, None], size=tuple(shape), mode="nearest-exact")


def _source_index(n_in: int, n_out: int) -> torch.Tensor:
    """For each of ``n_out`` resized voxels, the voxel of ``n_in`` it copies (nearest-exact)."""
    src = F.interpolate(torch.arange(n_in, dtype=torch.float32)[None, None], size=n_out, mode="nearest-exact")
    return src[0, 0].round().long()


def _resized_coordinate(p: float, n_in: int, n_out: int) -> int:
    src = _source_index(n_in, n_out)
    gap = (src - int(round(p))).abs()
    cand = torch.nonzero(gap == gap.min())[:, 0].float()
    # several resized voxels copy the same source when upsampling: take the one whose centre
    # is nearest the source voxel's centre
    centre = (p + 0.5) * n_out / n_in - 0.5
    return int(cand[(cand - centre).abs().argmin()])


def points_to_block(points: Any, volume_shape: Sequence[int], block_shape: Sequence[int]) -> torch.Tensor:
    """Voxel indices (k, 3) in the volume -> indices in its nearest-exact resize to the block.

    A point maps to the resized voxel that copies it (the nearest one when none does).
    """
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, 3)
    out = torch.empty(pts.shape, dtype=torch.float32)
    for i, p in enumerate(pts.tolist()):
        for a in range(3):
            out[i, a] = _resized_coordinate(p[a], int(volume_shape[a]), int(block_shape[a]))
    return out


def box_to_block(box: Any, volume_shape: Sequence[int], block_shape: Sequence[int]) -> torch.Tensor:
    """An inclusive box (6,) in the volume -> the box of its cube resized to the block.

    SegVol draws a zoom-out box around the resized label; the resized cube's extent along an axis
    is the resized voxels whose source lies in the box. A box thinner than a resized voxel keeps
    its corners' nearest voxels.
    """
    b = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(6)]
    lo, hi = [], []
    for a in range(3):
        n_in, n_out = int(volume_shape[a]), int(block_shape[a])
        src = _source_index(n_in, n_out)
        inside = torch.nonzero((src >= b[a]) & (src <= b[a + 3]))[:, 0]
        if inside.numel():
            lo.append(int(inside.min()))
            hi.append(int(inside.max()))
        else:
            lo.append(_resized_coordinate(b[a], n_in, n_out))
            hi.append(_resized_coordinate(b[a + 3], n_in, n_out))
    return torch.tensor(lo + hi, dtype=torch.float32)


@dataclass(frozen=True)
class _Prompts:
    points: torch.Tensor | None  # (k, 3) volume voxels
    labels: torch.Tensor | None  # (k,)
    box: torch.Tensor | None  # (6,)
    text: str | None


def _prompts(points, labels, box, text) -> _Prompts:
    if points is None and box is None and text is None:
        raise ValueError("SegVol needs at least one prompt (points, a box or text)")
    if (points is None) != (labels is None):
        raise ValueError("points and labels go together")
    pts = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 3) if points is not None else None
    lab = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(-1) if labels is not None else None
    bx = torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(6) if box is not None else None
    return _Prompts(pts, lab, bx, text)


def zoom_out_logits(
    model: SegVol,
    features: torch.Tensor,
    volume_shape: Sequence[int],
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    text: str | None = None,
) -> torch.Tensor:
    """The zoom-out prediction, (X, Y, Z) logits on the volume.

    Parameters
    ----------
    features
        ``model.encode(zoom_out_input(volume, model.input_shape))``, (1, C, gx, gy, gz).
    volume_shape
        The volume's (X, Y, Z) shape.
    points, labels, box, text
        Prompts in volume voxel indices (points (k, 3) and labels (k,), box (6,) inclusive).

    The prompts are mapped into the resized grid, the block's logits resized back with
    ``nearest`` as SegVol does.
    """
    pr = _prompts(points, labels, box, text)
    block = model.input_shape
    dev = features.device
    pts = points_to_block(pr.points, volume_shape, block)[None].to(dev) if pr.points is not None else None
    lab = pr.labels[None].to(dev) if pr.labels is not None else None
    bx = box_to_block(pr.box, volume_shape, block)[None].to(dev) if pr.box is not None else None
    with torch.no_grad():
        logits = model.decode(features, pts, lab, bx, [pr.text] if pr.text is not None else None)
    return F.interpolate(logits[None], size=tuple(int(s) for s in volume_shape), mode="nearest")[0, 0]


def zoom_in_roi(global_logits: torch.Tensor, window: Sequence[int]) -> tuple[slice, slice, slice] | None:
    """SegVol's zoom-in region: the zoom-out foreground's box, widened towards one window.

    Along each axis the box of voxels with ``sigmoid > 0.5`` is extended by half the shortfall
    from the window size on each side (integer halves), clipped at the volume's start and at its
    size (SegVol's bound, so the last index it can reach is the last voxel). ``None`` when no
    voxel is foreground.
    """
    fg = torch.nonzero(torch.sigmoid(global_logits) > 0.5)
    if fg.shape[0] == 0:
        return None
    out = []
    for a in range(3):
        lo, hi = int(fg[:, a].min()), int(fg[:, a].max())
        pad = max(0, int(window[a]) - (hi - lo + 1)) // 2
        lo, hi = max(0, lo - pad), min(int(global_logits.shape[a]), hi + pad)
        out.append(slice(lo, hi + 1))
    return tuple(out)  # type: ignore[return-value]


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Inclusive box of ``mask > 0``, or all -1 when empty (SegVol's ``generate_box``)."""
    nz = torch.nonzero(mask > 0)
    if nz.shape[0] == 0:
        return torch.full((6,), -1.0)
    return torch.cat([nz.min(0).values, nz.max(0).values]).float().cpu()


def _window_points(prompt_map: torch.Tensor, generator: torch.Generator, extra: int = 4):
    """SegVol's ``select_points`` on a window of the positive-point map.

    One random positive voxel, ``extra`` more drawn without replacement (possibly repeating the
    first), padded with ignored points to ``extra + 1``; a window without one gets a single
    ignored point.
    """
    pos = torch.nonzero(prompt_map > 0.9).float().cpu()
    if pos.shape[0] == 0:
        return torch.full((1, 3), -1.0), torch.full((1,), -1.0)
    first = torch.randint(pos.shape[0], (1,), generator=generator)
    more = torch.randperm(pos.shape[0], generator=generator)[:extra]
    pts = torch.cat([pos[first], pos[more]])
    lab = torch.ones(pts.shape[0])
    missing = extra + 1 - pts.shape[0]
    if missing > 0:
        pts = torch.cat([pts, torch.full((missing, 3), -1.0)])
        lab = torch.cat([lab, torch.full((missing,), -1.0)])
    return pts, lab


def _prompt_map(pr: _Prompts, volume_shape: Sequence[int], block: Sequence[int]) -> torch.Tensor | None:
    """SegVol's "prompt reflection": the zoom-out prompt drawn on the resized grid (the cube of
    the box, or the positive points) and resized to the volume with ``nearest``."""
    if pr.points is not None:
        grid = torch.zeros(tuple(block))
        pts = points_to_block(pr.points, volume_shape, block).long()
        pos = pts[pr.labels == 1]
        grid[pos[:, 0], pos[:, 1], pos[:, 2]] = 1
    elif pr.box is not None:
        grid = torch.zeros(tuple(block))
        b = box_to_block(pr.box, volume_shape, block).long().tolist()
        grid[b[0]:b[3] + 1, b[1]:b[4] + 1, b[2]:b[5] + 1] = 1
    else:
        return None
    return F.interpolate(grid[None, None], size=tuple(int(s) for s in volume_shape), mode="nearest")[0, 0]


def zoom_in(
    model: SegVol,
    volume: Any,
    global_logits: torch.Tensor,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    text: str | None = None,
    *,
    overlap: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The zoom-in pass: sliding windows over :func:`zoom_in_roi` at full resolution.

    Each window is encoded afresh. Its prompts follow SegVol's ``sliding_window_inference``:
    with points (a box given too is then used only at zoom-out, SegVol allowing one of the two
    here), up to five of the positive points that fall in the window plus the box of the
    zoom-out foreground in it; with a box only, the prompt box clipped to the window when the
    region is a single window, else the zoom-out foreground's box in the window; text is passed
    to every window. The windows' mean logits replace the region in a copy of ``global_logits``.
    The prompts are read off SegVol's "prompt reflection" (:func:`_prompt_map`); where the region
    is smaller than a window, the map is padded like the image (SegVol padded only the zoom-out
    prediction, shifting the map in that case).

    Parameters
    ----------
    volume
        The intensity-normalised (X, Y, Z) volume.
    global_logits
        :func:`zoom_out_logits` for the same volume and prompts.
    generator
        Draws the window points (SegVol draws them at random); seeded 0 when not given.

    Returns
    -------
    (X, Y, Z) float32 logits.
    """
    from monai.inferers import sliding_window_inference

    pr = _prompts(points, labels, box, text)
    dev = _device(model)
    vol = _as_volume(volume, dev)
    merged = global_logits.detach().to(dev, torch.float32).clone()
    roi = zoom_in_roi(merged, model.input_shape)
    if roi is None:  # nothing found at zoom-out: SegVol keeps the zoom-out prediction
        return merged
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    window = model.input_shape
    crop = vol[roi]
    preds = (torch.sigmoid(merged[roi]) > 0.5).float()
    pmap = _prompt_map(pr, vol.shape, window)
    pmap = pmap.to(dev)[roi] if pmap is not None else torch.zeros_like(preds)
    single = all(crop.shape[a] <= window[a] for a in range(3))

    def predict(win: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        win_preds, win_map = condition[0, 0], condition[0, 1]
        pts = lab = bx = None
        if pr.points is not None:
            pts, lab = _window_points(win_map, gen)
            pts, lab = pts[None].to(dev), lab[None].to(dev)
            bx = _mask_box(win_preds)[None].to(dev)
        elif pr.box is not None:
            bx = _mask_box(win_map if single else win_preds)[None].to(dev)
        txt = [pr.text] if pr.text is not None else None
        return model(win, pts, lab, bx, txt)[:, None]

    with torch.no_grad():
        out = sliding_window_inference(
            crop[None, None], window, 1, predict, overlap, mode="constant",
            condition=torch.stack([preds, pmap])[None],
        )
    merged[roi] = out[0, 0].to(merged.dtype)
    return merged


_zoom_in = zoom_in  # reachable from infer, whose flag of the same name shadows it


def infer(
    model: SegVol,
    volume: Any,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    text: str | None = None,
    *,
    zoom_in: bool = True,
    overlap: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SegVol's zoom-out-zoom-in inference on one intensity-normalised (X, Y, Z) volume.

    ``zoom_out_logits(model, model.encode(zoom_out_input(volume)), ...)``, then, when
    ``zoom_in``, :func:`zoom_in` on it. Returns (X, Y, Z) float32 logits; ``> 0`` is the mask.
    """
    dev = _device(model)
    vol = _as_volume(volume, dev)
    with torch.no_grad():
        feats = model.encode(zoom_out_input(vol, model.input_shape))
    glob = zoom_out_logits(model, feats, vol.shape, points, labels, box, text)
    if not zoom_in:
        return glob
    return _zoom_in(model, vol, glob, points, labels, box, text, overlap=overlap, generator=generator)
