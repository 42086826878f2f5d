"""Each mitigation head moves the disparity it targets in the right direction on planted bias."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmcache.heads import fit_stack

EPOCHS, LR, SEEDS = 12, 1e-2, [0, 1]


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 20% minority whose label lives on another feature and is noisier; base rates
    differ by group and one feature reveals the group."""
    rng = np.random.default_rng(seed)
    g = (rng.random(n) < 0.2).astype(np.int8)
    y = (rng.random(n) < np.where(g == 1, 0.6, 0.3)).astype(np.int8)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    s = 2.0 * y - 1.0
    X[:, 0] += np.where(g == 0, 1.5 * s, 0.0)
    X[:, 1] += np.where(g == 1, 0.8 * s, 0.0)
    X[:, 2] += 2.0 * g
    return X, y, g


@pytest.fixture(scope="module")
def data():
    return planted(3000, 0), planted(3000, 1)


def auc_gap(y, s, g) -> float:
    return abs(roc_auc_score(y[g == 0], s[g == 0]) - roc_auc_score(y[g == 1], s[g == 1]))


def dp_gap(y, s, g) -> float:
    hat = s > 0.5
    return abs(hat[g == 0].mean() - hat[g == 1].mean())


def eo_gap(y, s, g) -> float:
    hat = s > 0.5
    return max(abs(hat[(g == 0) & (y == c)].mean() - hat[(g == 1) & (y == c)].mean()) for c in (0, 1))


def mean_disparity(head: str, data, metric, **hp) -> float:
    (X, y, g), (Xt, yt, gt) = data
    fit = fit_stack(head, X, y, g, hparams={"lr": LR, "seed": SEEDS, **hp}, epochs=EPOCHS, hidden=16)
    return float(np.mean([metric(yt, s, gt) for s in fit.predict(Xt)]))


@pytest.fixture(scope="module")
def baseline(data):
    (X, y, g), (Xt, yt, gt) = data
    scores = fit_stack("linear", X, y, g, hparams={"lr": LR, "seed": SEEDS}, epochs=EPOCHS).predict(Xt)
    return {m.__name__: float(np.mean([m(yt, s, gt) for s in scores])) for m in (auc_gap, dp_gap, eo_gap)}


@pytest.mark.parametrize(
    ("head", "metric", "hp"),
    [
        ("resample", auc_gap, {}),
        ("groupdro", auc_gap, {"dro_step": 0.05}),
        ("laftr", dp_gap, {"adv_coeff": 1.0, "lr": 3e-3}),
        ("fairpenalty", dp_gap, {"penalty": 3.0}),
        ("fairpenalty_eo", eo_gap, {"penalty": 3.0}),
    ],
)
def test_mitigation_reduces_its_disparity_against_linear(data, baseline, head, metric, hp):
    before = baseline[metric.__name__]
    after = mean_disparity(head, data, metric, **hp)
    assert after < 0.8 * before, f"{head}: {metric.__name__} {after:.3f} vs linear {before:.3f}"


def test_groupdro_weights_move_to_the_worst_group():
    rng = np.random.default_rng(0)
    n = 2000
    g = (rng.random(n) < 0.5).astype(np.int8)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int8)
    flip = (g == 1) & (rng.random(n) < 0.3)  # group 1's labels are noisier: its loss stays higher
    y[flip] = 1 - y[flip]
    fit = fit_stack("groupdro", X, y, g, hparams={"lr": 1e-2, "dro_step": [0.0, 0.01, 0.05]}, epochs=5)
    q = fit.state["q"]
    np.testing.assert_allclose(q[0], [0.5, 0.5], atol=1e-6)
    assert 0.5 < q[1, 1] < q[2, 1] and q[2, 1] > 0.6


def test_domain_independent_heads_use_the_known_group():
    (X, y, g), (Xt, yt, gt) = planted(3000, 0), planted(3000, 1)
    fit = fit_stack("domain_ind", X, y, g, hparams={"lr": LR}, epochs=EPOCHS)
    own, summed = fit.predict(Xt, groups=gt)[0], fit.predict(Xt)[0]
    minority = gt == 1
    # each group's own output set learnt its own signal
    assert roc_auc_score(yt[minority], own[minority]) > roc_auc_score(yt[minority], summed[minority]) - 0.01
    assert roc_auc_score(yt[minority], own[minority]) > 0.7
    assert abs(fit.params["w"][0, 1, 1, 0]) > abs(fit.params["w"][0, 1, 0, 0])
