"""What identifies the numbers of a cache entry: a request that differs in any of it is another entry."""

from __future__ import annotations

from typing import Any, Mapping

from fmcache.cache import layout as L

# Everything that changes the cached numbers. Anything else in the attrs (created, state,
# fmcache version, timing) is informative only.
IDENTITY_KEYS = (
    "model",
    "weights_id",
    "weights_sha256",
    "preprocess",
    "variant",  # a protocol's embed switches away from fmcache's defaults (None: none)
    "feature_kinds",
    "dims",
    "kind_dtypes",  # feature kinds stored other than as float16 (None: none)
    "dtype",
    "row_fingerprint",
    "volume",  # 2.5D: slice count and pooling; None for 2D data
    "batch_size",  # images per forward pass: it can change the last bits, and so the float16 rounding
    "format",  # how the cache stores and checks its arrays (fmcache.cache.layout.FORMAT)
)


# identity fields that older entries may lack: absent means None
OPTIONAL_IDENTITY = ("volume", "variant", "kind_dtypes")


def requested(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """What an entry made from ``provenance`` records: the facts derived from it filled in."""
    return {**dict.fromkeys(OPTIONAL_IDENTITY), **provenance, "feature_kinds": list(provenance["dims"]), "dtype": L.DISK_DTYPE,
            "format": L.FORMAT}


def identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: attrs.get(k) for k in IDENTITY_KEYS}


def differences(cached: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: cached -> wanted`` for each identity field that differs."""
    a, b = identity(cached), identity(wanted)
    return [f"{k}: {_short(a[k])} -> {_short(b[k])}" for k in IDENTITY_KEYS if a[k] != b[k]]


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
