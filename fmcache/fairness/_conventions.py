"""Named metric conventions: the same metric names, each convention's own formulas.

A convention is data: how predictions are thresholded, how ECE bins are laid out, how
BCE guards log(0), and a table of gaps, each a (name, per-group metrics, aggregate)
entry. The gaps are generated from that table by the aggregates below, vectorised over
bootstrap resamples, rather than written out one by one.

Every metric and gap also carries how it is shown: its title and which way is better.
Tables, figures and sentences read these through :func:`metric_info` and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fmcache.errors import UnknownNameError, did_you_mean

# An aggregate maps per-group values {metric: (B, G)} and overall values {metric: (B,)} to (B,).
Aggregate = Callable[[list[np.ndarray], list[np.ndarray]], np.ndarray]


def _spread(v: np.ndarray) -> np.ndarray:
    return v.max(axis=-1) - v.min(axis=-1)


def _skew(v: np.ndarray) -> np.ndarray:
    miss = 1.0 - v
    with np.errstate(divide="ignore", invalid="ignore"):
        out = miss.max(axis=-1) / miss.min(axis=-1)
    return np.where(np.isfinite(out), out, np.nan)


AGGREGATES: dict[str, Aggregate] = {
    # max_g m_g - min_g m_g
    "range": lambda g, o: _spread(g[0]),
    # min_g m_g
    "min": lambda g, o: g[0].min(axis=-1),
    # mean over the listed metrics of their ranges: 1/2 dTPR + 1/2 dFPR
    "mean_range": lambda g, o: np.mean([_spread(v) for v in g], axis=0),
    # worst case over the listed metrics: max(dTPR, dFPR)
    "max_range": lambda g, o: np.max([_spread(v) for v in g], axis=0),
    # 1 - mean of ranges: 1 - (dTPR + dTNR) / 2, higher is fairer
    "one_minus_mean_range": lambda g, o: 1.0 - np.mean([_spread(v) for v in g], axis=0),
    # population standard deviation of the group values (ddof = 0)
    "std": lambda g, o: g[0].std(axis=-1),
    # overall / (1 + population std of group values)
    "es_std": lambda g, o: o[0] / (1.0 + g[0].std(axis=-1)),
    # overall / (1 + sum_g |m_g - overall|)  (FairCLIP's spread)
    "es_absdev": lambda g, o: o[0] / (1.0 + np.abs(g[0] - o[0][..., None]).sum(axis=-1)),
    # max_g (1 - m_g) / min_g (1 - m_g); NaN when a group scores 1 (a zero denominator)
    "skew": lambda g, o: _skew(g[0]),
}


@dataclass(frozen=True)
class Metric:
    """A metric computed per group and overall.

    Attributes
    ----------
    name : the stable name in result tables.
    title : how figures and sentences name it.
    higher_is_better : True, False, or None for rates that are neither (TPR, FPR, ...).
    short : a narrower title for table headings (default: ``title``).
    bounded : its values lie in [0, 1].
    fairness : it measures a difference between groups ("fairer", not "better").
    ranked : the FairMedFM paper ranks methods on it across datasets (its
        critical-difference figure: AUC, ECE, EqOdds, AUC_ES, AUC_delta, ECE_delta).
    """

    name: str
    title: str
    higher_is_better: bool | None
    short: str = ""
    bounded: bool = False
    fairness: bool = False
    ranked: bool = False

    @property
    def heading(self) -> str:
        return self.short or self.title


@dataclass(frozen=True)
class Gap(Metric):
    """A summary over groups: `aggregate` applied to the per-group `metrics` (and overall).

    Most gaps are differences between groups (``fairness``); the worst-group and
    equity-scaled values are utilities that weigh the groups.
    """

    metrics: tuple[str, ...] = ()
    aggregate: str = "range"
    fairness: bool = True


@dataclass(frozen=True)
class Convention:
    """How one convention computes the shared metric names (see `paper`, `fairmedfm`, `fairlearn`)."""

    name: str
    strict_threshold: bool
    ece_bins: Literal["unit", "range"]
    bce_guard: Literal["clip_eps", "log_floor"]
    gaps: tuple[Gap, ...]
    segmentation_gaps: tuple[Gap, ...]
    test_threshold: bool
    n_bins: int = 10

    def predict(self, score: np.ndarray, threshold: float) -> np.ndarray:
        """Hard predictions: score > t under a strict convention, else score >= t."""
        return score > threshold if self.strict_threshold else score >= threshold


# per-group and overall metrics; every convention computes them under these names
METRIC_SPECS: Mapping[str, Metric] = {m.name: m for m in (
    Metric("auc", "AUC", True, bounded=True, ranked=True),
    Metric("acc", "Accuracy", True, bounded=True),
    Metric("ece", "ECE", False, ranked=True),
    Metric("bce", "BCE", False),
    Metric("tpr", "TPR", None, bounded=True),
    Metric("fpr", "FPR", None, bounded=True),
    Metric("tnr", "TNR", None, bounded=True),
    Metric("selection_rate", "Selection rate", None, bounded=True),
    Metric("dsc", "Dice", True, bounded=True),
    Metric("iou", "IoU", True, bounded=True),
    Metric("nsd", "Normalised surface distance (surface Dice)", True, short="NSD", bounded=True),
)}

def _score_gaps(metric: str, title: str) -> tuple[Gap, ...]:
    """The gaps of one per-item segmentation score (Dice, NSD): range, skew, spread, equity scaling."""
    return (
        Gap(f"{metric}_delta", f"{title} gap (max − min)", False, short=f"{title} gap", metrics=(metric,),
            aggregate="range"),
        Gap(f"{metric}_skew", f"{title} skewness", False, metrics=(metric,), aggregate="skew"),
        Gap(f"{metric}_std", f"{title} std over groups", False, metrics=(metric,), aggregate="std"),
        Gap(f"{metric}_es", f"Equity-scaled {title}", True, fairness=False, metrics=(metric,), aggregate="es_std"),
    )


# a table computes the gaps of the scores it has (NSD only when a tolerance was given)
_SEG_GAPS = (*_score_gaps("dsc", "Dice"), *_score_gaps("nsd", "NSD"))


def _gaps(eqodds: Gap) -> tuple[Gap, ...]:
    return (
        Gap("auc_delta", "AUC gap (max − min)", False, short="AUC gap", metrics=("auc",), aggregate="range",
            ranked=True),
        Gap("auc_min", "Worst-group AUC", True, fairness=False, metrics=("auc",), aggregate="min"),
        Gap("acc_delta", "Accuracy gap (max − min)", False, metrics=("acc",), aggregate="range"),
        Gap("ece_delta", "ECE gap (max − min)", False, metrics=("ece",), aggregate="range", ranked=True),
        eqodds,
        Gap("eqopp", "Equal-opportunity gap", False, metrics=("tpr",), aggregate="range"),
        Gap("dp", "Demographic-parity gap", False, short="DP gap", metrics=("selection_rate",), aggregate="range"),
        Gap("auc_es", "Equity-scaled AUC", True, short="ES-AUC (trade-off)", fairness=False, metrics=("auc",),
            aggregate="es_std", ranked=True),
        Gap("auc_es_fairclip", "Equity-scaled AUC (FairCLIP: sum of |AUC_g − AUC|)", True, short="ES-AUC (FairCLIP)",
            fairness=False, metrics=("auc",), aggregate="es_absdev"),
        Gap("auc_skew", "AUC skewness, max(1 − AUC_g) / min(1 − AUC_g)", False, short="AUC skew", metrics=("auc",),
            aggregate="skew"),
        Gap("acc_skew", "Accuracy skewness, max(1 − Acc_g) / min(1 − Acc_g)", False, short="Acc. skew",
            metrics=("acc",), aggregate="skew"),
    )


def _eqodds(members: tuple[str, ...], aggregate: str) -> Gap:
    return Gap("eqodds", "Equalized-odds gap", False, short="Eq.-odds gap", metrics=members, aggregate=aggregate,
               ranked=True)


def paper() -> Convention:
    """The FairMedFM paper's definitions (the default), with the readings it leaves open named.

    The appendix states each metric as a formula; where it fixes no computation (ECE's bins,
    the skewness of AUC and accuracy) the choice below is this convention's interpretation.
    With s the predicted probability of the positive class, y the label, t the threshold,
    g a group and "range" = max over groups - min over groups:

    - prediction: yhat = 1 if s >= t
    - ``auc``: P(s+ > s-) + 1/2 P(s+ = s-) (Mann-Whitney, as scikit-learn's roc_auc_score)
    - ``acc`` = mean(yhat = y); ``tpr`` = TP / P; ``fpr`` = FP / N; ``tnr`` = TN / N;
      ``selection_rate`` = mean(yhat)
    - ``ece`` = sum_b (n_b / n) |mean_b(s) - mean_b(y)| over 10 equal-width bins of [0, 1],
      right-closed with 0 in the first bin (scikit-learn calibration_curve, uniform); empty
      bins contribute nothing. The appendix formula has no bins: binning is an
      interpretation, the usual one, and the bin layout changes the value.
    - ``bce`` = -mean(y log s + (1 - y) log(1 - s)), s clipped to [eps, 1 - eps] with eps the
      float64 machine epsilon (scikit-learn log_loss)
    - ``auc_delta`` = range(auc_g); ``auc_min`` = min_g auc_g; ``acc_delta`` = range(acc_g);
      ``ece_delta`` = range(ece_g)
    - ``eqodds`` = 1/2 range(tpr_g) + 1/2 range(fpr_g) (lower is fairer)
    - ``eqopp`` = range(tpr_g); ``dp`` = range(selection_rate_g)
    - ``auc_es`` = auc / (1 + std_g(auc_g)), population standard deviation (ddof = 0)
    - ``auc_es_fairclip`` = auc / (1 + sum_g |auc_g - auc|), FairCLIP's equity scaling, with
      auc the overall AUC (unknown-group samples included)
    - ``auc_skew`` = max_g(1 - auc_g) / min_g(1 - auc_g); ``acc_skew`` = max_g(1 - acc_g) /
      min_g(1 - acc_g) (lower is fairer, 1 = equal). An interpretation: the paper names
      AUC_Skew and ACC_Skew but writes the ratio out for Dice only (``dsc_skew``); these
      apply that ratio to the group AUCs and accuracies.
      NaN when a group scores exactly 1 (a zero denominator); bootstrap intervals are over
      the resamples where it is defined.
    - segmentation: ``dsc_delta`` = range(dsc_g); ``dsc_skew`` = max_g(1 - dsc_g) /
      min_g(1 - dsc_g); ``dsc_std`` = std_g(dsc_g) (ddof = 0); ``dsc_es`` = dsc / (1 + dsc_std);
      the normalised surface distance's ``nsd_delta``, ``nsd_skew``, ``nsd_std``, ``nsd_es`` alike
    - thresholds: a number or "val:..." chosen on a validation set; never the test set.
    """
    return Convention("paper", False, "unit", "clip_eps", _gaps(_eqodds(("tpr", "fpr"), "mean_range")), _SEG_GAPS, False)


def fairmedfm() -> Convention:
    """The FairMedFM reference code's behaviour, quirks included.

    Differences from `paper` (everything else is the same):

    - prediction: yhat = 1 if s > t (strict)
    - threshold "best_f1_on_test" is allowed: t = the scikit-learn precision_recall_curve
      threshold with the highest F1 = 2 p r / (p + r + 1e-8) on the scored set itself; on
      ties the first (lowest) such threshold. With the strict ``>`` the samples scored exactly
      t are then predicted negative, as in the reference.
    - ``ece``: 10 equal-width bins spanning [min(s), max(s)] of the samples being scored
      (pandas.cut with 10 bins: right-closed, the lowest edge lowered by 0.1% of the range;
      when all s are equal the range is widened by 0.1% each side), empty bins dropped,
      ECE = sum_b (n_b / n) |mean_b(s) - mean_b(y)|. Each group's ECE is re-binned over the
      group's own range.
    - ``bce``: -mean(y log s + (1 - y) log(1 - s)) with each log floored at -100
      (torch.nn.BCELoss)
    - ``eqodds`` = 1 - (range(tpr_g) + range(tnr_g)) / 2 (higher is fairer)
    - ``eqopp`` = range(tpr_g), the reference's "eo"
    """
    # a score, not a gap: higher is fairer
    eqodds = Gap("eqodds", "Equalized odds, 1 − (ΔTPR + ΔTNR)/2", True, short="Eq. odds (1 − gap)", metrics=("tpr", "tnr"),
                 aggregate="one_minus_mean_range", ranked=True)
    return Convention("fairmedfm", True, "range", "log_floor", _gaps(eqodds), _SEG_GAPS, True)


def fairlearn() -> Convention:
    """fairlearn's definitions for the parity gaps; `paper` for everything else.

    - ``eqodds`` = max(range(tpr_g), range(fpr_g)): fairlearn.metrics.equalized_odds_difference
      with method="between_groups", agg="worst_case"
    - ``dp`` = range(selection_rate_g): fairlearn.metrics.demographic_parity_difference
    - ``eqopp`` = range(tpr_g): fairlearn.metrics.equal_opportunity_difference
    - prediction yhat = 1 if s >= t; ``ece``, ``bce``, ``auc`` and the other gaps as `paper`.
    """
    return Convention("fairlearn", False, "unit", "clip_eps", _gaps(_eqodds(("tpr", "fpr"), "max_range")), _SEG_GAPS, False)


CONVENTIONS: Mapping[str, Convention] = {c.name: c for c in (paper(), fairmedfm(), fairlearn())}


def get_convention(name: str | Convention) -> Convention:
    """The convention called `name` ("paper", "fairmedfm" or "fairlearn")."""
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown metric convention {name!r}{did_you_mean(str(name), list(CONVENTIONS))}; "
            f"choose one of {', '.join(CONVENTIONS)}"
        ) from None


def metric_info(name: str, convention: str | Convention = "paper") -> Metric:
    """How a metric or gap of the result tables is titled and which way is better, under a convention.

    Parameters
    ----------
    name : a metric name of the result tables (``auc``, ``eqodds``, ``dsc_delta``, ...).
    convention : the convention whose formula produced it (``eqodds`` is a gap under
        ``paper`` and ``fairlearn`` but a higher-is-fairer score under ``fairmedfm``).

    Returns
    -------
    Metric
        ``title``, ``heading`` (short title), ``higher_is_better``, ``fairness``, ``bounded``;
        a :class:`Gap` for summaries over groups.
    """
    conv = get_convention(convention)
    for gap in (*conv.gaps, *conv.segmentation_gaps):
        if gap.name == name:
            return gap
    try:
        return METRIC_SPECS[name]
    except KeyError:
        known = [*METRIC_SPECS, *(g.name for g in conv.gaps + conv.segmentation_gaps)]
        raise UnknownNameError(f"unknown metric {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}") from None


def ranked_metrics(convention: str | Convention = "paper") -> tuple[tuple[Metric, str], ...]:
    """The metrics the paper ranks methods on, each with its summary group ("overall" or "gap").

    In table order: per-group metrics first, then gaps. ``higher_is_better`` of each gives the
    rank direction under `convention`.
    """
    conv = get_convention(convention)
    metrics = [(m, "overall") for m in METRIC_SPECS.values() if m.ranked]
    return (*metrics, *((g, "gap") for g in conv.gaps if g.ranked))


def apply_gaps(
    gaps: tuple[Gap, ...], per_group: Mapping[str, np.ndarray], overall: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every gap of the table, each (B,), from per-group (B, G) and overall (B,) values."""
    out = {}
    for gap in gaps:
        fn = AGGREGATES[gap.aggregate]
        with np.errstate(invalid="ignore"):
            out[gap.name] = fn([per_group[m] for m in gap.metrics], [overall[m] for m in gap.metrics])
    return out
