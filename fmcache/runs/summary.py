"""Readings of a run's metric table: each mitigation against the baseline head."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from fmcache.fairness import metric_info

# the head every mitigation is compared with: the linear probe (ERM)
BASELINE = "linear"
DEFAULT_TARGET = "auc_delta"


def compare_to_baseline(
    metrics: pd.DataFrame,
    attribute: str,
    *,
    target_gaps: Mapping[str, str] | None = None,
    baseline: str = BASELINE,
    utility: str = "auc",
    label: str | None = None,
    convention: str = "paper",
) -> pd.DataFrame:
    """Each head's target gap and utility next to the baseline's.

    Parameters
    ----------
    metrics : a run's metric table (``Run.metrics``), or several runs' concatenated. For a run
        with several seeds its values are means over them and its intervals the means of the
        seeds' bootstrap intervals, and so is what is compared here.
    attribute, label : the slice compared (``label`` default: the table's first).
    target_gaps : the gap each head is built to shrink (``Run.target_gaps``); a head not
        named there is read on the AUC gap.
    baseline, utility : the head compared with, and the overall metric shown beside the gap.
    convention : the metric convention of the table, which says which way each gap is fairer.

    Returns
    -------
    pandas.DataFrame
        One row per head: ``gap`` (its name), ``value``, ``baseline``, ``change``, the utility
        and its change; ``fairer`` says which way the gap is fairer ("lower", or "higher" for
        a score such as the ``fairmedfm`` equalized odds); ``reduces`` is True when the head's
        gap is fairer than the baseline's, ``clear`` when its bootstrap interval also lies
        wholly on the fairer side of the baseline's value.
    """
    label = label if label is not None else metrics["label"].iloc[0]
    m = metrics[(metrics["label"] == label) & (metrics["attribute"] == attribute)]
    gaps = m[m["group"] == "gap"].set_index(["head", "metric"])
    util = m[(m["metric"] == utility) & (m["group"] == "overall")].set_index("head")["value"]
    if baseline not in util.index:
        return pd.DataFrame()
    rows = []
    for head in util.index.drop(baseline):
        gap = (target_gaps or {}).get(head, DEFAULT_TARGET)
        g, b = gaps.loc[(head, gap)], gaps.loc[(baseline, gap)]
        higher = metric_info(gap, convention).higher_is_better
        if higher:
            reduces, clear = g["value"] > b["value"], g["ci_low"] > b["value"]
        else:
            reduces, clear = g["value"] < b["value"], g["ci_high"] < b["value"]
        rows.append({
            "head": head, "gap": gap, "value": g["value"], "baseline": b["value"], "change": g["value"] - b["value"],
            utility: util[head], f"{utility}_change": util[head] - util[baseline],
            "fairer": "higher" if higher else "lower", "reduces": bool(reduces), "clear": bool(clear),
        })
    return pd.DataFrame(rows)
