"""Comparing methods across datasets: average ranks, Friedman test, Nemenyi critical difference.

The procedure is Demšar (2006), "Statistical comparisons of classifiers over multiple
data sets", JMLR 7:1-30: rank the k methods on each of the N datasets, test whether the
average ranks differ (Friedman), and if so call two methods different when their
average ranks differ by at least the critical difference (Nemenyi).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from fmcache.errors import FmcacheError

__all__ = [
    "FriedmanResult",
    "NemenyiResult",
    "average_ranks",
    "cliques",
    "critical_difference",
    "friedman_test",
    "nemenyi",
    "rank_table",
    "score_matrix",
]


def score_matrix(
    scores: pd.DataFrame,
    *,
    dataset: str = "dataset",
    method: str = "method",
    score: str = "score",
) -> pd.DataFrame:
    """Bring scores into a wide (datasets x methods) table.

    Parameters
    ----------
    scores
        Either a long table with one row per (dataset, method) and the columns named by
        `dataset`, `method` and `score`, or an already wide table whose index names the
        datasets and whose columns name the methods.
    dataset, method, score
        Column names of the long form. A table that lacks any of them is read as wide.

    Returns
    -------
    pandas.DataFrame
        Float scores, one row per dataset and one column per method, in first-seen order.

    Raises
    ------
    FmcacheError
        On a repeated (dataset, method) pair, a missing or non-finite score (the
        Friedman test needs every method scored on every dataset), or fewer than two
        methods or datasets.
    """
    if not isinstance(scores, pd.DataFrame):
        raise FmcacheError(
            f"scores must be a pandas DataFrame, not {type(scores).__name__}; "
            "pass a long table (dataset, method, score) or a wide datasets x methods table"
        )
    if {dataset, method, score} <= set(scores.columns):
        dup = scores.duplicated([dataset, method], keep=False)
        if dup.any():
            pairs = scores.loc[dup, [dataset, method]].drop_duplicates().head(3)
            shown = ", ".join(f"({d!r}, {m!r})" for d, m in pairs.itertuples(index=False))
            raise FmcacheError(
                f"scores has several rows for {shown}; aggregate them first "
                "(e.g. the mean over seeds) so each (dataset, method) has one score"
            )
        wide = scores.pivot(index=dataset, columns=method, values=score)
        # pivot sorts both axes; keep the order the user gave
        wide = wide.reindex(
            index=pd.unique(scores[dataset]), columns=pd.unique(scores[method])
        )
        wide.columns.name = None
    else:
        wide = scores
    try:
        wide = wide.astype(float)
    except (TypeError, ValueError) as e:
        raise FmcacheError(
            "scores is not a long table with columns "
            f"{dataset!r}, {method!r}, {score!r} (got {list(scores.columns)}), "
            "and not a numeric wide table either; name the columns with "
            "dataset=, method=, score="
        ) from e
    values = wide.to_numpy()
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[:3]
        shown = ", ".join(f"({wide.index[i]!r}, {wide.columns[j]!r})" for i, j in bad)
        raise FmcacheError(
            f"scores lacks a finite value for {shown}; every method needs a score on "
            "every dataset (drop the dataset or the method)"
        )
    if wide.shape[1] < 2 or wide.shape[0] < 2:
        raise FmcacheError(
            f"need at least 2 methods and 2 datasets to compare, got {wide.shape[1]} "
            f"method(s) on {wide.shape[0]} dataset(s)"
        )
    return wide


def rank_table(
    scores: pd.DataFrame,
    *,
    higher_is_better: bool,
    dataset: str = "dataset",
    method: str = "method",
    score: str = "score",
) -> pd.DataFrame:
    """Rank the methods within each dataset, 1 = best, ties sharing their average rank.

    Parameters
    ----------
    scores
        Long or wide scores, as accepted by :func:`score_matrix`.
    higher_is_better
        True for utilities such as AUC (the highest score gets rank 1), False for gaps
        and errors such as AUC_delta or ECE (the lowest score gets rank 1).

    Returns
    -------
    pandas.DataFrame
        Ranks with the shape of :func:`score_matrix`'s table.
    """
    wide = score_matrix(scores, dataset=dataset, method=method, score=score)
    values = wide.to_numpy()
    ranks = stats.rankdata(-values if higher_is_better else values, axis=1, method="average")
    return pd.DataFrame(ranks, index=wide.index, columns=wide.columns)


def average_ranks(
    scores: pd.DataFrame,
    *,
    higher_is_better: bool,
    dataset: str = "dataset",
    method: str = "method",
    score: str = "score",
) -> pd.Series:
    """Average rank of each method over the datasets.

    ``R_j = (1/N) sum_i r_ij`` where ``r_ij`` is the rank of method j on dataset i
    (1 = best, tied methods share the mean of the ranks they span).

    Parameters
    ----------
    scores
        Long or wide scores, as accepted by :func:`score_matrix`.
    higher_is_better
        Whether a higher score is better (AUC) or worse (AUC_delta, ECE).

    Returns
    -------
    pandas.Series
        Average ranks named ``avg_rank``, indexed by method, best (lowest) first.
    """
    ranks = rank_table(
        scores, higher_is_better=higher_is_better, dataset=dataset, method=method, score=score
    )
    return ranks.mean(axis=0).sort_values(kind="stable").rename("avg_rank")


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman's test that all methods have the same average rank.

    Attributes
    ----------
    statistic, pvalue
        Friedman's chi-square (tie-corrected) and its p-value on k - 1 degrees of freedom.
    f_statistic, f_pvalue
        The Iman-Davenport F variant, less conservative than the chi-square, on
        (k - 1, (k - 1)(N - 1)) degrees of freedom.
    n_datasets, n_methods
        N and k.
    ranks
        Average ranks, best first.
    """

    statistic: float
    pvalue: float
    f_statistic: float
    f_pvalue: float
    n_datasets: int
    n_methods: int
    ranks: pd.Series = field(repr=False)

    @property
    def df(self) -> int:
        """Degrees of freedom of the chi-square: k - 1."""
        return self.n_methods - 1

    @property
    def f_df(self) -> tuple[int, int]:
        """Degrees of freedom of the F variant: (k - 1, (k - 1)(N - 1))."""
        return self.n_methods - 1, (self.n_methods - 1) * (self.n_datasets - 1)


