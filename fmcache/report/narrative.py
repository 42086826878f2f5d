"""The plain-language summary, generated from the tables shown on the page.

Every function here reads only a table's frame (the same data its CSV download holds)
and formats numbers exactly as the table cells do, so each number in a sentence can be
found in the table the sentence links to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmcache.fairness import metric_info
from fmcache.report.model import Sentence
from fmcache.runs import BASELINE

LISTED = 3  # mitigations named per slice; the rest are in the table


def in_sentence(metric: str, convention: str = "paper") -> str:
    """A metric's title as written mid-sentence: "demographic-parity gap", but "AUC gap"."""
    title = metric_info(metric, convention).title
    return title if title[1:2].isupper() else title[:1].lower() + title[1:]


def num(v: float, signed: bool = False) -> str:
    """A number as the tables print it."""
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def interval(v: float, lo: float, hi: float) -> str:
    """"value [low, high]" as the tables print it (the value alone without an interval)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return num(v)
    return f"{num(v)} [{num(lo)}, {num(hi)}]"


def gap_sentence(headline: pd.DataFrame, table_id: str, *, metric: str = "auc_delta") -> Sentence | None:
    """Which models' baseline gap has a bootstrap interval that excludes 0.

    Parameters
    ----------
    headline
        The frame of a headline table (one dataset, label and attribute).
    table_id
        The id of that table on the page.
    metric
        The gap read.

    Returns
    -------
    Sentence or None
        None when the table has no baseline row with that gap.
    """
    base = headline[(headline["method"] == BASELINE) & np.isfinite(headline[metric].astype(float))]
    if base.empty:
        return None
    first = base.iloc[0]
    where = f"On {first['dataset']} ({first['label']}), the {BASELINE} probe's AUC gap between {first['attribute']} groups"
    # judged on the printed bounds, so that "excludes 0" never sits next to a printed 0.000
    lo = base[f"{metric}_ci_low"].astype(float).round(3)
    hi = base[f"{metric}_ci_high"].astype(float).round(3)
    excludes = (lo > 0) | (hi < 0)
    parts = {flag: ", ".join(f"{r['model']} {interval(r[metric], r[f'{metric}_ci_low'], r[f'{metric}_ci_high'])}"
                             for _, r in base[mask].iterrows())
             for flag, mask in (("ex", excludes & np.isfinite(lo)), ("in", ~excludes & np.isfinite(lo)),
                                ("none", ~np.isfinite(lo)))}
    clauses = []
    if parts["ex"]:
        clauses.append(f"has a bootstrap interval that excludes 0 for {parts['ex']}")
    if parts["in"]:
        clauses.append(f"has an interval that includes 0 for {parts['in']}")
    if parts["none"]:
        clauses.append(f"has no interval for {parts['none']}")
    return Sentence(f"{where} {'; it '.join(clauses)}.", table_id)


def mitigation_sentences(table: pd.DataFrame, table_id: str) -> list[Sentence]:
    """Which methods lower the gap they target, by how much, and at what cost in AUC.

    Parameters
    ----------
    table
        The frame of a mitigation table (one dataset, label and attribute).
    table_id
        The id of that table on the page.

    Returns
    -------
    list of Sentence
    """
    if table.empty:
        return []
    first = table.iloc[0]
    where = f"On {first['dataset']} ({first['label']}), by {first['attribute']}"
    lower = table[table["verdict"].isin(["clear reduction", "within interval"])].sort_values("change", kind="stable")
    total = int((table["verdict"] != "n/a").sum())
    if lower.empty:
        return [Sentence(f"{where}, none of the {total} mitigation results lowers the gap it targets below "
                         f"the {BASELINE} value.", table_id)]
    named = []
    for _, r in lower.head(LISTED).iterrows():
        model = "" if table["model"].nunique() == 1 else f" on {r['model']}"
        how = "clearly" if r["verdict"] == "clear reduction" else "within the interval"
        gap = in_sentence(r["gap_metric"], r["convention"])
        named.append(f"{r['method']}{model} lowers the {gap} from {num(r['baseline_gap'])} to {num(r['gap'])} "
                     f"({how}) at an AUC change of {num(r['auc_change'], True)}")
    more = len(lower) - len(named)
    tail = f"; {more} more in the table" if more > 0 else ""
    out = [Sentence(f"{where}, {len(lower)} of {total} mitigation results lower the gap they target: "
                    f"{'; '.join(named)}{tail}.", table_id)]
    clear = lower[lower["verdict"] == "clear reduction"]
    if clear.empty:
        out.append(Sentence(f"{where}, no reduction is clear: every mitigated gap's interval reaches the "
                            f"{BASELINE} value.", table_id))
    return out


def summary(headlines: list[tuple[pd.DataFrame, str]], mitigations: list[tuple[pd.DataFrame, str]]) -> list[Sentence]:
    """All summary sentences: the baseline gaps first, then what each mitigation does."""
    out = [s for frame, tid in headlines if (s := gap_sentence(frame, tid)) is not None]
    for frame, tid in mitigations:
        out += mitigation_sentences(frame, tid)
    return out
