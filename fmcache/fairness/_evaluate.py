"""One call from predictions and groups to the tidy result table."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fmcache.errors import MetricInputError
from fmcache.fairness._bootstrap import iter_resamples, percentile_interval, strata_layout
from fmcache.fairness._classification import METRICS, THRESHOLD_METRICS, PreparedBlock, block_stats, prepare_block
from fmcache.fairness._conventions import Convention, Gap, apply_gaps, get_convention
from fmcache.fairness._groups import Grouping, GroupNames, as_groupings
from fmcache.fairness._segmentation import EmptyRule, dice_per_sample, group_means, iou_per_sample
from fmcache.fairness._thresholds import Threshold, ThresholdSpec, resolve_threshold
from fmcache.fairness.representation import ovr_auc

#: Columns of every result table, in order.
COLUMNS = ("label", "attribute", "metric", "group", "value", "ci_low", "ci_high", "n", "convention", "reason")

Groups = Any  # one array (n,), or a dict attribute name -> array (n,)


# ---------------------------------------------------------------- input checks


def _where(bad: np.ndarray, columns: Sequence[str] | None) -> str:
    pos = np.argwhere(bad)[:5]
    if bad.ndim == 1:
        return "rows " + ", ".join(str(int(p[0])) for p in pos)
    cols = columns or [str(c) for c in range(bad.shape[1])]
    return ", ".join(f"(row {int(r)}, {cols[int(c)]!r})" for r, c in pos)


def _scores(values: Any, name: str, columns: Sequence[str] | None = None) -> np.ndarray:
    try:
        s = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise MetricInputError(f"{name} must be numeric probabilities") from None
    if s.ndim not in (1, 2):
        raise MetricInputError(f"{name} must be (n,) or (n, C); got shape {s.shape}")
    bad = ~np.isfinite(s)
    if bad.any():
        more = " (first 5 shown)" if bad.sum() > 5 else ""
        raise MetricInputError(
            f"{name} has {int(bad.sum())} NaN or infinite values, at {_where(bad, columns)}{more}; "
            "metrics need a finite probability for every sample"
        )
    out = (s < 0) | (s > 1)
    if out.any():
        first = tuple(int(i) for i in np.argwhere(out)[0])
        raise MetricInputError(
            f"{name} must be probabilities in [0, 1]: {int(out.sum())} values are outside "
            f"(e.g. {s[first]:.6g} at {'row ' + str(first[0]) if s.ndim == 1 else first}); "
            "apply a sigmoid (or softmax) to logits first"
        )
    return s


def _labels(values: Any, name: str, allowed_max: int) -> np.ndarray:
    y = np.asarray(values)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise MetricInputError(f"{name} must be numeric labels; got dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise MetricInputError(f"{name} has NaN or infinite labels; mark unknown labels with -1")
        if not (y == np.round(y)).all():
            raise MetricInputError(f"{name} must hold integer labels")
    y = y.astype(np.int64)
    odd = np.setdiff1d(np.unique(y), np.arange(-1, allowed_max + 1))
    if odd.size:
        hint = " for multi-class labels pass y_score of shape (n, K)" if allowed_max == 1 else ""
        raise MetricInputError(f"{name} holds values {odd[:5].tolist()} besides -1 (unknown) and 0..{allowed_max};{hint}")
    return y


def _label_blocks(
    y_true: Any, y_score: Any, label_names: Sequence[str] | None, prefix: str = ""
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label name, y in {-1, 0, 1}, score) for each binary problem: one, per label, or one-vs-rest."""
    y_arr = np.asarray(y_true)
    s = _scores(y_score, f"{prefix}score" if prefix else "y_score", label_names)
    if s.ndim == 2 and s.shape[1] == 1 and y_arr.ndim == 1:
        s = s[:, 0]
    if y_arr.shape[0] != s.shape[0]:
        raise MetricInputError(f"{prefix or 'y_'}true has {y_arr.shape[0]} samples but the scores have {s.shape[0]}")
    yname = f"{prefix}y" if prefix else "y_true"
    if s.ndim == 1:
        if y_arr.ndim != 1:
            raise MetricInputError(f"{yname} has shape {y_arr.shape} but the scores are 1-D; give one score column per label")
        return [("", _labels(y_arr, yname, 1), s)]
    k = s.shape[1]
    names = [str(c) for c in (label_names if label_names is not None else range(k))]
    if len(names) != k:
        raise MetricInputError(f"label_names has {len(names)} names for {k} score columns")
    if y_arr.ndim == 2:
        if y_arr.shape != s.shape:
            raise MetricInputError(f"multi-label {yname} has shape {y_arr.shape} but the scores have {s.shape}")
        y = _labels(y_arr, yname, 1)
        return [(names[c], y[:, c], s[:, c]) for c in range(k)]
    y = _labels(y_arr, yname, k - 1)
    # one-vs-rest: class c against every other class; unknown (-1) stays unknown
    return [(names[c], np.where(y < 0, -1, (y == c).astype(np.int64)), s[:, c]) for c in range(k)]


