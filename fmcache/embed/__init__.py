"""The torch stage: model registry and loaders, preprocessing, the encode loop.

    from fmcache.datasets import load_dataset
    from fmcache.embed import embed, load_model, MODELS
    summary = embed(load_dataset("ham10000", "~/data/HAM10000"), "dinov2")

torch loads on first use of these names, so listing the models (``MODELS``) stays light.
"""

from __future__ import annotations

from fmcache._lazy import lazy_exports

_LAZY = {
    "MODELS": "fmcache.embed.models",
    "get_model": "fmcache.embed.registry",
    "load_model": "fmcache.embed.registry",
    "embed": "fmcache.embed.encode",
    "ModelSpec": "fmcache.embed.spec",
    "Encoder": "fmcache.embed.spec",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
