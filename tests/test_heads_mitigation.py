"""Each mitigation head moves the disparity it targets in the right direction on planted bias."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmcache.heads import fit_stack, linear, resample
from fmcache.heads.types import Batch, masked_mean, per_row_loss

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


def _rows_of(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g, y = np.nonzero(counts)
    reps = counts[g, y].astype(int)
    return np.repeat(g, reps).astype(np.int32), np.repeat(y, reps).astype(np.int32)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # N = 12, groups of 8 and 4 rows: 12 / (2 * 8) and 12 / (2 * 4)
        ("group", {(0, 0): 0.75, (0, 1): 0.75, (1, 0): 1.5, (1, 1): 1.5}),
        # four cells of 6, 2, 1, 3 rows: 12 / (4 * N_c)
        ("group_label", {(0, 0): 0.5, (0, 1): 1.5, (1, 0): 3.0, (1, 1): 1.0}),
    ],
)
def test_resample_row_weights_by_hand(mode, expected):
    counts = np.array([[6.0, 2.0], [1.0, 3.0]], np.float32)
    g, y = _rows_of(counts)
    n = g.size
    batch = Batch(x=jnp.zeros((n, 1)), y=jnp.asarray(y), g=jnp.asarray(g), m=jnp.ones(n), gm=jnp.ones(n), step=jnp.int32(0))
    w = np.asarray(resample.row_weights(batch, {"cell_counts": jnp.asarray(counts), "balance_label": jnp.float32(resample.MODES[mode])}))
    np.testing.assert_allclose(w, [expected[(a, b)] for a, b in zip(g, y)], rtol=1e-6)
    # the weights keep the total mass N, so the loss stays on the scale of an unweighted mean
    np.testing.assert_allclose(w.sum(), n, rtol=1e-6)
    if mode == "group":
        np.testing.assert_allclose([w[g == k].sum() for k in (0, 1)], [n / 2] * 2, rtol=1e-6)
    else:
        np.testing.assert_allclose([w[(g == a) & (y == b)].sum() for a in (0, 1) for b in (0, 1)], [n / 4] * 4, rtol=1e-6)


def lowers_auc_gap(y, base, new, g, n_boot: int = 300, seed: int = 0) -> bool:
    """``new`` shrinks the AUC gap of ``base``: by a fifth at least, with the 95% bootstrap
    interval of the paired difference (test rows resampled) above 0, without costing more
    than 0.05 of overall AUC, and still predicting both classes at 0.5.

    The bootstrap holds training fixed, so training noise alone (another initialisation)
    can give an interval clear of 0; the one-fifth floor is what tells a method from that.
    """
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        diffs.append(auc_gap(y[i], base[i], g[i]) - auc_gap(y[i], new[i], g[i]))
    lo = np.percentile(diffs, 2.5)
    hat = new > 0.5
    return bool(
        lo > 0
        and auc_gap(y, new, g) < 0.8 * auc_gap(y, base, g)
        and roc_auc_score(y, new) > roc_auc_score(y, base) - 0.05
        and 0 < hat.mean() < 1
    )


# resampling with every row weighing 1: the linear probe under another name
UNWEIGHTED = dataclasses.replace(
    resample.RESAMPLE,
    name="resample_unweighted",
    loss=lambda p, s, b, hp: (masked_mean(per_row_loss(linear.logits(p, b.x), b.y), b.gm), s),
)


@pytest.fixture(scope="module")
def linear_scores(data):
    (X, y, g), (Xt, _, _) = data
    return fit_stack("linear", X, y, g, hparams={"lr": LR}, epochs=EPOCHS).predict(Xt)[0]


@pytest.mark.parametrize("mode", ["group", "group_label"])
def test_resample_lowers_the_auc_gap_beyond_bootstrap_noise(data, linear_scores, mode):
    """Measured on ``planted`` (3000 training and 3000 test rows, lr 1e-2, 12 epochs, seed 0):
    AUC gap linear 0.329; group 0.229 (paired difference 95% interval [0.089, 0.111]),
    group x label 0.224 ([0.091, 0.119]); test AUC 0.936 / 0.928 / 0.926. At the benchmark's
    lr 2.5e-4 (100 epochs) the probes are far from converged and the gap depends on the
    initialisation more than on the weights: linear 0.474 vs group 0.461 ([0.009, 0.018])
    and group x label 0.454 ([0.013, 0.028]), while linear with another seed gives 0.173.
    """
    (X, y, g), (Xt, yt, gt) = data
    s = fit_stack("resample", X, y, g, hparams={"lr": LR, "balance_label": resample.MODES[mode]}, epochs=EPOCHS).predict(Xt)[0]
    assert lowers_auc_gap(yt, linear_scores, s, gt), f"{mode}: gap {auc_gap(yt, s, gt):.3f} vs linear {auc_gap(yt, linear_scores, gt):.3f}"


def test_unit_weights_do_not_pass_the_gap_criterion(data, linear_scores):
    (X, y, g), (Xt, yt, gt) = data
    same = fit_stack(UNWEIGHTED, X, y, g, hparams={"lr": LR}, epochs=EPOCHS).predict(Xt)[0]
    np.testing.assert_allclose(same, linear_scores, atol=1e-5)
    assert not lowers_auc_gap(yt, linear_scores, same, gt)
    other_init = fit_stack(UNWEIGHTED, X, y, g, hparams={"lr": LR, "seed": 1}, epochs=EPOCHS).predict(Xt)[0]
    assert not lowers_auc_gap(yt, linear_scores, other_init, gt)


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