def _thresholds_per_label(threshold: Any, n_labels: int) -> list[ThresholdSpec]:
    if isinstance(threshold, (str, int, float, np.integer, np.floating)):
        return [threshold] * n_labels
    specs = list(threshold)
    if len(specs) != n_labels:
        raise MetricInputError(f"threshold lists {len(specs)} values for {n_labels} labels")
    return specs


def _conventions(convention: str | Convention | Sequence[str]) -> list[Convention]:
    if isinstance(convention, (str, Convention)):
        return [get_convention(convention)]
    return [get_convention(c) for c in convention]


# ---------------------------------------------------------------- table building


class _Rows:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(
        self, label: str, attr: str, metric: str, group: str, value: float, lo: float, hi: float, n: int, conv: str, reason: str
    ) -> None:
        value = float(value)
        self.rows.append(
            (label, attr, metric, group, value, float(lo), float(hi), int(n), conv, reason if np.isnan(value) else "")
        )

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=list(COLUMNS))
        return df.astype({"value": "float64", "ci_low": "float64", "ci_high": "float64", "n": "int64"})


def _gap_reasons(
    gaps: Sequence[Gap],
    names: Sequence[str],
    attr: str,
    point_per: Mapping[str, np.ndarray],
    reasons: Mapping[str, list[str]],
    overall_reason: Mapping[str, str],
) -> dict[str, str]:
    out = {}
    for gap in gaps:
        reason = ""
        if len(names) < 2:
            who = f"attribute {attr!r}" if attr else "the attribute"
            reason = f"{who} has {len(names)} group{'s' if len(names) != 1 else ''}; a gap needs two"
        else:
            for m in gap.metrics:
                bad = np.flatnonzero(np.isnan(point_per[m][0]))
                if bad.size:
                    reason = reasons[m][bad[0]]
                    break
            if not reason and gap.aggregate.startswith("es_"):
                reason = overall_reason.get(gap.metrics[0], "")
            if not reason and gap.aggregate == "skew":
                reason = "a group has a perfect score (1 - value = 0), so the ratio is undefined"
        out[gap.name] = reason or "undefined"
    return out


