"""What the embed switches of a protocol (:mod:`fmcache.protocols`) do to a loaded model:
its preprocessing, the features it yields, and the name its cache entry carries."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fmcache.embed.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Encoder, Preprocess
from fmcache.errors import FmcacheError
from fmcache.protocols import QUERIES_KIND, REFERENCE_SLICES, REFERENCE_STATS, entry_suffix

# the paper's text: resize 256, centre-crop 224, ImageNet statistics
PAPER_PREPROCESS = Preprocess(size=224, resize=256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass
class Variant:
    """A model under a protocol's embed switches."""

    encoder: Encoder
    preprocess: Preprocess
    entry: str  # the cache entry's name: the model key plus a suffix for non-default switches
    switches: dict[str, str]  # every embed switch; "n/a" where it does not touch this model or dataset
    slices: int  # slices per volume (0: a 2D dataset)

    @property
    def recorded(self) -> dict[str, str] | None:
        """The switches an entry records: None when every one is at fmcache's default, so an entry
        made before the switches existed keeps its identity."""
        chosen = {k: v for k, v in self.switches.items() if k in _DEFAULTS and v not in ("n/a", _DEFAULTS[k])}
        return chosen or None


# the switches an entry's "variant" records; the slice count is in its "volume" already
_DEFAULTS = {"preprocess": "model", "queries": "mean"}


def reference_preprocess(dataset: str) -> Preprocess:
    """The reference code's input for every model: shorter side resized to 224 (bicubic),
    centre-cropped to 224, normalised with its per-dataset statistics (CLIP's for a dataset
    it does not list)."""
    mean, std = REFERENCE_STATS.get(dataset, (CLIP_MEAN, CLIP_STD))
    return Preprocess(size=224, resize=224, interpolation="bicubic", mean=mean, std=std)


def apply(enc: Encoder, model: str, switches: dict[str, str], dataset: str, volumes: bool) -> Variant:
    """``enc``, registered as ``model``, under the embed ``switches`` (from
    :func:`fmcache.protocols.resolve`) for the dataset whose adapter key is ``dataset``
    (of volumes, or not)."""
    pre = {"model": enc.spec.preprocess, "paper": PAPER_PREPROCESS}.get(switches["preprocess"]) or reference_preprocess(dataset)
    multi = enc.encode_queries is not None
    slices = slice_count(switches["slices"], dataset) if volumes else 0
    out = dict(switches, queries=switches["queries"] if multi else "n/a", slices=str(slices) if volumes else "n/a")
    if multi and switches["queries"] == "reference":
        enc = _first_query(enc)
    return Variant(enc, pre, model + entry_suffix(switches, multi), out, slices)


def slice_count(value: str, dataset: str) -> int:
    """The slices switch's count for a dataset: a number, or the reference code's (default 32)."""
    if value == "reference":
        return REFERENCE_SLICES.get(dataset, 32)
    if not value.isdigit() or int(value) < 1:
        raise FmcacheError(f"slices {value!r}: a positive number of slices, or reference")
    return int(value)


def _first_query(enc: Encoder) -> Encoder:
    """The reference code's BLIP-2 features: query 0's output as ``image``, and every query's unit
    projection (flattened, Q x D') so that zero-shot can take the maximum over them."""
    assert enc.encode_queries is not None
    per_query = enc.encode_queries

    def encode_image(x: Any) -> dict[str, Any]:
        q = per_query(x)
        return {"image": q["image"][:, 0], "image_proj": q["image_proj"].mean(dim=1),
                QUERIES_KIND: q["image_proj"].flatten(1)}

    dims = {**enc.dims, QUERIES_KIND: enc.n_queries * enc.dims["image_proj"]}
    return replace(enc, encode_image=encode_image, dims=dims)
