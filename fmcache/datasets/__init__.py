"""Dataset adapters: samples tables (ids, labels, groups, splits) and pixel loading."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fmcache._lazy import lazy_exports

from fmcache.datasets.samples import Dataset
from fmcache.datasets.spec import AttributeRule, DatasetSpec, PromptSet, RawTable

if TYPE_CHECKING:
    from fmcache.datasets.registry import DATASETS, get_dataset, load_dataset

__all__ = ["DATASETS", "AttributeRule", "Dataset", "DatasetSpec", "PromptSet", "RawTable", "get_dataset", "load_dataset"]


# the registry imports every adapter; loaded on first use so that reading a cache stays light
__getattr__, __dir__ = lazy_exports(
    __name__, {name: "fmcache.datasets.registry" for name in ("DATASETS", "get_dataset", "load_dataset")}
)
