"""A sweep: train every head type over its grid from one cache entry, select on validation,
evaluate the selected heads on test with bootstrap intervals, and write a run directory.

Init seeds (``SweepConfig.seeds``) are repeats, not grid points: a grid point is selected by
its mean validation criterion over its seeds, and every seed of it is evaluated. The run's
``metrics`` hold the mean over seeds (with ``sd`` and ``n_seeds``), ``seed_metrics`` each
seed's rows.

A multi-class label (HAM10000's ``dx``, ...) trains softmax heads; head types that handle
binary labels only are skipped. Selection and the AUC figures use macro one-vs-rest AUC, and
accuracy is that of the argmax class: ``threshold`` does not apply
(:func:`fmcache.fairness.evaluate_multiclass`). Saved scores gain a trailing class axis.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pandas as pd

from fmcache import __version__
from fmcache.cache.reader import open_cache
from fmcache.errors import FmcacheError
from fmcache.fairness import evaluate, evaluate_multiclass
from fmcache.heads import devices
from fmcache.heads.domain_ind import RULES as DOMAIN_INFERENCE
from fmcache.heads.registry import get_head
from fmcache.heads.stream import DEFAULT_WINDOW
from fmcache.heads.train import SHUFFLES as ORDERS
from fmcache.heads.train import fit_stack
from fmcache.probe.data import ProbeData, entry_name, load_probe_data
from fmcache.probe.grids import Grid, points
from fmcache.probe.selection import criterion_value, select_point, validation_scores
from fmcache.protocols import NOT_REPRODUCED, data_switches, differences, reference_values, resolve
from fmcache.runs import Run, cache_root, discard_run, load_results, new_run_dir, prediction_key, write_run

SHUFFLES = ("auto", *ORDERS)


@dataclass
class SweepConfig:
    """What a sweep trains and how it selects and evaluates (recorded in the run).

    ``protocol`` (:mod:`fmcache.protocols`) gives every probe switch left at None: ``kind``
    (the ``feature`` switch: auto | reference, or a cached kind), ``templates``,
    ``query_pool``, ``logit_scale``, ``threshold`` and ``convention``. ``model`` may be a
    model key, which names the entry the protocol's embed switches made (``clip`` is
    ``clip+pre-reference`` under ``fairmedfm``), or an entry name.
    """

    dataset: str
    model: str
    heads: dict[str, Grid]
    labels: list[str] | None = None
    attributes: list[str] | None = None
    seeds: int = 1  # init seeds per grid point: repeats, averaged in selection and results
    criterion: str = "auc"
    threshold: str | float | None = None
    convention: str | None = None
    n_boot: int = 1000
    epochs: int = 100
    batch_size: int = 128
    kind: str | None = None
    volume: str = "max"  # 2.5D: max / mean of slice predictions, or "features" (pooled volume feature)
    seed: int = 0  # minibatch order and bootstrap resamples
    # how group-aware heads that can use the row's group at inference (domain_ind) score val
    # and test: "sum" needs no group (as deployed), "known" reads each row's group (oracle)
    domain_inference: str = "sum"
    templates: str | None = None  # mean | first: a class's prototype from its templates
    query_pool: str | None = None  # mean | max: text heads on BLIP-2's queries
    logit_scale: str | None = None  # model | reference: the reference code's factors
    protocol: str = "fmcache"
    # bytes the sweep's features and heads may take (None: a quarter of the device's memory,
    # at most 4 GiB on a CPU); features over half of it stay in the cache and are streamed
    memory_budget: int | None = None
    # minibatch order: rows (a permutation of all rows per epoch), chunks (cache chunks in a
    # random order, rows shuffled within windows of ``window`` rows; streamed features
    # need it) or auto (chunks where the features are streamed, else rows)
    shuffle: str = "auto"
    window: int = DEFAULT_WINDOW
    extra: dict[str, Any] = field(default_factory=dict)


def resolved(cfg: SweepConfig) -> SweepConfig:
    """``cfg`` with every probe switch left at None taken from its protocol."""
    given = {"feature": cfg.kind, "templates": cfg.templates, "query_pool": cfg.query_pool,
             "logit_scale": cfg.logit_scale, "threshold": cfg.threshold, "convention": cfg.convention}
    sw = resolve(cfg.protocol, "probe", given)
    threshold = cfg.threshold if cfg.threshold is not None else sw["threshold"]
    return replace(cfg, kind=sw["feature"], templates=sw["templates"], query_pool=sw["query_pool"],
                   logit_scale=sw["logit_scale"], threshold=threshold, convention=sw["convention"])


@dataclass
class _Trained:
    head: str
    hparams: pd.DataFrame  # one row per head in the stack
    val: np.ndarray  # (K, n_val), or (K, n_val, C) for a multi-class label
    test: np.ndarray  # (K, n_test), or (K, n_test, C)


def run_sweep(cfg: SweepConfig, *, root: str | os.PathLike[str] | None = None, runs: str | os.PathLike[str] | None = None,
              on_head: Callable[[str, int], None] | None = None) -> Run | None:
    """Run a sweep and write its run directory; returns the loaded :class:`Run`.

    The run goes under ``<root>/runs``, or under ``runs`` (e.g. when the cache is read-only).
    Its directory is claimed before training; a sweep that fails removes it again.
    ``on_head(name, n_heads)`` is called before each head type trains (progress display).

    In a computation across processes (``fmcache.heads.devices.join``) every process loads
    the same features and trains the same stacks, whose heads are spread over all their
    devices; only the first process evaluates and writes the run, the others return None.
    """
    cfg = resolved(cfg)
    if cfg.shuffle not in SHUFFLES:  # before the features are read, which may take a while
        raise FmcacheError(f"shuffle {cfg.shuffle!r}: choose one of {', '.join(SHUFFLES)}")
    if cfg.domain_inference not in DOMAIN_INFERENCE:
        raise FmcacheError(f"domain inference {cfg.domain_inference!r}: choose one of {', '.join(DOMAIN_INFERENCE)}")
    cache = open_cache(root)
    cfg = replace(cfg, model=entry_name(cache, cfg.dataset, cfg.model, cfg.protocol))
    emb = cache.embeddings(cfg.dataset, cfg.model)
    data = load_probe_data(emb, labels=cfg.labels, attributes=cfg.attributes, kind=cfg.kind, volume=cfg.volume,
                           query_pool=cfg.query_pool, logit_scale=cfg.logit_scale, memory_budget=cfg.memory_budget)
    cfg = replace(cfg, shuffle=_shuffle(cfg.shuffle, data))
    devices.check_same(json.dumps([emb.provenance.get("generation"), data.kind, data.labels, data.attributes,
                                   {k: len(v) for k, v in data.y.items()}]), f"cache entry {cfg.dataset}/{cfg.model}")
    if not devices.is_writer():
        _train_all(cfg, data, on_head)
        return None
    path = new_run_dir(f"{cfg.dataset}-{cfg.model}", root, runs)
    try:
        _sweep_into(path, cfg, data, root, on_head)
    except BaseException:
        discard_run(path)
        raise
    return load_results(path)


def _train_all(cfg: SweepConfig, data: ProbeData, on_head) -> tuple[list[_Trained], dict[str, str]]:
    trained, skipped = [], {}
    for head, grid in cfg.heads.items():
        why = _not_applicable(head, data)
        if why:
            skipped[head] = why
            continue
        stack = _stack(head, grid, data, cfg.seeds)
        if on_head:
            on_head(head, len(stack))
        trained.append(_train(head, stack, data, cfg))
    return trained, skipped


def _sweep_into(path, cfg: SweepConfig, data: ProbeData, root, on_head) -> None:
    trained, skipped = _train_all(cfg, data, on_head)

    sweep_rows, metric_blocks, seed_blocks, predictions = [], [], [], {}
    for t in trained:
        for (li, ai), table in _selections(t, data, cfg.criterion):
            label, attr = data.labels[li], data.attributes[ai]
            sweep_rows.append(table.assign(head=t.head, label=label, attribute=attr))
            chosen = table[table["selected"]]
            if chosen.empty:
                continue
            per_seed = pd.concat([
                _evaluate(t, k, li, ai, data, cfg).assign(
                    head=t.head, hparams=json.dumps(_hp(t.hparams.loc[k])), criterion=cfg.criterion,
                    val_criterion=float(chosen.at[k, "criterion"]), seed=int(chosen.at[k, "seed"]))
                for k in chosen.index
            ], ignore_index=True)
            seed_blocks.append(per_seed)
            point = t.hparams.loc[chosen.index[0]].drop("seed")
            metric_blocks.append(_over_seeds(per_seed).assign(
                hparams=json.dumps(_hp(point)), val_criterion=float(chosen["grid_criterion"].iloc[0])))
            scores = t.test[chosen.index.to_numpy()].astype(np.float32)
            predictions[prediction_key(t.head, label, attr)] = {
                "score": scores[0] if len(scores) == 1 else scores, "seed": chosen["seed"].to_numpy(np.int64),
                "row": data.test_rows, "id": data.test_ids, "y": data.y["test"][:, li], "group": data.g["test"][:, ai],
            }
    tables = {}
    for name, blocks in (("metrics", metric_blocks), ("seed_metrics", seed_blocks)):
        table = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()
        tables[name] = table.assign(dataset=cfg.dataset, model=cfg.model)
    sweep = pd.concat(sweep_rows, ignore_index=True) if sweep_rows else pd.DataFrame()
    write_run(path, config=_config(cfg, data, trained, skipped, str(cache_root(root))), sweep=sweep,
              predictions=predictions, **tables)


def _shuffle(shuffle: str, data: ProbeData) -> str:
    if shuffle == "auto":
        return "chunks" if data.streamed else "rows"
    if shuffle == "rows" and data.streamed:
        raise FmcacheError(
            f"{data.dataset}/{data.model}: the features are larger than half the memory budget, so they are streamed "
            "from the cache, which visits rows chunk by chunk: use --shuffle chunks (or auto), or raise --memory-budget"
        )
    return shuffle


def _not_applicable(head: str, data: ProbeData) -> str:
    if data.multiclass and not get_head(head).multiclass:
        return f"handles binary labels only; the labels are multi-class ({data.n_classes} classes)"
    if get_head(head).needs_text:
        if not data.text:
            return "the model has no text tower (no text prototypes in the cache)"
        if _prompt_label(data) is None:
            return f"the prompts are for label {data.text['prompts'].get('label')!r}, which this sweep does not include"
        n_proto = len(data.text["prototypes"])
        if n_proto != data.n_classes:
            return f"the prompts name {n_proto} classes but the label has {data.n_classes}"
    return ""


def _prompt_label(data: ProbeData) -> int | None:
    label = data.text["prompts"].get("label") or data.labels[0]
    return data.labels.index(label) if label in data.labels else None


def _stack(head: str, grid: Grid, data: ProbeData, seeds: int) -> pd.DataFrame:
    """One row per head to train: its grid point, init seed, label column and attribute column."""
    ht = get_head(head)
    if ht.needs_text:
        labels = [_prompt_label(data)]
    else:
        labels = range(len(data.labels))
    attrs = range(len(data.attributes)) if ht.uses_groups else [0]
    # a head that is not trained comes out the same from every initialisation seed
    seed_list = range(seeds) if ht.trainable else [0]
    rows = [
        {**p, "seed": s, "label": li, "attribute": ai}
        for p in points(grid) for s in seed_list for li in labels for ai in attrs
    ]
    return pd.DataFrame(rows)


def _train(head: str, stack: pd.DataFrame, data: ProbeData, cfg: SweepConfig) -> _Trained:
    hp = {c: stack[c].to_numpy() for c in stack.columns}
    if "C" in hp:  # scikit-learn's L2 strength: the exact full-batch solver
        hp = {k: hp[k] for k in ("C", "label")}
        solver = "lbfgs"
    else:
        solver = "adamw"
    needs_text = get_head(head).needs_text
    X, y, g = data.training_set(text=needs_text, shuffle=cfg.shuffle)
    text = data.text if needs_text else {}
    prototypes = text.get("prototypes")
    if prototypes is not None and cfg.templates == "first":
        # one template left: the heads' template mean is then that template itself
        prototypes = prototypes[:, :1]
    fit = fit_stack(
        head, X, y, g, hp, n_classes=data.n_classes, epochs=cfg.epochs, batch_size=cfg.batch_size,
        seed=cfg.seed, solver=solver, prototypes=prototypes,
        logit_scale=float(text.get("logit_scale", 100.0)), memory_budget=cfg.memory_budget, shuffle=cfg.shuffle,
        window=cfg.window,
    )
    # val (selection) and test (evaluation) are scored under the same rule
    known = cfg.domain_inference == "known"
    inputs = data.inputs(text=needs_text)
    scores = {split: data.pool_scores(fit.predict(inputs[split], data.row_groups(split) if known else None,
                                                  memory_budget=cfg.memory_budget))
              for split in ("val", "test")}
    return _Trained(head, stack, scores["val"], scores["test"])


def _selections(t: _Trained, data: ProbeData, criterion: str):
    """For each (label, attribute): the candidate heads' validation table, each row with its
    own ``criterion``, its grid point's mean over seeds (``grid_criterion``) and whether it
    is one of the chosen point's seeds (``selected``)."""
    uses_groups = get_head(t.head).uses_groups
    for li in sorted(t.hparams["label"].unique()):
        for ai in range(len(data.attributes)):
            mask = t.hparams["label"] == li
            if uses_groups:
                mask &= t.hparams["attribute"] == ai
            ks = t.hparams.index[mask]
            table = validation_scores(data.y["val"][:, li], t.val[ks], data.g["val"][:, ai])
            table.index = ks
            table = pd.concat([t.hparams.loc[ks], table], axis=1)
            table["criterion"] = criterion_value(table, criterion).to_numpy()
            means, chosen = select_point(table["criterion"], t.hparams.loc[ks].drop(columns="seed"))
            table["grid_criterion"] = means
            table["selected"] = chosen
            yield (int(li), ai), table


