"""Short readings of a sweep's metric table: a headline per head, and the comparison with ERM."""

from __future__ import annotations

import numpy as np
import pandas as pd

HEADLINE = (("auc", "overall"), ("auc_min", "gap"), ("auc_delta", "gap"), ("eqodds", "gap"), ("dp", "gap"))


def headline(metrics: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """One row per (attribute, head) of ``label`` (default the first): test AUC, worst-group
    AUC and the main gaps, each as "value [ci_low, ci_high]" text."""
    label = label if label is not None else metrics["label"].iloc[0]
    m = metrics[metrics["label"] == label]
    rows = []
    for (attr, head), block in m.groupby(["attribute", "head"], sort=False):
        row = {"label": label, "attribute": attr, "head": head}
        for metric, group in HEADLINE:
            hit = block[(block["metric"] == metric) & (block["group"] == group)]
            row[metric] = _fmt(hit.iloc[0]) if len(hit) else ""
        rows.append(row)
    return pd.DataFrame(rows)


# the gap each mitigation is built to shrink
TARGET_GAP = {
    "resample": "auc_delta", "groupdro": "auc_delta", "domain_ind": "auc_delta", "clip_adapt": "auc_delta",
    "zeroshot": "auc_delta", "laftr": "dp", "fairpenalty": "dp", "laftr_eqodd": "eqodds",
    "fairpenalty_eo": "eqodds", "laftr_eqopp": "eqopp",
}


def compare_to_baseline(
    metrics: pd.DataFrame, attribute: str, *, baseline: str = "linear", utility: str = "auc", label: str | None = None,
) -> pd.DataFrame:
    """Each head's target gap (:data:`TARGET_GAP`) and utility next to the baseline's.

    ``reduces`` is True when the head's gap is below the baseline's; ``clear`` when its
    interval's upper end also lies below the baseline's value (only with bootstrap intervals).
    """
    label = label if label is not None else metrics["label"].iloc[0]
    m = metrics[(metrics["label"] == label) & (metrics["attribute"] == attribute)]
    gaps = m[m["group"] == "gap"].set_index(["head", "metric"])
    util = m[(m["metric"] == utility) & (m["group"] == "overall")].set_index("head")["value"]
    if baseline not in util.index:
        return pd.DataFrame()
    rows = []
    for head in util.index.drop(baseline):
        gap = TARGET_GAP.get(head, "auc_delta")
        g, b = gaps.loc[(head, gap)], gaps.loc[(baseline, gap)]
        rows.append({
            "head": head, "gap": gap, "value": g["value"], "baseline": b["value"], "change": g["value"] - b["value"],
            utility: util[head], f"{utility}_change": util[head] - util[baseline],
            "reduces": bool(g["value"] < b["value"]), "clear": bool(g["ci_high"] < b["value"]),
        })
    return pd.DataFrame(rows)


def sentences(comparison: pd.DataFrame, attribute: str, *, utility: str = "auc", baseline: str = "linear") -> list[str]:
    """Plain-language lines, one per head, each built from the numbers in ``comparison``."""
    out = []
    for r in comparison.itertuples(index=False):
        d_util = getattr(r, f"{utility}_change")
        what = f"the {attribute} {r.gap} ({r.baseline:.3f} with {baseline})"
        if np.isnan(r.change):
            out.append(f"{r.head}: {what} could not be computed")
        elif r.reduces:
            strength = "" if r.clear else "; within the bootstrap interval, so not a clear reduction"
            out.append(f"{r.head} lowers {what} to {r.value:.3f}, {utility.upper()} change {d_util:+.3f}{strength}")
        else:
            out.append(f"{r.head} does not lower {what}: {r.value:.3f}, {utility.upper()} change {d_util:+.3f}")
    return out


def _fmt(row: pd.Series) -> str:
    if np.isnan(row["value"]):
        return "n/a"
    if np.isnan(row["ci_low"]):
        return f"{row['value']:.3f}"
    return f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
