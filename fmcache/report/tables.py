"""The report's tables as data frames: what is displayed is exactly what the CSV holds."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fmcache.fairness import metric_info
from fmcache.report.model import Column, Table
from fmcache.runs import BASELINE, Run, compare_to_baseline

# (metric, summary group) of the headline table's columns
HEADLINE = (
    ("auc", "overall"),
    ("auc_min", "gap"),
    ("auc_delta", "gap"),
    ("eqodds", "gap"),
    ("dp", "gap"),
    ("ece", "overall"),
    ("auc_es", "gap"),
)
KEYS = ["dataset", "label", "attribute"]


def slug(*parts: object) -> str:
    """An HTML id / file name from free text."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def better(metric: str, convention: str) -> str | None:
    """"higher" or "lower": which end of a column of ``metric`` values the star marks."""
    higher = metric_info(metric, convention).higher_is_better
    return None if higher is None else "higher" if higher else "lower"


def headline(cls: pd.DataFrame, dataset: str, label: str, attribute: str, convention: str) -> Table:
    """Utility, gaps and trade-off per (model, method) of one slice, with intervals."""
    m = cls[(cls["dataset"] == dataset) & (cls["label"] == label) & (cls["attribute"] == attribute)
            & (cls["convention"] == convention)]
    wanted = pd.MultiIndex.from_tuples(HEADLINE)
    m = m[pd.MultiIndex.from_frame(m[["metric", "group"]]).isin(wanted)]
    # runs with several seeds carry the spread across them; older runs have no such columns
    m = m.assign(sd=m.get("sd", np.nan), n_seeds=m.get("n_seeds", 1))
    wide = m.pivot_table(index=["model", "method"], columns="metric",
                         values=["value", "ci_low", "ci_high", "sd", "n", "n_seeds"],
                         aggfunc="first", sort=False, dropna=False)
    rows = []
    for (model, method), r in wide.iterrows():
        row = {"dataset": dataset, "label": label, "attribute": attribute, "model": model, "method": method}
        for metric, _ in HEADLINE:
            for suffix, col in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high"), ("_sd", "sd")):
                row[metric + suffix] = float(r.get((col, metric), np.nan))
        n = r.get(("n", "auc"), np.nan)
        row["n_test"] = int(n) if np.isfinite(n) else 0
        seeds = r.get(("n_seeds", "auc"), np.nan)
        row["n_seeds"] = int(seeds) if np.isfinite(seeds) else 1
        rows.append(row)
    frame = pd.DataFrame(rows)
    repeated = bool(len(frame)) and frame["n_seeds"].max() > 1
    if not repeated:  # single-seed tables read (and download) as they always have
        frame = frame.drop(columns=[c for c in frame if c.endswith("_sd")] + ["n_seeds"])
    cols = [Column("model", "Model"), Column("method", "Method")]
    cols += [Column(metric, metric_info(metric, convention).heading, ci=(f"{metric}_ci_low", f"{metric}_ci_high"),
                    sd=f"{metric}_sd" if repeated else None, better=better(metric, convention))
             for metric, _ in HEADLINE]
    cols.append(Column("n_test", "n (test)", decimals=0))
    if repeated:
        cols.append(Column("n_seeds", "Seeds", decimals=0))
    spread = ("values are means over the seeds of the chosen configuration ± their standard deviation, [low, high] "
              "the mean of the seeds' 95% bootstrap intervals" if repeated else "[low, high] is the 95% bootstrap interval")
    tid = slug("t", dataset, label, attribute, "headline")
    return Table(tid, f"Headline: {dataset}, label {label}, by {attribute}", frame, cols,
                 caption=(f"Test-set metrics of the heads chosen on validation, {convention} convention; "
                          f"{spread}; ★ marks the best value of each column."),
                 csv_name=f"{tid}.csv")


