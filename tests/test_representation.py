"""Representation fairness: the attribute probe's AUC and interval, and t-SNE maps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmcache.errors import FmcacheError
from fmcache.fairness import representation as rep


def data(n=600, d=16, k=2, signal=0.0, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, k, n)
    x = rng.normal(size=(n, d))
    x[:, :k] += signal * np.eye(k)[g]
    g[:25] = -1  # unknown attribute: left out of the probe
    return x.astype(np.float32), g.astype(np.int8)


def test_rank_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet([1, 1, 1], 300)
    p[:40] = p[0]  # ties
    assert rep.ovr_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    s = np.round(rng.random(300), 1)
    assert rep._binary_auc(y == 1, s) == pytest.approx(roc_auc_score(y == 1, s))


@pytest.mark.parametrize("interval", ["bootstrap", "folds"])
def test_independent_features_give_chance(interval):
    x, g = data()
    res = rep.attribute_predictability(x, g, interval=interval, n_boot=300)
    assert 0.4 < res.auc < 0.6
    assert res.ci_low <= res.auc <= res.ci_high
    if interval == "folds":
        assert res.ci_low < 0.5 < res.ci_high
    assert res.n == int((g >= 0).sum()) and len(res.fold_aucs) == 5
    assert res.as_dict()["metric"] == "attribute_auc"


def test_encoded_attribute_is_predicted_binary_and_multigroup():
    x, g = data(signal=3.0)
    res = rep.attribute_predictability(x, g, n_boot=300)
    assert res.auc > 0.95 and res.ci_low <= res.auc <= res.ci_high
    x3, g3 = data(k=3, signal=3.0, seed=1)
    res3 = rep.attribute_predictability(x3, g3, interval="folds")
    assert res3.auc > 0.95 and res3.ci_low <= res3.auc <= res3.ci_high <= 1.0
    assert sorted(res3.group_counts) == [0, 1, 2]
    # a subsample still answers, and the same seed answers the same
    a = rep.attribute_predictability(x3, g3, max_samples=200, n_boot=100, seed=3)
    b = rep.attribute_predictability(x3, g3, max_samples=200, n_boot=100, seed=3)
    assert a.n <= 210 and a.auc > 0.9 and (a.auc, a.ci_low) == (b.auc, b.ci_low)


def test_probe_errors():
    x, g = data(n=100)
    with pytest.raises(FmcacheError, match="fewer than n_splits"):
        rep.attribute_predictability(x, np.where(np.arange(100) < 3, 1, 0))
    with pytest.raises(FmcacheError, match="at least 2 known groups"):
        rep.attribute_predictability(x, np.zeros(100, int))
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(FmcacheError, match="row 7"):
        rep.attribute_predictability(bad, g)
    with pytest.raises(FmcacheError, match="one entry per feature row"):
        rep.attribute_predictability(x, g[:50])


def test_tsne_shape_subsample_and_determinism():
    x, g = data(n=160, d=60, k=3, signal=3.0)
    a = rep.tsne_embedding(x, g, max_points=120, seed=0, pca_components=10, n_jobs=1)
    b = rep.tsne_embedding(x, g, max_points=120, seed=0, pca_components=10, n_jobs=1)
    assert a.coords.shape == (120, 2) and np.isfinite(a.coords).all()
    assert np.all(np.diff(a.index) > 0) and a.index.max() < 160
    np.testing.assert_array_equal(a.groups, g[a.index])
    np.testing.assert_array_equal(a.coords, b.coords)
    c = rep.tsne_embedding(x, g, max_points=120, seed=1, pca_components=10, n_jobs=1)
    assert not np.array_equal(a.index, c.index)
    small = rep.tsne_embedding(x[:10], n_jobs=1)  # perplexity capped for tiny inputs
    assert small.coords.shape == (10, 2) and small.perplexity == 3.0 and small.groups is None
