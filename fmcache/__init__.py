"""fmcache: is a medical-imaging foundation model fair, and does a mitigation help?

Reading the cache needs neither torch nor JAX: those stages load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fmcache._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fmcache.cache.reader import Cache, Embeddings, open_cache
    from fmcache.errors import FmcacheError
    from fmcache.runs import Run, load_results

__all__ = ["Cache", "Embeddings", "FmcacheError", "Run", "__version__", "load_results", "open_cache"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "Cache": "fmcache.cache.reader",
    "Embeddings": "fmcache.cache.reader",
    "open_cache": "fmcache.cache.reader",
    "Run": "fmcache.runs",
    "load_results": "fmcache.runs",
    "FmcacheError": "fmcache.errors",
})
