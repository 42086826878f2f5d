"""Dataset adapters: samples tables (ids, labels, groups, splits) and pixel loading."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fmcache.datasets.samples import Dataset
from fmcache.datasets.spec import AttributeRule, DatasetSpec, PromptSet, RawTable

if TYPE_CHECKING:
    from fmcache.datasets.registry import DATASETS, get_dataset, load_dataset

__all__ = ["DATASETS", "AttributeRule", "Dataset", "DatasetSpec", "PromptSet", "RawTable", "get_dataset", "load_dataset"]


def __getattr__(name: str) -> Any:
    # the registry imports every adapter; loaded on first use so that reading a cache stays light
    if name in ("DATASETS", "get_dataset", "load_dataset"):
        from fmcache.datasets import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'fmcache.datasets' has no attribute {name!r}")
