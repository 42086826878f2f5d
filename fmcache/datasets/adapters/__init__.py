"""Built-in dataset adapters; importing this package registers each of them."""

from fmcache.datasets.adapters import (  # noqa: F401
    chexpert,
    csv_table,
    ham10000,
    mimic_cxr,
    synthetic,
)
