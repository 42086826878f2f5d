"""fmcache: is a medical-imaging foundation model fair, and does a mitigation help?

Reading the cache needs neither torch nor JAX: those stages load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fmcache.cache.reader import Cache, Embeddings, open_cache
    from fmcache.errors import FmcacheError

__all__ = ["Cache", "Embeddings", "FmcacheError", "__version__", "open_cache"]


def __getattr__(name: str) -> Any:
    if name in ("open_cache", "Cache", "Embeddings"):
        from fmcache.cache import reader

        return getattr(reader, name)
    if name == "FmcacheError":
        from fmcache.errors import FmcacheError

        return FmcacheError
    raise AttributeError(f"module 'fmcache' has no attribute {name!r}")