def _emit(
    rows: _Rows,
    label: str,
    attr: str,
    conv: str,
    metrics: Sequence[str],
    names: Sequence[str],
    point_per: Mapping[str, np.ndarray],
    point_all: Mapping[str, np.ndarray],
    boot_per: Mapping[str, np.ndarray] | None,
    boot_all: Mapping[str, np.ndarray] | None,
    gaps: Sequence[Gap],
    point_gaps: Mapping[str, np.ndarray],
    boot_gaps: Mapping[str, np.ndarray] | None,
    group_n: Sequence[int],
    n_all: int,
    reasons: Mapping[str, list[str]],
    overall_reason: Mapping[str, str],
    ci: float,
) -> None:
    nan = np.nan
    for m in metrics:
        lo_all = hi_all = nan
        lo_g = hi_g = np.full(len(names), nan)
        if boot_per is not None:
            lo_all, hi_all = (float(x[0]) for x in percentile_interval(boot_all[m][:, None], ci))
            lo_g, hi_g = percentile_interval(boot_per[m], ci)
        rows.add(label, attr, m, "overall", point_all[m][0], lo_all, hi_all, n_all, conv, overall_reason.get(m, "undefined"))
        for g, name in enumerate(names):
            rows.add(label, attr, m, name, point_per[m][0, g], lo_g[g], hi_g[g], group_n[g], conv, reasons[m][g])
    gap_reason = _gap_reasons(gaps, names, attr, point_per, reasons, overall_reason)
    for gap in gaps:
        lo = hi = nan
        if boot_gaps is not None:
            lo, hi = (float(x[0]) for x in percentile_interval(boot_gaps[gap.name][:, None], ci))
        rows.add(label, attr, gap.name, "gap", point_gaps[gap.name][0], lo, hi, sum(group_n), conv, gap_reason[gap.name])


def _gaps_or_nan(
    gaps: Sequence[Gap], per: Mapping[str, np.ndarray], overall: Mapping[str, np.ndarray], n_groups: int
) -> dict[str, np.ndarray]:
    if n_groups < 2:  # a range over one group would read as a perfect 0
        b = next(iter(overall.values())).shape[0]
        return {gap.name: np.full(b, np.nan) for gap in gaps}
    point = apply_gaps(tuple(gaps), per, overall)
    return {k: np.where(np.isfinite(v), v, np.nan) for k, v in point.items()}


def _bootstrap(stats, strata: np.ndarray, n_strata: int, n_boot: int, seed: Sequence[int]):
    """Stack stats(idx) -> (per-group dict, overall dict) over all resample blocks."""
    per_parts: dict[str, list[np.ndarray]] = {}
    all_parts: dict[str, list[np.ndarray]] = {}
    for idx in iter_resamples(strata, n_boot, seed, n_strata=n_strata):
        per, overall = stats(idx)
        for k, v in per.items():
            per_parts.setdefault(k, []).append(v)
        for k, v in overall.items():
            all_parts.setdefault(k, []).append(v)
    return ({k: np.concatenate(v) for k, v in per_parts.items()}, {k: np.concatenate(v) for k, v in all_parts.items()})


def _reason(metric: str, n_neg: int, n_pos: int, what: str, threshold_reason: str) -> str:
    """Why ``metric`` is undefined for a set of ``n_neg`` negatives and ``n_pos`` positives."""
    if n_neg + n_pos == 0:
        return f"{what} is empty"
    if metric in THRESHOLD_METRICS and threshold_reason:
        return threshold_reason
    if metric == "auc" and (n_neg == 0 or n_pos == 0):
        return f"{what} has one class (no {'negatives' if n_neg == 0 else 'positives'})"
    if metric == "auc":
        return f"all scores in {what} are equal, so AUC ranks nothing"
    if metric == "tpr":
        return f"{what} has no positives"
    if metric in ("fpr", "tnr"):
        return f"{what} has no negatives"
    return f"undefined for {what}"


