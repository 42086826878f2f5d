"""What a model entry is: data (loader family, weights source, preprocessing, dims, prompts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shortest side to ``resize``, centre-crop ``size``, scale to [0, 1], normalise."""

    size: int = 224
    resize: int = 224
    interpolation: str = "bicubic"  # bilinear | bicubic
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclass(frozen=True)
class ModelSpec:
    """A registered foundation model. Adding a model is adding one of these.

    ``weights`` is where the real weights come from: ``"hf-hub:<repo>"`` for a Hugging Face
    repository, ``"file:<name>"`` for a file the user places in the weights directory, or
    ``"package:<distribution>"`` for weights shipped inside a Python package. ``family``
    picks the loader in :mod:`fmcache.embed.loaders`; ``config`` is passed to it as is.
    ``dims`` maps each feature kind the model yields (``image``: pre-projection,
    ``image_proj``: after the projection) to its width; ``text_dim`` is the width of
    text prototypes (``None``: no text tower).
    """

    key: str
    title: str
    family: str
    weights: str
    preprocess: Preprocess
    dims: Mapping[str, int]
    text_dim: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    notes: str = ""
    hidden: bool = False  # tiny test variants: loadable, not listed by `fmcache models`

    @property
    def has_text(self) -> bool:
        return self.text_dim is not None


@dataclass
class Encoder:
    """A loaded model, ready for inference.

    ``encode_image`` takes a normalised float batch (B, 3, H, W) and returns each feature
    kind of ``spec.dims`` as a (B, D) tensor. ``encode_text`` (VLMs only) takes a list of
    prompts and returns L2-normalised (n, text_dim) text embeddings in the same space as
    ``image_proj``. ``weights_id`` names the weights that were loaded (hub id + revision,
    or file name) and ``weights_sha256`` is the hash of the weights file where there is one.
    ``dims`` / ``text_dim`` are the widths of what was actually loaded (a small local
    checkpoint may differ from the entry's nominal dims). A model whose image is a set of
    query outputs (BLIP-2) also has ``encode_queries``: the same batch's per-query
    ``image`` (B, Q, D) and unit-norm ``image_proj`` (B, Q, D') before they are pooled.
    Both run under ``torch.inference_mode``; ``image_forward`` is ``encode_image`` with
    gradients, for fine-tuning.
    """

    spec: ModelSpec
    module: Any  # torch.nn.Module, in eval mode
    encode_image: Callable[[Any], dict[str, Any]]
    dims: dict[str, int]
    weights_id: str
    weights_sha256: str | None
    encode_text: Callable[[list[str]], Any] | None = None
    text_dim: int | None = None
    logit_scale: float | None = None
    encode_queries: Callable[[Any], dict[str, Any]] | None = None
    n_queries: int = 0

    def __post_init__(self) -> None:
        import torch

        # loaders hand over plain forward functions: fine-tuning trains through them
        # (``image_forward``), while every other caller gets them under inference mode
        self.image_forward = self.encode_image
        self.encode_image = torch.inference_mode()(self.encode_image)
        if self.encode_queries is not None:
            self.encode_queries = torch.inference_mode()(self.encode_queries)
