"""Frozen features against fine-tuning (FairMedFM's Table 2): per (dataset, base model, label,
attribute), one row per method with utility, fairness gap, trade-off and worst-group utility,
read from the runs' own metric tables.

Classification: the linear probe (LP) and its mitigation heads on frozen features, then
LoRA and full fine-tuning with theirs (and probes on features of a fine-tuned model, cached
as ``<base>+<run>``). Segmentation: SAM with each prompt, then SAMed and its mitigations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fmcache.fairness import metric_info
from fmcache.report import tables
from fmcache.report.build import load
from fmcache.report.model import Column, Note, Section, Subhead, Table
from fmcache.runs import Run

__all__ = ["COLUMNS", "comparison", "has_finetuned", "headings", "section"]

COLUMNS = ["dataset", "model", "label", "attribute", "task", "family", "method", "utility", "utility_low",
           "utility_high", "gap", "gap_low", "gap_high", "tradeoff", "worst", "run"]
KEYS = ["dataset", "model", "label", "attribute", "task"]
FAMILIES = ("frozen", "fine-tuned")

# (utility, gap, trade-off, worst group) per task; None: the worst group is the lowest group's utility
METRICS = {"classification": ("auc", "auc_delta", "auc_es", "auc_min"),
           "segmentation": ("dsc", "dsc_delta", "dsc_es", None)}
SUMMARY_GROUPS = ("overall", "gap")

# how a head or a method's first part reads in the table, and its place among its family
PROBES = {"linear": ("LP", 0), "zeroshot": ("Zero-shot", 1), "clip_adapt": ("CLIP-Adapt", 1)}
FINETUNES = {"lora": ("LoRA", 0), "full": ("Full fine-tuning", 1), "samed": ("SAMed", 0)}
EMBEDDED_STAGE = 3  # probes on a fine-tuned model's features come after the fine-tuning rows


def base_model(model: str) -> str:
    """The base model of a cache entry: a fine-tuned model is embedded as ``<base>+<run>``."""
    return str(model).split("+", 1)[0]


def is_finetuned(run: Run, kind: str) -> bool:
    """Whether ``run`` trained the model itself (fine-tuning or SAMed) rather than reading frozen features."""
    return kind == "finetune" or (kind == "segmentation" and "finetune" in run.config)


def has_finetuned(loaded: Sequence[tuple[Run, str]]) -> bool:
    """Whether any loaded run (as :func:`fmcache.report.build.load` returns them) fine-tuned a model."""
    return any(is_finetuned(r, k) for r, k in loaded)


def comparison(runs: Sequence[str | os.PathLike[str] | Run]) -> pd.DataFrame:
    """The comparison of frozen features and fine-tuning as a tidy frame.

    Parameters
    ----------
    runs
        Run directories or loaded runs: probe sweeps, fine-tuning runs, segmentation prompt
        sweeps and SAMed runs. A (dataset, model, method) found in several runs is taken
        from the newest (config ``created``).

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, base model, label, attribute, method), columns
        :data:`COLUMNS`: ``task`` ("classification" or "segmentation", which says what
        the numbers measure), ``utility`` (AUC, or Dice for segmentation) with its bootstrap
        interval, ``gap`` (``auc_delta`` / ``dsc_delta``) with its interval, ``tradeoff``
        (``auc_es`` / ``dsc_es``), ``worst`` (``auc_min`` / the lowest group Dice) and the
        ``run`` it came from; ``family`` is "frozen" or "fine-tuned". Rows are in display
        order: per table, frozen then fine-tuned, a base method before its mitigations.
    """
    return tidy(load(runs))


def tidy(loaded: Sequence[tuple[Run, str]]) -> pd.DataFrame:
    """:func:`comparison` of runs already loaded with their kinds."""
    rows, seen = [], {}
    # newest first, so that a method repeated in an older run is the one left out
    newest = sorted(enumerate(loaded), key=lambda x: str(x[1][0].config.get("created", "")), reverse=True)
    for given, (run, kind) in newest:
        for row in _rows(run, kind):
            key = (row["dataset"], row["_entry"], row["method"])
            if seen.setdefault(key, run.path.name) == run.path.name:
                rows.append({**row, "_given": given, "_appearance": len(rows)})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    # tables and the methods within a family keep the order the runs were given in
    frame = pd.DataFrame(rows).sort_values(["_given", "_appearance"], kind="stable")
    frame["_table"] = frame.groupby(KEYS, sort=False, dropna=False).ngroup()
    frame = frame.sort_values(["_table", "_order"], kind="stable")
    return frame[COLUMNS].reset_index(drop=True)


def _rows(run: Run, kind: str) -> list[dict]:
    m = _one_convention(run.metrics, run.config)
    if m.empty:
        return []
    task = "segmentation" if kind == "segmentation" else "classification"
    finetuned = is_finetuned(run, kind)
    m = m.assign(**{k: m[k] if k in m else run.config.get(k) for k in ("dataset", "model")})
    if "label" not in m:
        m = m.assign(label="")
    # a prompt sweep's head is its prompt; SAMed runs have no prompt
    m = m.assign(_head=m["prompt"].fillna(m["head"]) if "prompt" in m and task == "segmentation" else m["head"])
    out = []
    for (dataset, entry, head, label, attribute), block in m.groupby(
            ["dataset", "model", "_head", "label", "attribute"], sort=False, dropna=False):
        values = _values(block, task)
        if np.isnan(values["utility"]) and np.isnan(values["gap"]):
            continue  # rows of an attribute this run measured nothing comparable on
        family, method, order = _method(str(head), str(entry), task, finetuned)
        out.append({"dataset": dataset, "model": base_model(entry), "label": label, "attribute": attribute,
                    "task": task, "family": family, "method": method, **values, "run": run.path.name,
                    "_entry": entry, "_order": order})
    return out


def _one_convention(m: pd.DataFrame, config: dict) -> pd.DataFrame:
    """A run evaluated under several conventions repeats every row; keep the one it was run with."""
    if m.empty or "convention" not in m or m["convention"].nunique() < 2:
        return m
    wanted = config.get("convention")
    keep = wanted if isinstance(wanted, str) and (m["convention"] == wanted).any() else m["convention"].iloc[0]
    return m[m["convention"] == keep]


def _method(head: str, entry: str, task: str, finetuned: bool) -> tuple[str, str, tuple]:
    """(family, displayed name, sort key within its table) of one head of a run."""
    if finetuned:
        first, *mitigations = head.split("+")
        name, stage = FINETUNES.get(first, (first, 2))
        return "fine-tuned", " + ".join([name, *mitigations]), (1, stage, first, bool(mitigations))
    if task == "segmentation":
        return "frozen", f"SAM ({head})", (0, 0, "", False)
    name, stage = PROBES.get(head, (f"{PROBES['linear'][0]} + {head}", 0))
    mitigated = head not in PROBES
    if entry != base_model(entry):
        # features of a fine-tuned model: a row of the fine-tuned family, named by its cache entry
        return "fine-tuned", f"{name} on {entry}", (1, EMBEDDED_STAGE, entry, mitigated)
    return "frozen", name, (0, stage, "", mitigated)


def _values(block: pd.DataFrame, task: str) -> dict[str, float]:
    utility, gap, tradeoff, worst = METRICS[task]
    u, g, t = (_pick(block, metric, group) for metric, group in
               ((utility, "overall"), (gap, "gap"), (tradeoff, "gap")))
    if worst is not None:
        w = _pick(block, worst, "gap")[0]
    else:
        groups = block[(block["metric"] == utility) & ~block["group"].isin(SUMMARY_GROUPS)]["value"]
        w = float(groups.min()) if len(groups) else np.nan
    return {"utility": u[0], "utility_low": u[1], "utility_high": u[2], "gap": g[0], "gap_low": g[1],
            "gap_high": g[2], "tradeoff": t[0], "worst": w}


def _pick(block: pd.DataFrame, metric: str, group: str) -> tuple[float, float, float]:
    hit = block[(block["metric"] == metric) & (block["group"] == group)]
    if hit.empty:
        return (np.nan, np.nan, np.nan)
    r = hit.iloc[0]
    return tuple(float(r.get(c, np.nan)) for c in ("value", "ci_low", "ci_high"))


def headings(task: str) -> dict[str, str]:
    """Column titles of the comparison for ``task``, from the metrics' own headings."""
    utility, gap, tradeoff, worst = METRICS[task]
    return {"utility": metric_info(utility).heading, "gap": metric_info(gap).heading,
            "tradeoff": metric_info(tradeoff).heading,
            "worst": metric_info(worst).heading if worst else f"Worst-group {metric_info(utility).heading}"}


