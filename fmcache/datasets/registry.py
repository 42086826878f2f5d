"""The dataset registry: a plain dict of :class:`DatasetSpec` entries."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from fmcache.datasets.samples import (
    Dataset,
    adapter_options,
    attribute_rules,
    build_samples,
    check_options,
    data_root,
    split_policy,
    split_suffix,
)
from fmcache.datasets.spec import DatasetSpec
from fmcache.errors import UnknownNameError, did_you_mean

DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.key] = spec
    return spec


def get_dataset(key: str) -> DatasetSpec:
    _load_builtin()
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
    name = raw.attrs.get("name", spec.key) + split_suffix(opts)
    extra = dict(raw.attrs.get("group_attrs", {}))
    if "split" in opts:
        extra["split_policy"] = split_policy(opts)
    if "task" in raw.attrs:  # an option changed the task (spec.py documents raw.attrs["task"])
        extra["task"] = raw.attrs["task"]
    return Dataset(spec=spec, name=name, root=root, options=opts, seed=seed, table=table, fingerprint=fingerprint,
                   extra_attrs=extra, attribute_rules=dict(attribute_rules(spec, raw)))


def _load_builtin() -> None:
    # importing the adapter modules registers them; kept lazy so `import fmcache` stays light
    from fmcache.datasets import adapters  # noqa: F401