def mitigation(cls: pd.DataFrame, dataset: str, label: str, attribute: str, convention: str,
               target_gaps: dict[str, str]) -> Table | None:
    """Each method's target gap and AUC next to the baseline's, per model; None without a baseline.

    ``target_gaps`` maps a method to the gap it is built to shrink (from the runs' configs).
    """
    m = cls[(cls["dataset"] == dataset) & (cls["label"] == label) & (cls["convention"] == convention)]
    rows = []
    for model, block in m.groupby("model", sort=False):
        block = block.assign(head=block["method"])
        try:
            cmp = compare_to_baseline(block, attribute, target_gaps=target_gaps, baseline=BASELINE, label=label,
                                      convention=convention)
        except KeyError:  # a method without the gap it targets: nothing to compare
            continue
        if cmp.empty:
            continue
        base = block[(block["head"] == BASELINE) & (block["attribute"] == attribute) & (block["metric"] == "auc")
                     & (block["group"] == "overall")]["value"].iloc[0]
        for r in cmp.itertuples(index=False):
            verdict = ("n/a" if np.isnan(r.change) else "clear reduction" if r.clear
                       else "within interval" if r.reduces else "no reduction")
            rows.append({"dataset": dataset, "label": label, "attribute": attribute, "model": model, "method": r.head,
                         "gap_metric": r.gap, "baseline_gap": r.value - r.change, "gap": r.value, "change": r.change,
                         "baseline_auc": float(base), "auc": r.auc, "auc_change": r.auc_change, "verdict": verdict,
                         "convention": convention})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    # the baseline gap recomputed from value - change can be off in the last bit
    frame["baseline_gap"] = frame["baseline_gap"].round(12)
    tid = slug("t", dataset, label, attribute, "mitigation")
    directions = {better(g, convention) for g in frame["gap_metric"]}
    cols = [Column("model", "Model"), Column("method", "Method"), Column("gap_metric", "Target gap"),
            Column("baseline_gap", f"Gap with {BASELINE}"), Column("gap", "Gap"),
            # the star marks the fairest change only where every target gap points the same way
            Column("change", "Gap change", better=directions.pop() if len(directions) == 1 else None, signed=True),
            Column("baseline_auc", f"AUC with {BASELINE}"), Column("auc", "AUC"),
            Column("auc_change", "AUC change", better=better("auc", convention), signed=True),
            Column("verdict", "Reading")]
    return Table(tid, f"Mitigations against {BASELINE}: {dataset}, label {label}, by {attribute}", frame, cols,
                 caption=("Each method on the gap it is built to shrink. A clear reduction: the method's interval "
                          f"lies wholly below the {BASELINE} value; within interval: lower, but not clearly."),
                 csv_name=f"{tid}.csv")


def runs_table(runs: Sequence[tuple[Run, str]]) -> Table:
    """One row per run: what was trained, how it was selected and evaluated."""
    rows = []
    for run, kind in runs:
        c = run.config
        rows.append({
            "run": run.path.name, "kind": kind, "dataset": c.get("dataset"), "model": c.get("model"),
            "methods": ", ".join(sorted(run.metrics["head"].unique())) if "head" in run.metrics else "",
            "labels": ", ".join(c.get("labels") or []), "attributes": ", ".join(c.get("attributes") or []),
            "features": c.get("feature_kind", ""), "convention": c.get("convention", ""),
            "threshold": str(c.get("threshold", "")), "selection": c.get("criterion", ""),
            "domain_inference": c.get("domain_inference", ""), "templates": c.get("templates", ""),
            "bootstrap": c.get("n_boot", ""), "seed": c.get("seed", ""), "init_seeds": c.get("seeds", ""),
            "epochs": c.get("epochs", ""), "fmcache": (c.get("versions") or {}).get("fmcache", ""),
            "created": c.get("created", ""),
        })
    frame = pd.DataFrame(rows).astype(str)
    cols = [Column(k, t, wrap=k == "methods") for k, t in (
        ("run", "Run"), ("kind", "Kind"), ("dataset", "Dataset"), ("model", "Model"), ("methods", "Methods"),
        ("labels", "Labels"), ("attributes", "Attributes"), ("features", "Features"), ("convention", "Convention"),
        ("threshold", "Threshold"), ("selection", "Selected on val by"),
        ("domain_inference", "domain_ind inference"), ("templates", "Text templates"), ("bootstrap", "Bootstrap resamples"),
        ("seed", "Seed"), ("init_seeds", "Init seeds"), ("epochs", "Epochs"), ("fmcache", "fmcache"),
        ("created", "Created"))]
    return Table("t-runs", "Runs", frame, cols, caption="Every run the report reads.", csv_name="runs.csv")


