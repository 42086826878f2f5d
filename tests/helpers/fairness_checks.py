"""The criterion every mitigation test applies, in the JAX heads and in fine-tuning alike: the
paired bootstrap of a fairness metric's drop against the baseline, a floor on the drop and
on the utility, and both classes still predicted. Metrics are functions of (labels, scores,
groups) on test rows; AUCs come from ranks (Mann-Whitney, ties averaged), as roc_auc_score is
too slow for hundreds of resamples."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def dp_gap(y, s, g) -> float:
    hat = s > 0.5
    return abs(hat[g == 0].mean() - hat[g == 1].mean())


def eo_gap(y, s, g) -> float:
    hat = s > 0.5
    return max(abs(hat[(g == 0) & (y == c)].mean() - hat[(g == 1) & (y == c)].mean()) for c in (0, 1))


def auc(y, s):
    r = rankdata(s)
    pos = y == 1
    n1 = pos.sum()
    return (r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))


def auc_gap(y, s, g) -> float:
    return abs(auc(y[g == 0], s[g == 0]) - auc(y[g == 1], s[g == 1]))


def worst_cell_loss(y, s, g) -> float:
    """Cross-entropy of the worst (group, label) cell: GroupDRO's groups."""
    s = np.clip(s, 1e-7, 1 - 1e-7)
    rows = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    return max(rows[(g == a) & (y == c)].mean() for a in (0, 1) for c in (0, 1))


def worst_group_auc_shortfall(y, s, g) -> float:
    """1 - the worst group's AUC, so that lower is better as for the gaps."""
    return 1.0 - min(auc(y[g == a], s[g == a]) for a in (0, 1))


def lowers(metric, y, g, base, new, n_boot: int = 300, seed: int = 0) -> tuple[bool, dict[str, float]]:
    """Does ``new`` lower ``metric`` against ``base`` on these test rows, and is it still a
    classifier? The paired difference metric(base) - metric(new), bootstrapped over test
    rows, must have a 95% interval above 0, and the metric shrink by a fifth at least; test
    AUC within 0.05 of the base's; both classes predicted at 0.5.

    The bootstrap holds training fixed, so training noise alone (another initialisation)
    can give an interval clear of 0; the one-fifth floor is what tells a method from that.
    Both classes at 0.5 is what rules out a head that meets a thresholded gap by predicting
    one class for everyone (a gap of 0 by construction).
    """
    rng = np.random.default_rng(seed)
    n = y.size
    diffs = []
    while len(diffs) < n_boot:
        i = rng.integers(0, n, n)
        yi, gi = y[i], g[i]
        # every metric here is defined on a resample with both classes in both groups
        if any(np.unique(yi[gi == k]).size < 2 for k in (0, 1)):
            continue
        diffs.append(metric(yi, base[i], gi) - metric(yi, new[i], gi))
    low, high = np.percentile(diffs, [2.5, 97.5])
    hat = new > 0.5
    info = {"base": metric(y, base, g), "new": metric(y, new, g), "diff_low": float(low), "diff_high": float(high),
            "auc_base": auc(y, base), "auc_new": auc(y, new), "positive_rate": float(hat.mean())}
    ok = low > 0 and info["new"] <= 0.8 * info["base"] and info["auc_new"] >= info["auc_base"] - 0.05 and 0 < hat.mean() < 1
    return bool(ok), {k: round(float(v), 4) for k, v in info.items()}
