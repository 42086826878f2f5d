"""Run directories: what a sweep leaves behind, written once and loaded by anyone.

A run lives beside the cache, in ``<cache root>/runs/<run id>/``, on a local disk or any
fsspec URL the cache can live on (``s3://bucket/prefix/runs/...``):

``config.json``           the sweep's configuration, seeds, the cache root it read, dataset/model
                          provenance, versions
``metrics.parquet``       the tidy metric table of the selected heads (one row per head x label x
                          attribute x metric x group): the mean over the selected grid point's
                          seeds, with ``sd`` (across seeds, ddof=1) and ``n_seeds``
``seed_metrics.parquet``  the same rows for each seed of the selected grid points (``seed``)
``sweep.parquet``         every trained head, each seed its own row: hyperparameters, seed,
                          validation scores, ``grid_criterion`` (its grid point's mean over
                          seeds) and ``selected`` (every seed of a chosen grid point)
``predictions/``          Zarr group: per selected head the test scores, with sample rows and
                          ids, under :func:`prediction_key`; ``score`` is (n,) for one seed and
                          (n_seeds, n) for several, row i from seed ``seed[i]``
``masks.npz``,            a segmentation run's predicted masks (``--save-masks``) and its report
``overlays.npz``          thumbnails: see :mod:`fmcache.runs.masks`

Reading needs neither torch nor JAX.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import zarr
from upath import UPath

from fmcache.cache import layout as L
from fmcache.cache.store import member_names, open_store, resolve_root
from fmcache.errors import FmcacheError

if TYPE_CHECKING:
    from fmcache.cache.reader import Embeddings

RUNS = L.RUNS
CONFIG, METRICS, SWEEP, PREDICTIONS = "config.json", "metrics.parquet", "sweep.parquet", "predictions"
SEED_METRICS = "seed_metrics.parquet"
CLAIMED = ".claimed"  # on object stores, where a folder cannot be created exclusively


def cache_root(root: str | os.PathLike[str] | None = None) -> UPath:
    """The cache root as an absolute path or URL (``None``: the default root)."""
    path = UPath(resolve_root(root))
    return path.expanduser().absolute() if path.protocol in ("", "file", "local") else path


def runs_dir(root: str | os.PathLike[str] | None = None, runs: str | os.PathLike[str] | None = None) -> UPath:
    """Where runs live: ``runs`` if given (e.g. beside a read-only cache), else ``<cache root>/runs``."""
    if runs is not None:
        path = UPath(runs)
        return path.expanduser().absolute() if path.protocol in ("", "file", "local") else path
    return cache_root(root) / RUNS


def run_path(run: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
             runs: str | os.PathLike[str] | None = None) -> UPath:
    """A run named by its directory (path or URL) or by its id under :func:`runs_dir`;
    FmcacheError naming where it looked (and the runs there) when neither exists."""
    path = UPath(run).expanduser()
    if not path.exists() and _is_name(run):
        path = runs_dir(root, runs) / str(run)
    if not path.exists():
        raise FmcacheError(_not_found(run, path.parent))
    return path


def new_run_dir(name: str, root: str | os.PathLike[str] | None = None, runs: str | os.PathLike[str] | None = None) -> UPath:
    """A fresh folder ``<runs>/<UTC time>-<name>``, claimed before anything is trained for it.

    Claiming is exclusive (a folder created with ``exist_ok=False``, or on an object store a
    marker written with a conditional put): two runs starting in the same second get
    ``...-2``, and neither can later find its name taken and lose what it computed.
    """
    base = runs_dir(root, runs)
    base.mkdir(parents=True, exist_ok=True)
    _mark_as_group(base)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for i in itertools.count(1):
        path = base / (f"{stamp}-{name}" if i == 1 else f"{stamp}-{name}-{i}")
        if _claim(path):
            return path
    raise AssertionError("unreachable")


def _mark_as_group(base: UPath) -> None:
    """Make a runs folder that lies inside the cache's Zarr hierarchy a group of it (also one
    written before runs were marked); one elsewhere (``--runs``) is left a plain folder."""
    doc = base / "zarr.json"
    if (base.parent / "zarr.json").is_file() and not doc.is_file():
        # two runs starting at once may both write it: the same bytes either way
        doc.write_text(json.dumps(L.RUNS_GROUP))


def _claim(path: UPath) -> bool:
    try:
        if path.protocol in ("", "file", "local"):
            path.mkdir(exist_ok=False)
        else:
            with path.fs.open(f"{path.path}/{CLAIMED}", "xb"):
                pass
    except FileExistsError:
        return False
    return True


def discard_run(path: UPath) -> None:
    """Remove a run directory that will not be finished (best effort: it is unlisted anyway)."""
    with contextlib.suppress(OSError):
        path.fs.rm(path.path, recursive=True)


def prediction_key(head: str, label: str, attribute: str) -> str:
    """Name of a selected head's predictions in a run ("/" would nest Zarr groups)."""
    return f"{head}.{label}.{attribute}".replace("/", "_")