def friedman_test(
    scores: pd.DataFrame,
    *,
    higher_is_better: bool = True,
    dataset: str = "dataset",
    method: str = "method",
    score: str = "score",
) -> FriedmanResult:
    """Friedman test over N datasets and k methods, with the Iman-Davenport F variant.

    With ``R_j`` the average ranks,

    ``chi2_F = 12 N / (k (k + 1)) * [sum_j R_j^2 - k (k + 1)^2 / 4]``,

    divided by the tie correction ``1 - sum_i sum_t (t^3 - t) / (N k (k^2 - 1))`` (t runs
    over the sizes of the groups of tied scores on dataset i), as
    ``scipy.stats.friedmanchisquare`` does; p from chi-square with k - 1 degrees of
    freedom. Iman and Davenport's

    ``F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F)``

    follows an F distribution with (k - 1, (k - 1)(N - 1)) degrees of freedom.

    Parameters
    ----------
    scores
        Long or wide scores, as accepted by :func:`score_matrix`.
    higher_is_better
        Only orders the returned ranks; the statistic does not depend on it.

    Returns
    -------
    FriedmanResult
    """
    ranks = rank_table(
        scores, higher_is_better=higher_is_better, dataset=dataset, method=method, score=score
    )
    n, k = ranks.shape
    mean_ranks = ranks.mean(axis=0)
    chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(mean_ranks.to_numpy() ** 2) - k * (k + 1) ** 2 / 4.0)
    ties = 0.0
    for row in ranks.to_numpy():
        _, counts = np.unique(row, return_counts=True)
        ties += float(np.sum(counts**3 - counts))
    correction = 1.0 - ties / (n * k * (k * k - 1))
    if correction <= 0:
        # every dataset ties all methods: the ranks carry no evidence of a difference
        chi2, pvalue = 0.0, 1.0
    else:
        chi2 = float(max(chi2 / correction, 0.0))
        pvalue = float(stats.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    if denom <= 1e-12 * max(1.0, n * (k - 1)):
        # perfect agreement of the rankings: F is unbounded
        f_stat, f_p = float("inf"), 0.0
    else:
        f_stat = (n - 1) * chi2 / denom
        f_p = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    return FriedmanResult(
        statistic=chi2,
        pvalue=pvalue,
        f_statistic=float(f_stat),
        f_pvalue=f_p,
        n_datasets=n,
        n_methods=k,
        ranks=mean_ranks.sort_values(kind="stable").rename("avg_rank"),
    )


def critical_difference(n_methods: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks.

    ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with ``q_alpha`` the upper-alpha quantile
    of the Studentized range for k means and infinite degrees of freedom, divided by
    sqrt(2) (Demšar 2006, Table 5: q_0.05 = 2.569 for k = 4).

    Parameters
    ----------
    n_methods
        k, the number of methods compared (at least 2).
    n_datasets
        N, the number of datasets (at least 1).
    alpha
        Family-wise significance level, in (0, 1).

    Returns
    -------
    float
        Two methods whose average ranks differ by at least CD differ significantly.
    """
    k, n = int(n_methods), int(n_datasets)
    if k < 2 or n < 1:
        raise FmcacheError(
            f"the critical difference needs at least 2 methods and 1 dataset, got k={k}, N={n}"
        )
    if not 0.0 < alpha < 1.0:
        raise FmcacheError(f"alpha must lie in (0, 1), got {alpha}")
    return float(_q_alpha(k, alpha) * np.sqrt(k * (k + 1) / (6.0 * n)))


def _q_alpha(k: int, alpha: float) -> float:
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / np.sqrt(2.0))


def cliques(ranks: pd.Series, cd: float) -> list[tuple[str, ...]]:
    """Maximal runs of methods whose average ranks all lie within less than CD.

    Methods are sorted by average rank; for each method the run extends to the last
    method whose rank differs from it by less than ``cd``. Runs of one method and runs
    contained in a longer run are dropped. These are the thick bars of the critical
    difference diagram: methods joined by a bar are not significantly different.

    Parameters
    ----------
    ranks
        Average ranks indexed by method name.
    cd
        The critical difference.

    Returns
    -------
    list of tuple of str
        Each clique's methods, best first; cliques ordered by their best method.
    """
    r = ranks.sort_values(kind="stable")
    names = [str(m) for m in r.index]
    values = r.to_numpy(dtype=float)
    spans: list[tuple[int, int]] = []
    for i in range(len(values)):
        j = i
        while j + 1 < len(values) and values[j + 1] - values[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in spans):
            spans.append((i, j))
    return [tuple(names[a : b + 1]) for a, b in spans]


@dataclass(frozen=True)
class NemenyiResult:
    """Average ranks with the Nemenyi critical difference and the resulting cliques.

    Attributes
    ----------
    ranks
        Average ranks indexed by method, best (lowest) first.
    cd
        Critical difference at `alpha`.
    q_alpha
        Studentized-range quantile / sqrt(2) used for `cd`.
    alpha
        Significance level.
    n_datasets
        N.
    cliques
        Groups of methods not significantly different from each other.
    friedman
        The Friedman test on the same scores (the Nemenyi test is meaningful only when it
        rejects).
    higher_is_better
        How the scores were ranked.
    """

    ranks: pd.Series
    cd: float
    q_alpha: float
    alpha: float
    n_datasets: int
    cliques: list[tuple[str, ...]]
    friedman: FriedmanResult
    higher_is_better: bool

    def differs(self, a: str, b: str) -> bool:
        """Whether methods `a` and `b` differ significantly: ``|R_a - R_b| >= CD``."""
        return bool(abs(self.ranks[a] - self.ranks[b]) >= self.cd)


def nemenyi(
    scores: pd.DataFrame,
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
    dataset: str = "dataset",
    method: str = "method",
    score: str = "score",
) -> NemenyiResult:
    """Average ranks, Friedman test, Nemenyi critical difference and cliques in one call.

    Parameters
    ----------
    scores
        Long or wide scores, as accepted by :func:`score_matrix`.
    higher_is_better
        Whether a higher score is better (AUC) or worse (AUC_delta, ECE).
    alpha
        Significance level of the critical difference.

    Returns
    -------
    NemenyiResult
        Feed it to ``fmcache.fairness.plots.cd_diagram`` for Demšar's diagram.
    """
    fr = friedman_test(
        scores, higher_is_better=higher_is_better, dataset=dataset, method=method, score=score
    )
    cd = critical_difference(fr.n_methods, fr.n_datasets, alpha)
    return NemenyiResult(
        ranks=fr.ranks,
        cd=cd,
        q_alpha=_q_alpha(fr.n_methods, alpha),
        alpha=alpha,
        n_datasets=fr.n_datasets,
        cliques=cliques(fr.ranks, cd),
        friedman=fr,
        higher_is_better=higher_is_better,
    )
