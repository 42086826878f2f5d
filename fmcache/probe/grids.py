"""Sweep grids: which hyperparameters each head type is tried with.

Each head type carries its own grids (``HeadType.default_grid`` and ``search_grid``):
``default`` is the benchmark's protocol, one point per head (AdamW, cosine schedule,
lr 2.5e-4, weight decay 0.05; LAFTR lr 3e-4); ``all`` widens each head's own knob and the
learning rate so model selection has something to choose from. A YAML file may name heads
and give lists per hyperparameter::

    heads:
      linear:      {lr: [1.0e-4, 2.5e-4, 1.0e-3], weight_decay: [0.0, 0.05]}
      groupdro:    {dro_step: [0.01, 0.1]}
      fairpenalty: {penalty: [0.1, 1, 10]}
    epochs: 50
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Mapping

from fmcache.errors import FmcacheError
from fmcache.heads.registry import HEADS, get_head

Grid = dict[str, list[float]]
SWEEP_KEYS = ("heads", "epochs", "batch_size")


def default_grid(head: str) -> Grid:
    """The benchmark's hyperparameters for a head type (one grid point)."""
    return {k: list(v) for k, v in get_head(head).default_grid.items()}


def search_grid(head: str) -> Grid:
    """The grid ``--sweep all`` trains a head type over."""
    return {k: list(v) for k, v in get_head(head).search_grid.items()}


def load_sweep(sweep: str, heads: list[str] | None) -> tuple[dict[str, Grid], dict[str, Any]]:
    """Grids per head for ``default``, ``all`` or a YAML file, and the file's other settings.

    ``heads`` (from ``--heads``) narrows the choice; with no ``heads``, ``default`` means the
    linear probe and ``all`` every registered head type.
    """
    settings: dict[str, Any] = {}
    for h in heads or []:
        get_head(h)
    if sweep == "default":
        grids = {h: default_grid(h) for h in heads or ["linear"]}
    elif sweep == "all":
        grids = {h: search_grid(h) for h in heads or list(HEADS)}
    else:
        grids, settings = _from_file(Path(sweep))
        if heads:
            grids = {h: grids[h] if h in grids else default_grid(h) for h in heads}
    for h in grids:
        get_head(h)
    return grids, settings


def _from_file(path: Path) -> tuple[dict[str, Grid], dict[str, Any]]:
    import yaml

    if not path.is_file():
        raise FmcacheError(f"--sweep {path}: no such file (use 'default', 'all' or a YAML file)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise FmcacheError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("heads"), dict):
        raise FmcacheError(f"{path}: expected a mapping with a 'heads:' mapping of head -> {{hyperparameter: [values]}}")
    unknown = set(doc) - set(SWEEP_KEYS)
    if unknown:
        raise FmcacheError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(SWEEP_KEYS)}")
    grids = {}
    for head, grid in doc["heads"].items():
        grid = grid or {}
        if not isinstance(grid, dict):
            raise FmcacheError(f"{path}: heads.{head} must map hyperparameters to lists of values")
        grids[head] = {k: [float(x) for x in (v if isinstance(v, list) else [v])] for k, v in grid.items()}
    return grids, {k: doc[k] for k in ("epochs", "batch_size") if k in doc}


def points(grid: Mapping[str, list[float]]) -> list[dict[str, float]]:
    """Every combination of a grid's values (one empty point for an empty grid)."""
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
