"""The dataset registry: one table of the adapters' :class:`DatasetSpec` entries."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from fmcache.datasets.adapters import (
    adni,
    brset,
    candi,
    chexpert,
    covid_ct_md,
    csv_table,
    fairseg,
    fairvlmed10k,
    gf3300,
    ham10000,
    ham10000_seg,
    ircadb,
    kits23,
    mimic_cxr,
    montgomery,
    papila,
    spider,
    synthetic,
    synthetic_seg,
    tusc,
)
from fmcache.datasets.samples import (
    Dataset,
    adapter_options,
    attribute_rules,
    build_samples,
    check_options,
    data_root,
    plain_split_policy,
    split_policy,
    split_suffix,
)
from fmcache.datasets.spec import DatasetSpec
from fmcache.errors import UnknownNameError, did_you_mean

# the order `fmcache datasets` lists them in
DATASETS: dict[str, DatasetSpec] = {
    m.SPEC.key: m.SPEC
    for m in (
        chexpert,
        adni,
        brset,
        covid_ct_md,
        csv_table,
        fairvlmed10k,
        gf3300,
        ham10000,
        mimic_cxr,
        papila,
        synthetic,
        ham10000_seg,
        synthetic_seg,
        montgomery,
        fairseg,
        tusc,
        kits23,
        candi,
        ircadb,
        spider,
    )
}


def get_dataset(key: str) -> DatasetSpec:
    try:
        return DATASETS[key]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset {key!r}{did_you_mean(key, list(DATASETS))}; `fmcache datasets` lists them"
        ) from None


def load_dataset(
    key: str,
    data: str | Path | None = None,
    *,
    options: Mapping[str, str] | None = None,
    seed: int = 0,
) -> Dataset:
    """Read a dataset release into a :class:`Dataset` (samples table with splits and groups).

    Besides the adapter's own options, every dataset accepts ``split`` (see
    :data:`fmcache.datasets.samples.RESERVED_OPTIONS`): ``balanced-test:<attribute>`` balances
    the test split between the attribute's groups and gives the cache group its own name.
    """
    spec = get_dataset(key)
    opts = check_options(spec, options or {})
    root = data_root(spec, data)
    raw = spec.read(root if root is not None else Path("."), adapter_options(opts))
    table, fingerprint = build_samples(spec, raw, seed=seed, options=opts)
    name = (raw.name if raw.name is not None else spec.key) + split_suffix(opts)
    extra = dict(raw.group_attrs)
    if "split" in opts:
        extra["split_policy"] = split_policy(opts, plain_split_policy(spec.task))
    if raw.task is not None:  # the options decided the task
        extra["task"] = raw.task
    return Dataset(spec=spec, name=name, root=root, options=opts, seed=seed, table=table, fingerprint=fingerprint,
                   extra_attrs=extra, attribute_rules=dict(attribute_rules(spec, raw)))
