"""Decision thresholds: a number, chosen on a validation set, or (fairmedfm only) on the test set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fmcache.errors import MetricInputError
from fmcache.fairness._conventions import Convention

ThresholdSpec = float | str

VAL_RULES = ("youden", "f1", "sensitivity:<target>")


@dataclass(frozen=True)
class Threshold:
    """A resolved threshold: its value, the samples it was chosen on, and why it is NaN if it is."""

    value: float
    n: int
    reason: str = ""


def _counts_desc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores descending and, for each, TP and FP when that score and above are positive."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.float64)[last]
    fps = (last + 1) - tps
    return s_sorted[last], tps, fps


def _cut(values_desc: np.ndarray, k: int) -> float:
    """A threshold that makes exactly the k highest distinct scores positive, under > and >= alike."""
    if k == 0:
        return float(np.nextafter(values_desc[0], np.inf))
    if k == values_desc.size:
        return float(np.nextafter(values_desc[-1], -np.inf))
    return float((values_desc[k - 1] + values_desc[k]) / 2.0)


def best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The FairMedFM reference's best-F1 threshold, found on the scored set itself.

    The candidates are scikit-learn's ``precision_recall_curve`` thresholds (the distinct
    scores, ascending, each meaning "positive if s >= t"), with p = TP / (TP + FP),
    r = TP / P and F1 = 2 * (p * r / (r + p + 1e-8)) computed in that order. The result is
    the first candidate, in ascending order, whose F1 equals the maximum (ties go to the
    lowest threshold). NaN when there are no positives (the reference raises there).

    Parameters
    ----------
    y_true : array of {0, 1}, shape (n,)
    y_score : array of float, shape (n,)

    Returns
    -------
    float
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.size == 0 or y.sum() == 0:
        return math.nan
    values, tps, fps = _counts_desc(y, s)
    # ascending, as precision_recall_curve returns them
    values, tps, fps = values[::-1], tps[::-1], fps[::-1]
    p = tps / (tps + fps)
    r = tps / y.sum()
    f1 = np.multiply(2, np.divide(np.multiply(p, r), np.add(r, p) + 1e-8))
    # the curve's final (p=1, r=0) point has F1 = 0 and can win only if every F1 is 0
    best = max(f1.max(), 0.0)
    hits = np.flatnonzero(f1 == best)
    return float(values[hits[0]]) if hits.size else math.nan


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Threshold maximising Youden's J = TPR - FPR.

    Candidates are the cuts between consecutive distinct scores (so the same samples are
    positive under > and >=), from "nothing positive" down to "everything positive"; ties go
    to the highest threshold, like argmax over scikit-learn's roc_curve.
    """
    y, s = _binary(y_true, y_score, "youden")
    values, tps, fps = _counts_desc(y, s)
    j = np.r_[0.0, tps / y.sum() - fps / (y.size - y.sum())]
    return _cut(values, int(np.argmax(j)))


def f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Threshold maximising F1 = 2 TP / (2 TP + FP + FN); ties go to the highest threshold."""
    y, s = _binary(y_true, y_score, "f1")
    values, tps, fps = _counts_desc(y, s)
    f1 = np.r_[0.0, 2 * tps / (2 * tps + fps + (y.sum() - tps))]
    return _cut(values, int(np.argmax(f1)))


def sensitivity_threshold(y_true: np.ndarray, y_score: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (TPR) reaches `target`."""
    if not 0.0 < target <= 1.0:
        raise MetricInputError(f"target sensitivity must be in (0, 1]; got {target}")
    y, s = _binary(y_true, y_score, f"sensitivity:{target}")
    values, tps, _ = _counts_desc(y, s)
    tpr = tps / y.sum()
    k = int(np.argmax(tpr >= target - 1e-12)) + 1
    return _cut(values, k)


def _binary(y_true: np.ndarray, y_score: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        raise MetricInputError(
            f"cannot choose a threshold by {rule}: the validation labels have "
            f"{'no samples' if y.size == 0 else 'one class'}; pass a validation set with both classes"
        )
    return y, s


def resolve_threshold(
    spec: ThresholdSpec,
    convention: Convention,
    *,
    y_test: np.ndarray,
    score_test: np.ndarray,
    y_val: np.ndarray | None = None,
    score_val: np.ndarray | None = None,
) -> Threshold:
    """Turn a threshold argument into a number for one binary label.

    Parameters
    ----------
    spec : float or str
        A number in [0, 1]; ``"val"`` (= ``"val:youden"``), ``"val:f1"`` or
        ``"val:sensitivity:0.9"`` chosen on (y_val, score_val); or ``"best_f1_on_test"``
        (`best_f1_threshold` on the scored set), allowed only under the fairmedfm convention.
    convention : Convention

    Returns
    -------
    Threshold
    """
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        t = float(spec)
        if not math.isfinite(t):
            raise MetricInputError(f"threshold must be a finite number; got {spec}")
        return Threshold(t, 0)
    if not isinstance(spec, str):
        raise MetricInputError(f"threshold must be a number or a string; got {type(spec).__name__}")
    if spec == "best_f1_on_test":
        if not convention.test_threshold:
            raise MetricInputError(
                f"threshold='best_f1_on_test' picks the threshold on the very data it scores, which only the "
                f"'fairmedfm' convention reproduces; under {convention.name!r} use a number or 'val' with y_val/score_val"
            )
        t = best_f1_threshold(y_test, score_test)
        reason = "" if math.isfinite(t) else "best-F1 threshold undefined: the scored set has no positives"
        return Threshold(t, int(np.asarray(y_test).size), reason)
    rule = spec.split(":", 1)
    if rule[0] != "val":
        raise MetricInputError(
            f"unknown threshold {spec!r}; use a number, 'val', 'val:youden', 'val:f1', 'val:sensitivity:0.9' "
            "or (fairmedfm only) 'best_f1_on_test'"
        )
    if y_val is None or score_val is None:
        raise MetricInputError(f"threshold={spec!r} needs a validation set: pass y_val and score_val")
    how = rule[1] if len(rule) > 1 else "youden"
    if how == "youden":
        t = youden_threshold(y_val, score_val)
    elif how == "f1":
        t = f1_threshold(y_val, score_val)
    elif how.startswith("sensitivity:"):
        try:
            target = float(how.split(":", 1)[1])
        except ValueError:
            raise MetricInputError(f"threshold {spec!r}: the target sensitivity is not a number") from None
        t = sensitivity_threshold(y_val, score_val, target)
    else:
        raise MetricInputError(f"unknown validation rule {how!r} in threshold {spec!r}; use one of {', '.join(VAL_RULES)}")
    return Threshold(t, int(np.asarray(y_val).size))
