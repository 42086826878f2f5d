"""Built-in dataset adapters; importing this package registers each of them."""

from fmcache.datasets.adapters import (  # noqa: F401
    adni,
    brset,
    chexpert,
    covid_ct_md,
    csv_table,
    fairvlmed10k,
    gf3300,
    ham10000,
    mimic_cxr,
    papila,
    synthetic,
)
