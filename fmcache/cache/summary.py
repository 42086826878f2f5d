"""Plain-text descriptions of what a cached dataset holds (for `cache info` and the demo)."""

from __future__ import annotations

import pandas as pd

from fmcache.cache import layout as L
from fmcache.cache.reader import Cache


def entries_table(cache: Cache):
    """A rich table of the cache's (dataset, model) entries."""
    from rich.table import Table

    # weights ids and dates are long: `cache info DATASET MODEL` shows them, the table stays readable at 80 columns
    df = cache.entries().drop(columns=["created", "weights"]).rename(columns={"chunks_done": "chunks"})
    t = Table(title=f"cache at {cache.root}", caption="`fmcache cache info DATASET MODEL` shows an entry's provenance")
    for col in df.columns:
        t.add_column(col, overflow="fold")
    for row in df.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    return t


def describe_dataset(cache: Cache, dataset: str) -> str:
    """Samples per split, label prevalence and group sizes (unknown shown as its own column)."""
    info = cache.dataset_info(dataset)
    g = cache._dataset_group(dataset)
    s = g[L.SAMPLES]
    split = pd.Series(s[L.SPLIT][...]).map({0: "train", 1: "val", 2: "test"})
    lines = [
        f"{dataset}: {info.get('title', '')} — {info.get('n')} samples, {pd.Series(s[L.SUBJECT][...]).nunique()} subjects; "
        f"split {info.get('split_policy')} (seed {info.get('split_seed')})",
        "samples per split: " + ", ".join(f"{k} {v}" for k, v in split.value_counts().reindex(["train", "val", "test"]).fillna(0).astype(int).items()),
    ]
    labels = s[L.LABEL][...]
    for i, name in enumerate(info.get("label_names", [])):
        y = labels[:, i]
        lines.append(f"label {name}: {int((y == 1).sum())} positive, {int((y == 0).sum())} negative, {int((y == -1).sum())} unknown")
    for attr, meta in (info.get("attributes") or {}).items():
        if L.SA not in s or attr not in s[L.SA]:
            continue
        codes = pd.Series(s[L.SA][attr][...])
        names = dict(enumerate(meta["groups"])) | {-1: "unknown"}
        table = pd.crosstab(codes.map(names), split, rownames=["group"], colnames=["split"]).reindex(
            columns=["train", "val", "test"], fill_value=0
        )
        lines.append(f"{attr} ({meta['rule']}):")
        lines.extend("  " + row for row in table.to_string().splitlines())
    models = cache.models(dataset)
    lines.append("models: " + (", ".join(models) if models else "none yet"))
    return "\n".join(lines)
