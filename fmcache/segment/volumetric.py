"""3D segmentation models (SAM-Med3D, FastSAM3D, SegVol): a volume in, blocks encoded once,
every prompt decoded from the cached features and brought back onto the volume's voxels.

A model's input rule (:class:`fmcache.segment.models.VolumeRule`) decides the blocks:

* SAM-Med3D and FastSAM3D read a 128³ block at 1.5 mm around the object, as their inference
  does: one block per class present in the label volume, centred on the class's bounding
  box (in the original voxels), z-scored over its voxels above 0. A class absent from the
  volume gets no block (nor a prompt).
* SegVol reads the whole volume, intensity-normalised and resized to 32 x 256 x 256: one block
  for every class (its zoom-out pass), decoded with SegVol's own prompt mapping. Its zoom-in
  pass (``fmcache segment --zoom-in``) encodes windows around each zoom-out prediction at full
  resolution afresh, per prompt: those features depend on the prompt, so the cache cannot hold
  them, and a zoom-in sweep costs an encoder pass per window.

Blocks, their encoder features and their :class:`~fmcache.segment.volume_input.VolumeGeometry`
are what the cache stores per volume; :func:`decode_blocks` needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmcache.embed.weights import HUB_PREFIX, hub_file, hub_snapshot, hub_weights_id, local_path, sha256_file
from fmcache.errors import ModelError
from fmcache.segment.models import VolumeSpec, get_volume_model
from fmcache.segment.volume_input import (
    VolumeGeometry,
    resize_to_model_input,
    to_block_coords,
    to_model_input,
    to_original_grid,
)
from fmcache.segment.volume_intensity import apply_recipe

# SegVol's zoom-out resize of the image (its inference's Resize mode)
SEGVOL_RESIZE_MODE = "nearest-exact"


@dataclass(frozen=True)
class TextPrompt:
    """SegVol's text prompt: a class name, which its text tower reads in SegVol's template
    ("A computerized tomography of a {}."); ``is_absent`` as for a spatial prompt."""

    text: str
    is_absent: bool = False
    points = point_labels = box = None


@dataclass
class VolumeModel:
    """A loaded 3D segmentation model: its entry, the network (``encode`` / ``decode``), weights id."""

    spec: VolumeSpec
    net: Any
    weights_id: str
    weights_sha256: str | None
    device: str = "cpu"

    @property
    def key(self) -> str:
        return self.spec.key


def load_volume_model(key: str | VolumeSpec, weights: str | None = None, device: str = "cpu") -> VolumeModel:
    """Load a 3D segmentation model strictly from its released file.

    Parameters
    ----------
    key
        Entry of :data:`fmcache.segment.models.VOLUME_MODELS` or a :class:`VolumeSpec`.
    weights
        A local file (SAM-Med3D, FastSAM3D) or folder / ``pytorch_model.bin`` (SegVol) instead of
        the entry's source.
    """
    spec = key if isinstance(key, VolumeSpec) else get_volume_model(key)
    path, weights_id = _weights_path(spec, weights)
    if spec.family == "sam3d":
        from fmcache.embed.sam3d import ARCHS, load_sam3d

        other = get_volume_model(spec.decoder_from) if spec.decoder_from else None
        net = load_sam3d(path, spec.key, ARCHS[spec.arch], container=spec.container,
                         decoder_from=(lambda: _weights_path(other, None)[0]) if other else None)
    elif spec.family == "segvol":
        from fmcache.embed.segvol import load_segvol

        net = load_segvol(path, spec.key)
    else:
        raise ModelError(f"{spec.key!r} names an unknown 3D model family {spec.family!r}")
    if tuple(net.input_shape) != tuple(spec.input.size):
        raise ModelError(f"weights {path} were built for {' x '.join(map(str, net.input_shape))} input blocks but "
                         f"{spec.key!r} feeds {' x '.join(map(str, spec.input.size))}")
    return VolumeModel(spec, net.to(device).eval(), weights_id,
                       sha256_file(path) if path.is_file() else None, device)


def _weights_path(spec: VolumeSpec, weights: str | None) -> tuple[Path, str]:
    if weights is not None or not spec.weights.startswith(HUB_PREFIX):
        path = local_path(weights or spec.weights, spec.key)
        return path, path.name
    owner, name, *file = spec.weights[len(HUB_PREFIX):].split("/", 2)
    repo = f"{owner}/{name}"
    if file:
        path = hub_file(repo, (file[0],), spec.key)
    else:
        path = hub_snapshot(repo, ["*.json", "*.txt", "pytorch_model.bin", "*.safetensors"], spec.key)
    return path, hub_weights_id(repo, path)


# ---------------------------------------------------------------------------------------------
# Blocks


def class_centres(labels: np.ndarray, n_classes: int) -> list[np.ndarray | None]:
    """Per class 1..C, the centre of its bounding box in voxels (None when absent), where
    SAM-Med3D's crop (torchio's ``CropOrPad`` around the label) puts the block's centre."""
    out: list[np.ndarray | None] = []
    for c in range(1, n_classes + 1):
        where = np.argwhere(labels == c)
        out.append(None if not len(where) else (where.min(axis=0) + where.max(axis=0)) / 2.0)
    return out