def provenance_table(runs: Sequence[tuple[Run, str]]) -> Table:
    """Where each run's features came from: weights, preprocessing, sample fingerprint."""
    rows = []
    for run, _ in runs:
        c = run.config.get("cache") or {}
        pre = c.get("preprocess") or {}
        rows.append({"dataset": run.config.get("dataset"), "model": run.config.get("model"),
                     "weights": c.get("weights_id") or "", "sha256": (c.get("weights_sha256") or "")[:16],
                     "preprocess": json.dumps(pre, separators=(",", ":")) if pre else "",
                     "rows": c.get("row_fingerprint") or "", "cached": c.get("created") or ""})
    frame = pd.DataFrame(rows).astype(str).drop_duplicates()
    cols = [Column(k, t, wrap=k in ("weights", "preprocess")) for k, t in (
        ("dataset", "Dataset"), ("model", "Model"), ("weights", "Weights"), ("sha256", "SHA-256 (first 16)"),
        ("preprocess", "Preprocessing"), ("rows", "Samples fingerprint"), ("cached", "Embedded"))]
    return Table("t-provenance", "Cache provenance", frame, cols, csv_name="provenance.csv")


def protocol_table(runs: Sequence[tuple[Run, str]]) -> Table | None:
    """Each switch of the protocol: the reference code's value and each run's (None when no
    run records its switches)."""
    recorded = [(run, run.config["protocol"]) for run, _ in runs if run.config.get("protocol")]
    if not recorded:
        return None
    names = list(dict.fromkeys(k for _, p in recorded for k in p["switches"]))
    frame = pd.DataFrame({"switch": names, "reference": [recorded[0][1]["reference"].get(n, "") for n in names]})
    cols = [Column("switch", "Switch"), Column("reference", "Reference code")]
    for i, (run, p) in enumerate(recorded):
        frame[f"run{i}"] = [p["switches"].get(n, "") for n in names]
        cols.append(Column(f"run{i}", f"{run.config.get('model')} on {run.config.get('dataset')} ({p['name']})"))
    return Table("t-protocol", "Protocol switches", frame.astype(str), cols,
                 caption="Every switch of each run beside the FairMedFM reference code's value (`fmcache protocols` "
                 "says what each does and where it is stated); n/a: the switch does not touch this model or "
                 "dataset.", csv_name="protocol.csv")


def protocol_notes(runs: Sequence[tuple[Run, str]]) -> list[str]:
    """Per run, how it differs from the reference protocol; then what no switch reproduces."""
    recorded = [(run, run.config["protocol"]) for run, _ in runs if run.config.get("protocol")]
    notes = [f"{run.path.name} differs from the reference code's protocol in: " + "; ".join(p["differs"])
             if p["differs"] else f"{run.path.name} sets every switch as the reference code does."
             for run, p in recorded]
    if recorded:
        notes.append("No switch reproduces: " + "; ".join(recorded[0][1].get("not_reproduced") or []) + ".")
    return notes


def groups_table(frame: pd.DataFrame) -> Table:
    """Group sizes per split; ``frame`` has dataset, attribute, group, train, val, test, source."""
    cols = [Column("dataset", "Dataset"), Column("attribute", "Attribute"), Column("group", "Group"),
            Column("train", "Train", decimals=0), Column("val", "Val", decimals=0), Column("test", "Test", decimals=0),
            Column("source", "Counted from")]
    return Table("t-groups", "Attributes and group sizes", frame, cols,
                 caption="Samples per split in each group (samples whose group is unknown are left out).",
                 csv_name="groups.csv")