def _evaluate(t: _Trained, k: int, li: int, ai: int, data: ProbeData, cfg: SweepConfig) -> pd.DataFrame:
    attr = data.attributes[ai]
    names = data.group_names.get(attr) or None
    if data.multiclass:
        return evaluate_multiclass(
            data.y["test"][:, li], t.test[k], {attr: data.g["test"][:, ai]}, convention=cfg.convention,
            n_boot=cfg.n_boot, seed=cfg.seed, group_names={attr: names} if names else None, label=data.labels[li],
        )
    return evaluate(
        data.y["test"][:, li], t.test[k], {attr: data.g["test"][:, ai]}, threshold=cfg.threshold, convention=cfg.convention,
        n_boot=cfg.n_boot, seed=cfg.seed, y_val=data.y["val"][:, li], score_val=t.val[k],
        group_names={attr: names} if names else None,
    ).assign(label=data.labels[li])


def _over_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """One row per metric from the rows of a grid point's seeds.

    ``value`` is the mean over the seeds that have one, ``sd`` their standard deviation
    (ddof=1, NaN for fewer than two) and ``n_seeds`` how many they are; ``ci_low`` and
    ``ci_high`` are the means of the seeds' bootstrap bounds, so they still say how much the
    test split alone moves one head's figure. A single seed's rows come out unchanged.
    """
    keys = ["label", "attribute", "metric", "group"]
    by = per_seed.groupby(keys, sort=False, dropna=False)
    out = by.first()
    out[["value", "ci_low", "ci_high"]] = by[["value", "ci_low", "ci_high"]].mean()
    out["sd"] = by["value"].std(ddof=1)
    out["n_seeds"] = by["value"].count()
    return out.reset_index()[[c for c in per_seed.columns if c != "seed"] + ["sd", "n_seeds"]]