def prepare_blocks(model: VolumeModel, volume, labels: np.ndarray, n_classes: int
                   ) -> tuple[np.ndarray, list[VolumeGeometry | None]]:
    """The input blocks of one volume and where they lie.

    Returns
    -------
    (blocks, geometries)
        float32 (K, X, Y, Z), K = ``n_classes`` for a per-class rule (a zero block for an
        absent class, whose geometry is None) and 1 otherwise.
    """
    rule = model.spec.input
    if not rule.per_class:
        normalised = type(volume)(normalised_volume(model, volume), volume.affine)
        block, geometry = resize_to_model_input(normalised, rule.size, SEGVOL_RESIZE_MODE)
        return block[None], [geometry]
    blocks = np.zeros((n_classes, *rule.size), np.float32)
    geometries: list[VolumeGeometry | None] = []
    for c, centre in enumerate(class_centres(labels, n_classes)):
        if centre is None:
            geometries.append(None)
            continue
        block, geometry = to_model_input(volume, rule.spacing, rule.size, center=centre)
        blocks[c] = apply_recipe(rule.intensity, block)
        geometries.append(geometry)
    return blocks, geometries


def normalised_volume(model: VolumeModel, volume) -> np.ndarray:
    """The whole volume through the model's intensity recipe (a whole-volume rule's input)."""
    return apply_recipe(model.spec.input.intensity, volume.array)


@torch.no_grad()
def encode_blocks(model: VolumeModel, blocks: np.ndarray) -> np.ndarray:
    """Encoder features (K, C, g, g, g) float32 of blocks (K, X, Y, Z), one block at a time
    (a 128³ block through a ViT-B is the whole memory budget of a small GPU)."""
    out = [model.net.encode(torch.from_numpy(np.ascontiguousarray(b))[None, None].to(model.device)).float().cpu()
           for b in blocks]
    return torch.cat(out).numpy()


@torch.no_grad()
def decode_blocks(model: VolumeModel, features: np.ndarray, geometries: list[VolumeGeometry | None],
                  prompts: list[Any], shape: tuple[int, int, int], volume: np.ndarray | None = None
                  ) -> list[np.ndarray]:
    """One bool mask on the original grid per class from cached features and prompts.

    ``prompts[c]`` is class c+1's :class:`~fmcache.segment.prompts.Prompt` in the volume's
    voxels, or (SegVol) its :class:`TextPrompt` (absent: an empty mask); ``features`` and
    ``geometries`` are the volume's blocks (one per class, or one for all); ``shape`` is the
    volume's, the masks'. ``volume`` (SegVol only): the intensity-normalised volume, for its
    zoom-in pass, which encodes windows around each zoom-out prediction afresh.
    """
    masks = []
    for c, prompt in enumerate(prompts):
        g = geometries[c] if len(geometries) > 1 else geometries[0]
        if prompt.is_absent or g is None:
            masks.append(np.zeros(shape, bool))
            continue
        block_features = features[c if len(features) > 1 else 0]
        if model.spec.family == "segvol":
            masks.append(_segvol_mask(model, block_features, g, prompt, volume))
        else:
            masks.append(to_original_grid(decode_block(model, block_features, g, prompt), g, threshold=0.0)
                         .astype(bool))
    return masks


def _segvol_mask(model: VolumeModel, features: np.ndarray, geometry: VolumeGeometry, prompt,
                 volume: np.ndarray | None) -> np.ndarray:
    """SegVol's zoom-out prediction (its own prompt mapping into the resized grid and nearest
    resize back), and with ``volume`` its zoom-in over the predicted region."""
    from fmcache.embed.segvol import zoom_in, zoom_out_logits

    feats = torch.as_tensor(features, dtype=torch.float32, device=model.device)[None]
    prompt_kw = {"points": prompt.points, "labels": prompt.point_labels, "box": prompt.box,
                 "text": getattr(prompt, "text", None)}
    logits = zoom_out_logits(model.net, feats, geometry.original_shape, **prompt_kw)
    if volume is not None:
        logits = zoom_in(model.net, volume, logits, **prompt_kw, generator=torch.Generator().manual_seed(0))
    return (logits > 0).cpu().numpy()


@torch.no_grad()
def decode_block(model: VolumeModel, features: np.ndarray, geometry: VolumeGeometry, prompt) -> np.ndarray:
    """SAM-Med3D's logits (X, Y, Z) on its input block for one prompt given in the volume's voxels."""
    dev = model.device
    points = torch.as_tensor(to_block_coords(prompt.points, geometry), dtype=torch.float32, device=dev)[None]
    labels = torch.as_tensor(prompt.point_labels, dtype=torch.int64, device=dev)[None]
    feats = torch.as_tensor(features, dtype=torch.float32, device=dev)[None]
    return model.net.decode(feats, points, labels)[0].float().cpu().numpy()
