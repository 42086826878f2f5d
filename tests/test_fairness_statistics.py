"""Average ranks, Friedman test, Nemenyi critical difference and cliques against hand-
computed values and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fmcache.errors import FmcacheError
from fmcache.fairness import statistics as st

# k = 4 methods on N = 5 datasets; ranks by hand (1 = highest score, ties averaged):
#   d1: 1 2 3 4 | d2: 1 3 2 4 | d3: 1.5 1.5 3 4 | d4: 3 1 4 2 | d5: 1 2 4 3
WIDE = pd.DataFrame(
    {
        "a": [0.9, 0.9, 0.8, 0.7, 0.9],
        "b": [0.8, 0.7, 0.8, 0.9, 0.8],
        "c": [0.7, 0.8, 0.7, 0.6, 0.6],
        "d": [0.6, 0.6, 0.6, 0.8, 0.7],
    },
    index=[f"d{i}" for i in range(1, 6)],
)
HAND_RANKS = {"a": 1.5, "b": 1.9, "c": 3.2, "d": 3.4}


def long_form(wide: pd.DataFrame) -> pd.DataFrame:
    return wide.rename_axis("dataset").reset_index().melt(id_vars="dataset", var_name="method", value_name="score")


def test_average_ranks_by_hand_both_directions_and_forms():
    r = st.average_ranks(WIDE, higher_is_better=True)
    assert list(r.index) == ["a", "b", "c", "d"]  # best first
    assert r.to_dict() == pytest.approx(HAND_RANKS)
    r_long = st.average_ranks(long_form(WIDE), higher_is_better=True)
    assert r_long.to_dict() == pytest.approx(HAND_RANKS)
    low = st.average_ranks(WIDE, higher_is_better=False)
    assert low.to_dict() == pytest.approx({m: 5.0 - v for m, v in HAND_RANKS.items()})
    assert list(low.index) == ["d", "c", "b", "a"]


def test_friedman_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    no_ties = pd.DataFrame(rng.random((7, 5)), columns=list("vwxyz"))
    for wide in (WIDE, no_ties, pd.DataFrame(rng.integers(0, 3, (9, 4)).astype(float))):
        res = st.friedman_test(wide)
        ref = stats.friedmanchisquare(*wide.to_numpy().T)
        assert res.statistic == pytest.approx(ref.statistic, rel=1e-10)
        assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-8)
        n, k = wide.shape
        f = (n - 1) * res.statistic / (n * (k - 1) - res.statistic)
        assert res.f_statistic == pytest.approx(f)
        assert res.f_pvalue == pytest.approx(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
        assert res.df == k - 1 and res.f_df == (k - 1, (k - 1) * (n - 1))
    # the statistic by hand for the untied formula: 12N/(k(k+1)) [sum R^2 - k(k+1)^2/4]
    assert st.friedman_test(no_ties).statistic == pytest.approx(
        12 * 7 / (5 * 6) * (np.sum(st.average_ranks(no_ties, higher_is_better=True) ** 2) - 5 * 36 / 4)
    )


def test_friedman_degenerate_tables():
    agree = pd.DataFrame([[3.0, 2.0, 1.0]] * 4, columns=list("abc"))
    res = st.friedman_test(agree)
    assert res.statistic == pytest.approx(4 * 2) and res.f_statistic == np.inf
    assert res.f_pvalue == 0.0
    flat = pd.DataFrame(np.ones((3, 3)), columns=list("abc"))
    assert st.friedman_test(flat).statistic == 0.0 and st.friedman_test(flat).pvalue == 1.0


def test_critical_difference_by_hand():
    # Demšar (2006) Table 5a, alpha = 0.05, and 5b, alpha = 0.10
    for k, q in {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 10: 3.164}.items():
        assert st._q_alpha(k, 0.05) == pytest.approx(q, abs=1e-3)
    assert st._q_alpha(4, 0.10) == pytest.approx(2.291, abs=1e-3)
    assert st.critical_difference(4, 5, 0.05) == pytest.approx(2.569 * np.sqrt(4 * 5 / (6 * 5)), abs=1e-4)  # 2.0975...
    with pytest.raises(FmcacheError):
        st.critical_difference(1, 5)
    with pytest.raises(FmcacheError):
        st.critical_difference(4, 5, alpha=1.5)


def test_nemenyi_on_the_hand_table():
    res = st.nemenyi(long_form(WIDE), higher_is_better=True)
    assert res.cd == pytest.approx(2.0976, abs=1e-4)
    assert res.n_datasets == 5 and res.alpha == 0.05
    # 3.4 - 1.5 = 1.9 < CD: no pair differs, one clique
    assert res.cliques == [("a", "b", "c", "d")]
    assert not res.differs("a", "d")


def test_cliques_constructed():
    ranks = pd.Series({"e": 4.5, "a": 1.0, "c": 2.6, "b": 1.5, "d": 3.0})
    assert st.cliques(ranks, 1.2) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert st.cliques(ranks, 10.0) == [("a", "b", "c", "d", "e")]
    assert st.cliques(ranks, 0.3) == []
    # a difference of exactly CD is significant (Demšar: "differ by at least CD")
    assert st.cliques(pd.Series({"x": 1.0, "y": 2.0}), 1.0) == []


def test_bad_inputs_say_what_to_fix():
    df = long_form(WIDE)
    with pytest.raises(FmcacheError, match="several rows"):
        st.average_ranks(pd.concat([df, df.head(1)]), higher_is_better=True)
    with pytest.raises(FmcacheError, match="finite value"):
        st.friedman_test(df.iloc[1:])
    with pytest.raises(FmcacheError, match="at least 2 methods"):
        st.friedman_test(WIDE[["a"]])
    with pytest.raises(FmcacheError, match="dataset="):
        st.average_ranks(df.rename(columns={"score": "auc"}).assign(note="x"), higher_is_better=True)
    res = st.average_ranks(df.rename(columns={"score": "auc"}), higher_is_better=True, score="auc")
    assert res.to_dict() == pytest.approx(HAND_RANKS)