def section(frame: pd.DataFrame) -> Section:
    """The report's section: a table per (dataset, base model, label, attribute) of :func:`comparison`."""
    sec = Section("compare", "Frozen features vs fine-tuning",
                  intro=("Each method on the same test set: frozen features (linear probe, its mitigation heads, "
                         "SAM prompts) above the fine-tuned models (LoRA, full fine-tuning, SAMed, and probes on "
                         "features of a fine-tuned model)."))
    if frame.empty:
        sec.blocks.append(Note("The runs hold no utility or gap rows to compare."))
        return sec
    for key, block in frame.groupby(KEYS, sort=False, dropna=False):
        dataset, model, label, attribute, _ = key
        sid = tables.slug("compare", *key[:4])
        where = f"{dataset} · {model}" + (f", label {label}" if label else "") + f", by {attribute}"
        sec.blocks.append(Subhead(sid, where))
        sec.blocks.append(_table(block.reset_index(drop=True), f"t-{sid}", where))
    return sec


def _table(block: pd.DataFrame, tid: str, where: str) -> Table:
    task = block["task"].iloc[0]
    utility, gap, tradeoff, worst = METRICS[task]
    titles = headings(task)
    cols = [Column("family", "Family"), Column("method", "Method"),
            Column("utility", titles["utility"], ci=("utility_low", "utility_high"),
                   better=tables.better(utility, "paper")),
            Column("gap", titles["gap"], ci=("gap_low", "gap_high"), better=tables.better(gap, "paper")),
            Column("tradeoff", titles["tradeoff"], better=tables.better(tradeoff, "paper")),
            Column("worst", titles["worst"], better="higher"), Column("run", "Run")]
    return Table(tid, f"Frozen features vs fine-tuning: {where}", block, cols,
                 caption=("[low, high] is each run's percentile bootstrap interval over the test samples "
                          "(stratified by group); ★ marks the best value of each column."),
                 csv_name=f"{tid}.csv")
