"""The Zarr cache: layout, writer (resumable), reader, provenance.

Users read it through ``open_cache`` (also ``fmcache.open_cache``), which needs neither
torch nor JAX; the writer is the embed stage's.
"""

from __future__ import annotations

from fmcache._lazy import lazy_exports

_LAZY = {
    "Cache": "fmcache.cache.reader",
    "Embeddings": "fmcache.cache.reader",
    "open_cache": "fmcache.cache.reader",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
