"""fmcache: is a medical-imaging foundation model fair, and does a mitigation help?

Reading the cache needs neither torch nor JAX: those stages load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fmcache.cache.reader import Cache, Embeddings, open_cache
    from fmcache.errors import FmcacheError
    from fmcache.runs import Run, load_results

__all__ = ["Cache", "Embeddings", "FmcacheError", "Run", "__version__", "load_results", "open_cache"]


def __getattr__(name: str) -> Any:
    if name in ("open_cache", "Cache", "Embeddings"):
        from fmcache.cache import reader

        return getattr(reader, name)
    if name in ("load_results", "Run"):
        from fmcache import runs

        return getattr(runs, name)
    if name == "FmcacheError":
        from fmcache.errors import FmcacheError

        return FmcacheError
    raise AttributeError(f"module 'fmcache' has no attribute {name!r}")
