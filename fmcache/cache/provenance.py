"""What identifies the numbers of a cache entry, and the check that refuses silent mixing."""

from __future__ import annotations

from typing import Any, Mapping

from fmcache.errors import ProvenanceMismatchError

# Everything that changes the cached numbers. Anything else in the attrs (created, state,
# fmcache version, timing) is informative only.
IDENTITY_KEYS = (
    "model",
    "weights_id",
    "weights_sha256",
    "preprocess",
    "feature_kinds",
    "dims",
    "dtype",
    "row_fingerprint",
    "volume",  # 2.5D: slice count and pooling; None for 2D data
)


def identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: attrs.get(k) for k in IDENTITY_KEYS}


def differences(cached: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: cached -> requested`` for each identity field that differs."""
    a, b = identity(cached), identity(requested)
    return [f"{k}: {_short(a[k])} -> {_short(b[k])}" for k in IDENTITY_KEYS if a[k] != b[k]]


def check(where: str, cached: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Raise ProvenanceMismatchError when a request would mix numbers of a different origin."""
    diff = differences(cached, requested)
    if diff:
        raise ProvenanceMismatchError(
            f"cache entry {where} was made differently ({'; '.join(diff)}); "
            "pass --overwrite to replace it, or --root to use another cache"
        )


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