def write_run(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    metrics: pd.DataFrame,
    sweep: pd.DataFrame,
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    seed_metrics: pd.DataFrame | None = None,
) -> None:
    """Write a run's files; ``predictions`` maps a :func:`prediction_key` to arrays (scores, rows, ids...).

    ``seed_metrics``: each seed's metric rows when ``metrics`` are means over seeds.
    """
    path = UPath(path)
    tables = [(METRICS, metrics), (SWEEP, sweep)] + ([(SEED_METRICS, seed_metrics)] if seed_metrics is not None else [])
    for name, table in tables:
        with (path / name).open("wb") as f:
            table.to_parquet(f, index=False)
    group = zarr.open_group(store=open_store(str(path / PREDICTIONS), read_only=False), mode="w", zarr_format=3)
    for key, arrays in predictions.items():
        g = group.create_group(key)
        for name, values in arrays.items():
            values = np.asarray(values)
            dtype = str if values.dtype.kind in "UO" else values.dtype
            arr = g.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape or None, overwrite=True)
            arr[...] = values
    # the config last: a run with a config.json is a run whose files are complete
    (path / CONFIG).write_text(json.dumps(dict(config), indent=2, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


@dataclass
class Run:
    """A finished run: ``metrics`` and ``sweep`` tables, ``config``, and ``predictions``.

    ``metrics`` has one row per head x label x attribute x metric x group: with several
    seeds the mean over them, ``sd`` across them and ``n_seeds``; ``seed_metrics`` holds each
    seed's rows (a ``seed`` column; empty for runs written without it).
    """

    path: UPath
    config: dict[str, Any]
    metrics: pd.DataFrame
    sweep: pd.DataFrame
    seed_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def predictions(self) -> dict[str, dict[str, np.ndarray]]:
        """Per selected head (by :func:`prediction_key`): test scores and the sample rows / ids they belong to.

        ``score`` is (n,) when the head has one seed, else (n_seeds, n) with row i from seed ``seed[i]``.
        """
        group = self._predictions_group()
        return {h: {k: np.asarray(group[h][k][...]) for k in member_names(group[h], zarr.Array)}
                for h in member_names(group, zarr.Group)}

    def prediction(self, head: str, label: str, attribute: str) -> dict[str, np.ndarray] | None:
        """One selected head's test predictions (only its arrays are read), or None if the run has none."""
        try:
            g = self._predictions_group()[prediction_key(head, label, attribute)]
        except (KeyError, FmcacheError):
            return None
        return {k: np.asarray(g[k][...]) for k in member_names(g, zarr.Array)}

    @property
    def target_gaps(self) -> dict[str, str]:
        """The gap each head of the run is built to shrink (recorded from its head type)."""
        return dict(self.config.get("target_gaps") or {})

    def cache_entry(self) -> Embeddings | None:
        """The cache entry the run was trained on, opened from the root its config records;
        None when that cache is not there (moved, deleted, or on another machine)."""
        from fmcache.cache.reader import open_cache

        root = self.config.get("root")
        if root is None:
            return None
        try:
            return open_cache(root).embeddings(self.config["dataset"], self.config["model"])
        except (FmcacheError, OSError, KeyError):
            return None

    def _predictions_group(self):
        where = self.path / PREDICTIONS
        try:
            return zarr.open_group(store=open_store(str(where), read_only=True), mode="r")
        except (FileNotFoundError, FmcacheError, zarr.errors.GroupNotFoundError):
            raise FmcacheError(f"run {self.path} has no saved predictions ({where} is missing or damaged)") from None


def load_results(run: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                 runs: str | os.PathLike[str] | None = None) -> Run:
    """Load a run written by ``fmcache probe``: its directory (path or URL), or its name as
    ``fmcache results`` lists it, looked up under :func:`runs_dir` (``root`` / ``runs``).

    Examples
    --------
    >>> run = fmcache.load_results("20261127-101500-synthetic-efficientnet_lite0")
    >>> run = fmcache.load_results("/data/fmcache/runs/20261127-101500-synthetic-efficientnet_lite0")
    >>> run.metrics.query("metric == 'auc_delta'")
    """
    path = run_path(run, root, runs)
    if not (path / CONFIG).is_file():
        raise FmcacheError(f"{path} is not a finished run (no {CONFIG}); `fmcache results` lists the runs")
    return Run(
        path=path,
        config=json.loads((path / CONFIG).read_text()),
        metrics=_read_table(path / METRICS),
        sweep=_read_table(path / SWEEP),
        seed_metrics=_read_table(path / SEED_METRICS) if (path / SEED_METRICS).is_file() else pd.DataFrame(),
    )


def _is_name(run: str | os.PathLike[str]) -> bool:
    """A run's name (one path segment), as opposed to a path or URL of its directory."""
    text = str(run)
    return bool(text) and "/" not in text and os.sep not in text and text not in (".", "..")


def _not_found(run: str | os.PathLike[str], folder: UPath) -> str:
    what = f"no run {str(run)!r} in {folder}"
    if not folder.is_dir():
        return (f"{what}: that folder does not exist (give the root or runs folder the run was written to: "
                "root= or runs=, on the command line --root or --runs)")
    names = list(list_runs(runs=folder)["run"])
    if not names:
        return f"{what}: it holds no finished runs (`fmcache probe` makes them)"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{what}; its runs, newest first: {shown} (`fmcache results` lists them all)"


def _read_table(path: UPath) -> pd.DataFrame:
    with path.open("rb") as f:
        return pd.read_parquet(f)


def list_runs(root: str | os.PathLike[str] | None = None, runs: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per finished run under :func:`runs_dir`, newest first."""
    rows = []
    base = runs_dir(root, runs)
    for p in sorted(base.iterdir(), key=lambda p: p.name, reverse=True) if base.is_dir() else []:
        if (p / CONFIG).is_file():
            cfg = json.loads((p / CONFIG).read_text())
            rows.append({"run": p.name, "dataset": cfg.get("dataset"), "model": cfg.get("model"),
                         "heads": ", ".join(cfg.get("heads", [])), "created": cfg.get("created"), "path": str(p)})
    return pd.DataFrame(rows, columns=["run", "dataset", "model", "heads", "created", "path"])
