"""The full metric table with bootstrap intervals, fmcache against fairlearn's MetricFrame, same run.

Both sides compute AUC, accuracy, ECE (10 uniform bins), BCE, TPR, FPR, TNR and selection
rate per group and overall, with their gaps, for two binary attributes, with n_boot
percentile resamples. fmcache's resampling is stratified by group x label; MetricFrame's
(n_boot=...) is its own plain resampling, which is no cheaper per resample.

MetricFrame at 1000 resamples of 100,000 predictions takes a long time, so by default it
runs --fairlearn-boot resamples and its time is extrapolated linearly to --n-boot:
t(no bootstrap) + (t(k resamples) - t(no bootstrap)) * n_boot / k. The printed line says so.

    python benchmarks/metrics_bootstrap.py [--n 100000] [--n-boot 1000] [--fairlearn-boot 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_negative_rate, true_positive_rate
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from fmcache import fairness
from fmcache.fairness import _classification

THRESHOLD = 0.5


def _ece(y, s):
    return _classification.expected_calibration_error(np.asarray(y), np.asarray(s))


def _at(fn):
    return lambda y, s: fn(y, np.asarray(s) >= THRESHOLD)


METRICS = {
    "auc": roc_auc_score,
    "acc": _at(accuracy_score),
    "ece": _ece,
    "bce": lambda y, s: log_loss(y, s, labels=[0, 1]),
    "tpr": _at(true_positive_rate),
    "fpr": _at(false_positive_rate),
    "tnr": _at(true_negative_rate),
    "selection_rate": _at(selection_rate),
}


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sex = rng.integers(0, 2, n)
    age = rng.integers(0, 3, n)
    y = (rng.random(n) < 0.3 + 0.05 * age).astype(int)
    s = 1 / (1 + np.exp(-(1.5 * y - 0.8 + 0.2 * sex + rng.normal(0, 1, n))))
    return y, np.round(s, 4), {"sex": sex, "age": age}


def run_fmcache(y, s, groups, n_boot: int) -> float:
    start = time.perf_counter()
    table = fairness.evaluate(y, s, groups, threshold=THRESHOLD, n_boot=n_boot, seed=0)
    elapsed = time.perf_counter() - start
    assert table.ci_low.notna().sum() > 0
    return elapsed


def run_fairlearn(y, s, groups, n_boot: int | None) -> float:
    start = time.perf_counter()
    for attr in groups.values():
        kw = {"n_boot": n_boot, "ci_quantiles": [0.025, 0.975], "random_state": 0} if n_boot else {}
        mf = MetricFrame(metrics=METRICS, y_true=y, y_pred=s, sensitive_features=attr, **kw)
        mf.by_group, mf.overall, mf.difference(), mf.group_min()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--fairlearn-boot", type=int, default=20, help="resamples MetricFrame runs (then extrapolated)")
    args = ap.parse_args()

    y, s, groups = make_data(args.n)
    run_fmcache(y[:2000], s[:2000], {k: v[:2000] for k, v in groups.items()}, 20)  # warm-up
    ours = run_fmcache(y, s, groups, args.n_boot)

    base = run_fairlearn(y, s, groups, None)
    k = min(args.fairlearn_boot, args.n_boot)
    partial = run_fairlearn(y, s, groups, k)
    theirs = base + (partial - base) * args.n_boot / k
    extrapolated = "no" if k == args.n_boot else f"yes_from_{k}_resamples"
    print(
        f"RESULT metrics_bootstrap ratio={theirs / ours:.1f} target=10 fmcache_s={ours:.2f} fairlearn_s={theirs:.1f} "
        f"n={args.n} n_boot={args.n_boot} attributes={len(groups)} fairlearn_extrapolated={extrapolated} "
        f"fairlearn_measured_s={partial:.1f}"
    )


if __name__ == "__main__":
    main()
