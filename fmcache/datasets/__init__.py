"""Dataset adapters: samples tables (ids, labels, groups, splits) and pixel loading."""

from fmcache.datasets.registry import DATASETS, get_dataset, load_dataset
from fmcache.datasets.samples import Dataset
from fmcache.datasets.spec import AttributeRule, DatasetSpec, PromptSet

__all__ = ["DATASETS", "AttributeRule", "Dataset", "DatasetSpec", "PromptSet", "get_dataset", "load_dataset"]
