"""Sweep grids: which hyperparameters each head type is tried with.

``default`` is the benchmark's protocol, one point per head (AdamW, cosine schedule,
lr 2.5e-4, weight decay 0.05; LAFTR lr 3e-4, adversarial coefficient 0.1; GroupDRO step
0.01). ``all`` widens each head's own knob and the learning rate so model selection has
something to choose from. A YAML file may name heads and give lists per hyperparameter::

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

from fmcache.errors import FmcacheError, did_you_mean
from fmcache.heads.registry import HEADS

Grid = dict[str, list[float]]

_BASE = {"lr": [2.5e-4], "weight_decay": [0.05]}
DEFAULT: dict[str, Grid] = {name: dict(_BASE) for name in HEADS}
DEFAULT.update({n: {**_BASE, "lr": [3e-4]} for n in HEADS if n.startswith("laftr")})
DEFAULT["zeroshot"] = {}

_LR = {"lr": [2.5e-4, 1e-3], "weight_decay": [0.05]}
ALL: dict[str, Grid] = {
    "linear": {"lr": [2.5e-4, 1e-3, 4e-3], "weight_decay": [0.0, 0.05]},
    "resample": dict(_LR),
    "groupdro": {**_LR, "dro_step": [0.01, 0.1]},
    "laftr": {"lr": [3e-4, 1e-3], "weight_decay": [0.05], "adv_coeff": [0.1, 1.0]},
    "laftr_eqodd": {"lr": [3e-4, 1e-3], "weight_decay": [0.05], "adv_coeff": [0.1, 1.0]},
    "laftr_eqopp": {"lr": [3e-4, 1e-3], "weight_decay": [0.05], "adv_coeff": [0.1, 1.0]},
    "fairpenalty": {**_LR, "penalty": [0.3, 3.0]},
    "fairpenalty_eo": {**_LR, "penalty": [0.3, 3.0]},
    "domain_ind": dict(_LR),
    "zeroshot": {},
    "clip_adapt": dict(_LR),
}
SWEEP_KEYS = ("heads", "epochs", "batch_size")


def load_sweep(sweep: str, heads: list[str] | None) -> tuple[dict[str, Grid], dict[str, Any]]:
    """Grids per head for ``default``, ``all`` or a YAML file, and the file's other settings.

    ``heads`` (from ``--heads``) narrows the choice; with no ``heads``, ``default`` means the
    linear probe and ``all`` every head type.
    """
    settings: dict[str, Any] = {}
    for h in heads or []:
        if h not in HEADS:
            raise FmcacheError(f"unknown head type {h!r}{did_you_mean(h, list(HEADS))}; known: {', '.join(HEADS)}")
    if sweep == "default":
        grids = {h: DEFAULT[h] for h in heads or ["linear"]}
    elif sweep == "all":
        grids = {h: ALL[h] for h in heads or list(ALL)}
    else:
        grids, settings = _from_file(Path(sweep))
        if heads:
            grids = {h: grids.get(h, DEFAULT[h]) for h in heads}
    for h in grids:
        if h not in HEADS:
            raise FmcacheError(f"unknown head type {h!r}{did_you_mean(h, list(HEADS))}; known: {', '.join(HEADS)}")
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