def _protocol(cfg: SweepConfig, data: ProbeData) -> dict[str, Any]:
    """Every switch's value in this run (embed and data ones as the entry was made), and how
    the run differs from the reference code's protocol."""
    info = data.dataset_info
    adapter = str(info.get("adapter", ""))
    volume = data.provenance.get("volume")
    embed = {"preprocess": "model", "queries": "mean", **(data.provenance.get("embed_switches") or {}),
             "slices": str(volume["slices"]) if volume else "n/a"}
    text = {k: str(getattr(cfg, k)) if data.text else "n/a" for k in ("templates", "query_pool", "logit_scale")}
    if embed["queries"] == "n/a":  # a model without queries
        text["query_pool"] = "n/a"
    probe = {"feature": str(cfg.kind), **text, "threshold": str(cfg.threshold), "convention": str(cfg.convention)}
    switches = {**embed, **data_switches(adapter, info.get("options") or {}), **probe}
    reference = reference_values(adapter)
    return {"name": cfg.protocol, "switches": switches, "reference": {k: reference[k] for k in switches},
            "differs": differences(switches, reference), "not_reproduced": list(NOT_REPRODUCED)}


def _hp(row: pd.Series) -> dict[str, float]:
    return {k: (int(v) if k in ("seed", "label", "attribute") else float(v)) for k, v in row.items()}


def _config(cfg: SweepConfig, data: ProbeData, trained: list[_Trained], skipped: dict[str, str], root: str) -> dict[str, Any]:
    import jax

    return {
        **asdict(cfg),
        "root": root,
        "heads": list(cfg.heads),
        "grids": cfg.heads,
        "target_gaps": {h: get_head(h).target_gap for h in cfg.heads},
        "labels": data.labels,
        "attributes": data.attributes,
        "group_names": data.group_names,
        "feature_kind": data.kind,
        "features_streamed": data.streamed,
        "protocol": _protocol(cfg, data),
        "classes": data.classes,  # class names of multi-class labels (their ids index them); [] otherwise
        "heads_trained": {t.head: len(t.hparams) for t in trained},
        "skipped": skipped,
        "cache": {k: data.provenance.get(k) for k in ("weights_id", "weights_sha256", "preprocess", "row_fingerprint", "created")},
        "versions": {"fmcache": __version__, "jax": jax.__version__, "numpy": np.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
