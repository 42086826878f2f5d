"""Run directories: what a sweep leaves behind, written once and loaded by anyone.

A run lives beside the cache, in ``<cache root>/runs/<run id>/``:

``config.json``        the sweep's configuration, seeds, dataset/model provenance, versions
``metrics.parquet``    the tidy metric table of the selected heads (one row per head x label x
                       attribute x metric x group)
``sweep.parquet``      every trained head: its hyperparameters and validation scores
``predictions/``       Zarr group: per selected head the test scores, with sample rows and ids

Reading needs neither torch nor JAX.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from fmcache.cache.store import resolve_root
from fmcache.errors import FmcacheError

RUNS = "runs"


def runs_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Where runs live: ``<cache root>/runs``."""
    return Path(resolve_root(root)).expanduser() / RUNS


def new_run_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """A fresh folder ``<runs>/<UTC time>-<name>`` (made unique if two runs start together)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = runs_dir(root) / f"{stamp}-{name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    path.mkdir(parents=True)
    return path


def write_run(
    path: Path,
    *,
    config: Mapping[str, Any],
    metrics: pd.DataFrame,
    sweep: pd.DataFrame,
    predictions: Mapping[str, Mapping[str, np.ndarray]],
) -> None:
    """Write a run's files; ``predictions`` maps a head name to arrays (scores, rows, ids...)."""
    import zarr

    metrics.to_parquet(path / "metrics.parquet", index=False)
    sweep.to_parquet(path / "sweep.parquet", index=False)
    group = zarr.open_group(str(path / "predictions"), mode="w", zarr_format=3)
    for head, arrays in predictions.items():
        g = group.create_group(head)
        for name, values in arrays.items():
            values = np.asarray(values)
            dtype = str if values.dtype.kind in "UO" else values.dtype
            arr = g.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape or None, overwrite=True)
            arr[...] = values
    # the config last: a run with a config.json is a run whose files are complete
    (path / "config.json").write_text(json.dumps(dict(config), indent=2, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


@dataclass
class Run:
    """A finished run: ``metrics`` and ``sweep`` tables, ``config``, and ``predictions``."""

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    sweep: pd.DataFrame

    @property
    def predictions(self) -> dict[str, dict[str, np.ndarray]]:
        """Per selected head: test scores and the sample rows / ids they belong to."""
        import zarr

        group = zarr.open_group(str(self.path / "predictions"), mode="r")
        return {h: {k: np.asarray(group[h][k][...]) for k in group[h].array_keys()} for h in sorted(group.group_keys())}


def load_results(run: str | os.PathLike[str]) -> Run:
    """Load a run directory written by ``fmcache probe``.

    Examples
    --------
    >>> run = fmcache.load_results("~/.cache/fmcache/runs/20261127-101500-synthetic-efficientnet_lite0")
    >>> run.metrics.query("metric == 'auc_delta'")
    """
    path = Path(run).expanduser()
    if not (path / "config.json").is_file():
        raise FmcacheError(f"{path} is not a finished run (no config.json); `fmcache results` lists the runs")
    return Run(
        path=path,
        config=json.loads((path / "config.json").read_text()),
        metrics=pd.read_parquet(path / "metrics.parquet"),
        sweep=pd.read_parquet(path / "sweep.parquet"),
    )


def list_runs(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per finished run under the cache root, newest first."""
    rows = []
    base = runs_dir(root)
    for p in sorted(base.iterdir(), reverse=True) if base.is_dir() else []:
        if (p / "config.json").is_file():
            cfg = json.loads((p / "config.json").read_text())
            rows.append({"run": p.name, "dataset": cfg.get("dataset"), "model": cfg.get("model"),
                         "heads": ", ".join(cfg.get("heads", [])), "created": cfg.get("created"), "path": str(p)})
    return pd.DataFrame(rows, columns=["run", "dataset", "model", "heads", "created", "path"])