def ranks_table(result, what: str, tid: str, blocks: str = "datasets") -> Table:
    """Average ranks behind a critical-difference diagram."""
    frame = result.ranks.rename("avg_rank").rename_axis("method").reset_index()
    return Table(tid, f"Average ranks: {what}", frame,
                 [Column("method", "Method"), Column("avg_rank", "Average rank", better="lower", decimals=2)],
                 caption=(f"Over {result.n_datasets} {blocks}; critical difference {result.cd:.2f}; "
                          f"Friedman p = {result.friedman.pvalue:.2g}."), csv_name=f"{tid}.csv")


def representation_table(frame: pd.DataFrame) -> Table:
    """Attribute predictability per (dataset, model, attribute)."""
    cols = [Column("dataset", "Dataset"), Column("model", "Model"), Column("attribute", "Attribute"),
            Column("auc", "Attribute AUC", ci=("ci_low", "ci_high")), Column("n", "n", decimals=0)]
    return Table("t-representation", "How well a linear probe predicts the attribute from the features", frame, cols,
                 caption=("Cross-validated AUC of a logistic regression predicting the group (0.5 = not "
                          "linearly readable), on a subsample; interval over the folds."),
                 csv_name="representation.csv")


def segmentation_table(seg: pd.DataFrame, dataset: str, attribute: str) -> Table:
    """Dice per group per prompt type, with the Dice gap; the NSD and its gap where a run measured it."""
    m = seg[(seg["dataset"] == dataset) & (seg["attribute"] == attribute)]
    groups = [g for g in pd.unique(m["group"]) if g not in ("overall", "gap")]
    with_nsd = bool((m["metric"] == "nsd").any())
    cells = [("dsc", "overall", "dsc"), *[("dsc", g, f"dsc_{g}") for g in groups], ("dsc_delta", "gap", "dsc_delta")]
    if with_nsd:
        cells += [("nsd", "overall", "nsd"), ("nsd_delta", "gap", "nsd_delta")]
    rows = []
    for (model, prompt), block in m.groupby(["model", "prompt"], sort=False):
        row = {"dataset": dataset, "attribute": attribute, "model": model, "prompt": prompt}
        for metric, group, key in cells:
            hit = block[(block["metric"] == metric) & (block["group"] == group)]
            for suffix, col in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                row[key + suffix] = float(hit[col].iloc[0]) if len(hit) else np.nan
        rows.append(row)
    dice, gap = metric_info("dsc"), metric_info("dsc_delta")
    cols = [Column("model", "Model"), Column("prompt", "Prompt"),
            Column("dsc", dice.heading, ci=("dsc_ci_low", "dsc_ci_high"), better=better("dsc", "paper"))]
    cols += [Column(f"dsc_{g}", f"{dice.heading}, {g}", ci=(f"dsc_{g}_ci_low", f"dsc_{g}_ci_high"),
                    better=better("dsc", "paper")) for g in groups]
    cols.append(Column("dsc_delta", gap.heading, ci=("dsc_delta_ci_low", "dsc_delta_ci_high"),
                       better=better("dsc_delta", "paper")))
    if with_nsd:
        cols += [Column(k, metric_info(k).heading, ci=(f"{k}_ci_low", f"{k}_ci_high"), better=better(k, "paper"))
                 for k in ("nsd", "nsd_delta")]
    tid = slug("t", dataset, attribute, "dice")
    return Table(tid, f"Dice per group and prompt: {dataset}, by {attribute}", pd.DataFrame(rows), cols,
                 caption="[low, high] is the bootstrap interval; ★ marks the best value of each column.",
                 csv_name=f"{tid}.csv")