def _classification_reasons(
    block: PreparedBlock,
    names: Sequence[str],
    label: str,
    threshold_reason: str,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Why each metric would be undefined, per group and overall (used where a value is NaN)."""
    reasons: dict[str, list[str]] = {m: [] for m in METRICS}
    for g, name in enumerate(names):
        n_neg, n_pos = block.cell_sizes(g)
        for m in METRICS:
            reasons[m].append(_reason(m, n_neg, n_pos, f"group {name!r}", threshold_reason))
    what = f"label {label!r}" if label else "the scored set"
    n_pos = int(block.label.sum())
    overall = {m: _reason(m, block.label.size - n_pos, n_pos, what, threshold_reason) for m in METRICS}
    return reasons, overall


def evaluate(
    y_true: Any,
    y_score: Any,
    groups: Groups,
    *,
    threshold: ThresholdSpec | Sequence[ThresholdSpec] = 0.5,
    convention: str | Sequence[str] = "paper",
    n_boot: int = 0,
    seed: int = 0,
    y_val: Any = None,
    score_val: Any = None,
    groups_val: Groups = None,
    label_names: Sequence[str] | None = None,
    ci: float = 0.95,
    group_names: Mapping[str, GroupNames] | GroupNames | None = None,
    intersect: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Classification utility and fairness metrics per group, overall and as gaps.

    Parameters
    ----------
    y_true : array (n,) or (n, C)
        Binary labels in {0, 1}; (n, C) for multi-label (one block per label); class
        indices 0..K-1 with ``y_score`` (n, K) for multi-class (one-vs-rest per class).
        -1 marks an unknown label: that sample is left out of that label, and counted
        (metric ``n_unlabelled``).
    y_score : array (n,), (n, C) or (n, K)
        Predicted probability of the positive class (of each label or class), in [0, 1].
        NaN, infinite or out-of-range scores raise `MetricInputError`.
    groups : array (n,) or dict name -> array (n,)
        Sensitive attribute(s): integer codes, booleans or strings, -1 = unknown. Unknown
        samples are left out of the per-group values and the gaps (counted in metric
        ``n_unknown``) but kept in the overall values. One block of rows per attribute.
    threshold : float, str or one per label
        A number; ``"val"`` / ``"val:youden"``, ``"val:f1"`` or ``"val:sensitivity:0.9"``
        chosen on (y_val, score_val); ``"best_f1_on_test"`` under ``fairmedfm`` only. The
        threshold is held fixed across bootstrap resamples and reported as metric
        ``threshold`` (group "overall").
    convention : {"paper", "fairmedfm", "fairlearn"} or a list of them
        Formulas per convention are documented in `paper`, `fairmedfm` and `fairlearn`.
    n_boot : int
        Bootstrap resamples for percentile intervals (0: none, ci_low / ci_high are NaN;
        1000 is the usual choice). Resampling is stratified by group x label: every
        resample keeps each (group, label) cell's count. Unknown-group samples form their
        own stratum.
    seed : int
        Resamples of label i and attribute j come from ``numpy.random.default_rng([seed, i, j])``.
    y_val, score_val : arrays, optional
        Validation labels and scores, shaped like y_true / y_score, for ``threshold="val..."``.
    groups_val : optional
        Validation groups; only checked for length: one threshold per label serves every group.
    label_names : list of str, optional
        Names of the labels (multi-label) or classes (multi-class); default their index.
    ci : float
        Interval level: the (1 - ci)/2 and (1 + ci)/2 percentiles of the resamples.
    group_names : dict code -> name, list, or dict attribute -> either, optional
        Names of the groups; default ``str(code)``.
    intersect : tuple of attribute names, or a list of such tuples, optional
        Also evaluate the joint groups of these attributes (attribute ``"sex&age"``, groups
        such as ``"female&old"``); needs ``groups`` as a dict.

    Returns
    -------
    pandas.DataFrame
        Columns ``label, attribute, metric, group, value, ci_low, ci_high, n, convention,
        reason``. Metrics per group and "overall": ``auc, acc, ece, bce, tpr, fpr, tnr,
        selection_rate``; gaps (group "gap"): ``auc_delta, auc_min, acc_delta, ece_delta,
        eqodds, eqopp, dp, auc_es, auc_es_fairclip, auc_skew, acc_skew`` (formulas in
        `paper`); plus ``threshold``, ``n_unknown`` and ``n_unlabelled``
        rows. ``n`` is the number of samples behind a value. A value that cannot be
        computed (a group with one class, an empty group, constant scores) is NaN and
        ``reason`` says why.
    """
    blocks = _label_blocks(y_true, y_score, label_names)
    n = blocks[0][1].shape[0]
    groupings = as_groupings(groups, n, group_names=group_names, intersect=intersect)
    convs = _conventions(convention)
    specs = _thresholds_per_label(threshold, len(blocks))
    val_blocks = None
    if y_val is not None or score_val is not None:
        if y_val is None or score_val is None:
            raise MetricInputError("pass both y_val and score_val (or neither)")
        val_blocks = _label_blocks(y_val, score_val, label_names, prefix="val ")
        if len(val_blocks) != len(blocks):
            raise MetricInputError(f"the validation set has {len(val_blocks)} labels but the scored set has {len(blocks)}")
    if groups_val is not None:
        if val_blocks is None:
            raise MetricInputError("groups_val was given without y_val and score_val")
        as_groupings(groups_val, val_blocks[0][1].shape[0], group_names=group_names)
    if n_boot < 0:
        raise MetricInputError(f"n_boot must be >= 0; got {n_boot}")
    if seed < 0:
        raise MetricInputError(f"seed must be a non-negative integer; got {seed}")

    rows = _Rows()
    for li, (label, y, s) in enumerate(blocks):
        known = y >= 0
        y_k, s_k = y[known], s[known]
        for conv in convs:
            val = val_blocks[li] if val_blocks else None
            y_v = s_v = None
            if val is not None:
                keep = val[1] >= 0
                y_v, s_v = val[1][keep], val[2][keep]
            thr = resolve_threshold(specs[li], conv, y_test=y_k, score_test=s_k, y_val=y_v, score_val=s_v)
            for ai, grouping in enumerate(groupings):
                _classification_block(
                    rows, label, grouping, y_k, s_k, grouping.index[known], conv, thr, n_boot, (seed, li, ai), ci
                )
                rows.add(
                    label, grouping.attribute, "threshold", "overall", thr.value, np.nan, np.nan, thr.n, conv.name, thr.reason
                )
                unknown = int(np.count_nonzero(grouping.index[known] < 0))
                rows.add(label, grouping.attribute, "n_unknown", "overall", unknown, np.nan, np.nan, unknown, conv.name, "")
                unlabelled = int(np.count_nonzero(~known))
                rows.add(
                    label, grouping.attribute, "n_unlabelled", "overall", unlabelled, np.nan, np.nan, unlabelled, conv.name, ""
                )
    return rows.frame()


def _classification_block(
    rows: _Rows,
    label: str,
    grouping: Grouping,
    y: np.ndarray,
    s: np.ndarray,
    group: np.ndarray,
    conv: Convention,
    thr: Threshold,
    n_boot: int,
    seed: Sequence[int],
    ci: float,
) -> None:
    names = grouping.names
    G = len(names)
    block = prepare_block(y, s, group, G, conv, thr.value)
    point_per, point_all = block_stats(block, block.order[None, :])
    boot_per = boot_all = boot_gaps = None
    if n_boot:
        boot_per, boot_all = _bootstrap(lambda idx: block_stats(block, idx), block.strata, 2 * (G + 1), n_boot, seed)
        boot_gaps = _gaps_or_nan(conv.gaps, boot_per, boot_all, G)
    point_gaps = _gaps_or_nan(conv.gaps, point_per, point_all, G)
    reasons, overall_reason = _classification_reasons(block, names, label, thr.reason)
    group_n = [sum(block.cell_sizes(g)) for g in range(G)]
    _emit(
        rows,
        label,
        grouping.attribute,
        conv.name,
        METRICS,
        names,
        point_per,
        point_all,
        boot_per,
        boot_all,
        conv.gaps,
        point_gaps,
        boot_gaps,
        group_n,
        y.size,
        reasons,
        overall_reason,
        ci,
    )


#: What a multi-class block reports per group and overall: macro one-vs-rest AUC and argmax accuracy.
MULTICLASS_METRICS = ("auc", "acc")


def evaluate_multiclass(
    y_true: Any,
    y_score: Any,
    groups: Groups,
    *,
    convention: str | Sequence[str] = "paper",
    n_boot: int = 0,
    seed: int = 0,
    ci: float = 0.95,
    group_names: Mapping[str, GroupNames] | GroupNames | None = None,
    label: str = "",
) -> pd.DataFrame:
    """Multi-class utility and fairness as one block: the class problem as a whole.

    Per group and "overall": ``auc`` = macro one-vs-rest AUC, the mean over classes c of the
    AUC of ``y_score[:, c]`` for class c against the rest (scikit-learn's
    ``roc_auc_score(..., multi_class="ovr", average="macro")``), NaN where a class is absent;
    ``acc`` = accuracy of the argmax class. Gaps (group "gap") are the convention's gaps
    built on these two alone (``auc_delta``, ``auc_min``, ``acc_delta``, ``auc_es`` under
    ``paper``). No threshold is involved: metric ``threshold`` is NaN with the reason. For
    one-vs-rest blocks per class (thresholded rates, calibration) use `evaluate`.

    Parameters
    ----------
    y_true : array (n,)
        Class indices 0..K-1; -1 unknown (left out, counted as ``n_unlabelled``).
    y_score : array (n, K)
        Class probabilities in [0, 1] (rows of a softmax).
    groups, convention, n_boot, seed, ci, group_names
        As in `evaluate`; resampling is stratified by group x class.
    label : str
        The ``label`` column of the rows.

    Returns
    -------
    pandas.DataFrame
        The columns of `evaluate`.
    """
    s = _scores(y_score, "y_score")
    if s.ndim != 2 or s.shape[1] < 2:
        raise MetricInputError(f"multi-class y_score must be (n, K) with K >= 2 classes; got shape {s.shape}")
    y_arr = np.asarray(y_true)
    if y_arr.ndim != 1 or y_arr.shape[0] != s.shape[0]:
        raise MetricInputError(f"y_true must be (n,) class indices for {s.shape[0]} score rows; got shape {y_arr.shape}")
    k = s.shape[1]
    y = _labels(y_arr, "y_true", k - 1)
    groupings = as_groupings(groups, y.size, group_names=group_names)
    if n_boot < 0 or seed < 0:
        raise MetricInputError("n_boot and seed must be non-negative")
    known = y >= 0
    y_k, s_k = y[known], s[known]
    rows = _Rows()
    for conv in _conventions(convention):
        gaps = tuple(g for g in conv.gaps if set(g.metrics) <= set(MULTICLASS_METRICS))
        for ai, grouping in enumerate(groupings):
            names = grouping.names
            G = len(names)
            group = grouping.index[known]
            # strata group x class, unknown groups last: group g owns columns bounds[g K]:bounds[(g + 1) K]
            strata = np.where(group < 0, G, group) * k + y_k
            order, bounds = strata_layout(strata, (G + 1) * k)
            spans = [(int(bounds[g * k]), int(bounds[(g + 1) * k])) for g in range(G)]
            stats = functools.partial(_multiclass_stats, y_k, s_k, spans)
            point_per, point_all = stats(order[None, :])
            boot_per = boot_all = boot_gaps = None
            if n_boot:
                boot_per, boot_all = _bootstrap(stats, strata, (G + 1) * k, n_boot, (seed, 0, ai))
                boot_gaps = _gaps_or_nan(gaps, boot_per, boot_all, G)
            point_gaps = _gaps_or_nan(gaps, point_per, point_all, G)
            reasons = {m: [_multiclass_reason(m, y_k[group == g], k, f"group {name!r}") for g, name in enumerate(names)]
                       for m in MULTICLASS_METRICS}
            what = f"label {label!r}" if label else "the scored set"
            overall_reason = {m: _multiclass_reason(m, y_k, k, what) for m in MULTICLASS_METRICS}
            group_n = [b - a for a, b in spans]
            _emit(rows, label, grouping.attribute, conv.name, MULTICLASS_METRICS, names, point_per, point_all,
                  boot_per, boot_all, gaps, point_gaps, boot_gaps, group_n, y_k.size, reasons, overall_reason, ci)
            rows.add(label, grouping.attribute, "threshold", "overall", np.nan, np.nan, np.nan, y_k.size, conv.name,
                     "multi-class: the predicted class is the argmax of the scores, no threshold")
            unknown = int(np.count_nonzero(group < 0))
            rows.add(label, grouping.attribute, "n_unknown", "overall", unknown, np.nan, np.nan, unknown, conv.name, "")
            unlabelled = int(np.count_nonzero(~known))
            rows.add(label, grouping.attribute, "n_unlabelled", "overall", unlabelled, np.nan, np.nan, unlabelled, conv.name, "")
    return rows.frame()


def _multiclass_stats(
    y: np.ndarray, s: np.ndarray, spans: Sequence[tuple[int, int]], idx: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def one(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if cols.shape[1] == 0:
            nan = np.full(cols.shape[0], np.nan)
            return nan, nan
        yy, ss = y[cols], s[cols]
        return ovr_auc(yy, ss), (ss.argmax(axis=-1) == yy).mean(axis=1)

    per = [one(idx[:, a:b]) for a, b in spans]
    overall = one(idx)
    return (
        {m: np.stack([p[i] for p in per], axis=1) if per else np.empty((idx.shape[0], 0))
         for i, m in enumerate(MULTICLASS_METRICS)},
        {m: overall[i] for i, m in enumerate(MULTICLASS_METRICS)},
    )


def _multiclass_reason(metric: str, y: np.ndarray, k: int, what: str) -> str:
    if y.size == 0:
        return f"{what} is empty"
    missing = np.setdiff1d(np.arange(k), y)
    if metric == "auc" and missing.size:
        return f"{what} has no sample of class {', '.join(str(int(c)) for c in missing[:5])}, so its one-vs-rest AUC is undefined"
    return f"undefined for {what}"


# ---------------------------------------------------------------- segmentation


def evaluate_dice(
    dice: Any,
    groups: Groups,
    *,
    iou: Any = None,
    nsd: Any = None,
    convention: str | Sequence[str] = "paper",
    n_boot: int = 0,
    seed: int = 0,
    ci: float = 0.95,
    group_names: Mapping[str, GroupNames] | GroupNames | None = None,
    intersect: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Segmentation fairness from per-sample Dice (and optionally IoU and NSD) scores.

    Per group and "overall": ``dsc`` = mean of the per-sample Dice (``iou`` likewise);
    gaps (group "gap"): ``dsc_delta`` = max_g DSC_g - min_g DSC_g, ``dsc_skew`` =
    max_g(1 - DSC_g) / min_g(1 - DSC_g), ``dsc_std`` = population std of DSC_g (ddof = 0),
    ``dsc_es`` = DSC / (1 + dsc_std), with DSC the mean over all samples (unknown-group
    samples included). The formulas are the same under every convention.

    Parameters
    ----------
    dice : array (n,)
        Per-sample Dice in [0, 1] (see `dice_per_sample`).
    groups, convention, n_boot, seed, ci, group_names, intersect
        As in `evaluate`; the bootstrap is stratified by group.
    iou : array (n,), optional
        Per-sample IoU, reported as metric ``iou``.
    nsd : array (n,), optional
        Per-sample normalised surface distance (see `nsd_per_sample`), reported as metric
        ``nsd`` with the same gaps as Dice (``nsd_delta``, ``nsd_skew``, ``nsd_std``,
        ``nsd_es``), resampled with the same bootstrap draws.

    Returns
    -------
    pandas.DataFrame
        The columns of `evaluate`; ``label`` is "".
    """
    d = _scores(dice, "dice")
    if d.ndim != 1:
        raise MetricInputError(f"dice must be one value per sample; got shape {d.shape}")
    values = {"dsc": d}
    for name, extra in (("iou", iou), ("nsd", nsd)):
        if extra is not None:
            values[name] = _scores(extra, name)
            if values[name].shape != d.shape:
                raise MetricInputError(f"{name} has shape {values[name].shape} but dice has {d.shape}")
    metrics = tuple(values)
    groupings = as_groupings(groups, d.size, group_names=group_names, intersect=intersect)
    if n_boot < 0 or seed < 0:
        raise MetricInputError("n_boot and seed must be non-negative")
    rows = _Rows()
    for conv in _conventions(convention):
        for ai, grouping in enumerate(groupings):
            names = grouping.names
            G = len(names)
            strata = np.where(grouping.index < 0, G, grouping.index)
            order, bounds = strata_layout(strata, G + 1)

            # the gaps of the scores given: a table without NSD has no NSD gaps
            gaps = tuple(g for g in conv.segmentation_gaps if set(g.metrics) <= set(values))
            stats = functools.partial(_segmentation_stats, values, bounds, G)
            point_per, point_all = stats(order[None, :])
            boot_per = boot_all = boot_gaps = None
            if n_boot:
                boot_per, boot_all = _bootstrap(stats, strata, G + 1, n_boot, (seed, 0, ai))
                boot_gaps = _gaps_or_nan(gaps, boot_per, boot_all, G)
            point_gaps = _gaps_or_nan(gaps, point_per, point_all, G)
            group_n = [int(bounds[g + 1] - bounds[g]) for g in range(G)]
            reasons = {m: [f"group {name!r} is empty" for name in names] for m in metrics}
            overall_reason = {m: "no samples" for m in metrics}
            _emit(
                rows,
                "",
                grouping.attribute,
                conv.name,
                metrics,
                names,
                point_per,
                point_all,
                boot_per,
                boot_all,
                gaps,
                point_gaps,
                boot_gaps,
                group_n,
                d.size,
                reasons,
                overall_reason,
                ci,
            )
            unknown = grouping.n_unknown
            rows.add("", grouping.attribute, "n_unknown", "overall", unknown, np.nan, np.nan, unknown, conv.name, "")
    return rows.frame()


def _segmentation_stats(
    values: Mapping[str, np.ndarray], bounds: np.ndarray, n_groups: int, idx: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    per, overall = {}, {}
    for m, v in values.items():
        per[m], overall[m] = group_means(v, idx, bounds, n_groups)
    return per, overall


def evaluate_segmentation(
    y_true: Any,
    y_pred: Any,
    groups: Groups,
    *,
    n_classes: int | None = None,
    iou: bool = False,
    empty: EmptyRule = "one",
    convention: str | Sequence[str] = "paper",
    n_boot: int = 0,
    seed: int = 0,
    ci: float = 0.95,
    group_names: Mapping[str, GroupNames] | GroupNames | None = None,
    intersect: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Segmentation fairness from true and predicted masks.

    Computes the per-sample Dice (and IoU when ``iou=True``) averaged over foreground
    classes with `dice_per_sample` (empty-vs-empty: ``empty="one"`` scores 1), then
    `evaluate_dice`.

    Parameters
    ----------
    y_true, y_pred : array (n, ...) or list of n arrays
        Integer label maps (0 = background, 1..C classes) or boolean masks.
    groups : array (n,) or dict name -> array (n,)
    n_classes, empty
        As in `dice_per_sample`.
    iou : bool
        Also report metric ``iou``.
    convention, n_boot, seed, ci, group_names, intersect
        As in `evaluate_dice`.

    Returns
    -------
    pandas.DataFrame
    """
    dice = dice_per_sample(y_true, y_pred, n_classes=n_classes, empty=empty)
    if np.isnan(dice).any():
        bad = np.flatnonzero(np.isnan(dice))
        raise MetricInputError(
            f"{bad.size} samples (e.g. {bad[:5].tolist()}) have every class absent from both masks, so with "
            "empty='skip' their Dice is undefined; use empty='one' or drop them"
        )
    iou_values = iou_per_sample(y_true, y_pred, n_classes=n_classes, empty=empty) if iou else None
    return evaluate_dice(
        dice,
        groups,
        iou=iou_values,
        convention=convention,
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        group_names=group_names,
        intersect=intersect,
    )
