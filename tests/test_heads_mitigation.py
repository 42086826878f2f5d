"""Each mitigation head moves the disparity it targets in the right direction on planted bias."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmcache.heads import fit_stack, groupdro, linear, resample
from fmcache.heads.types import Batch, HeadSpec, masked_mean, per_row_loss

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
def linear_scores(data):
    (X, y, g), (Xt, yt, gt) = data
    return fit_stack("linear", X, y, g, hparams={"lr": LR, "seed": SEEDS}, epochs=EPOCHS).predict(Xt)


@pytest.fixture(scope="module")
def baseline(data, linear_scores):
    (X, y, g), (Xt, yt, gt) = data
    scores = linear_scores
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


def gap_lowered(yt, gt, base, new, n_boot: int = 300, seed: int = 0) -> tuple[bool, dict[str, float]]:
    """Does ``new`` lower the AUC gap against ``base`` on these test rows, and is it still a
    classifier? The paired difference of the gaps (base - new), bootstrapped over test rows,
    must have a 95% interval above 0 and the gap shrink by a fifth at least; test AUC within
    0.05 of the base's; both classes predicted at 0.5.

    The bootstrap holds training fixed, so training noise alone (another initialisation)
    can give an interval clear of 0; the one-fifth floor is what tells a method from that.
    """
    rng = np.random.default_rng(seed)
    n = yt.size
    diffs = []
    while len(diffs) < n_boot:
        i = rng.integers(0, n, n)
        y, g = yt[i], gt[i]
        # a resample needs both classes in both groups for the per-group AUCs
        if any(np.unique(y[g == k]).size < 2 for k in (0, 1)):
            continue
        diffs.append(auc_gap(y, base[i], g) - auc_gap(y, new[i], g))
    low, high = np.percentile(diffs, [2.5, 97.5])
    hat = new > 0.5
    info = {"gap_base": auc_gap(yt, base, gt), "gap_new": auc_gap(yt, new, gt), "diff_low": float(low), "diff_high": float(high),
            "auc_base": roc_auc_score(yt, base), "auc_new": roc_auc_score(yt, new), "positive_rate": float(hat.mean())}
    ok = (low > 0 and info["gap_new"] < 0.8 * info["gap_base"] and info["auc_new"] >= info["auc_base"] - 0.05
          and 0 < hat.mean() < 1)
    return bool(ok), info


# resampling with every row weighing 1: the linear probe under another name
UNWEIGHTED = dataclasses.replace(
    resample.RESAMPLE,
    name="resample_unweighted",
    loss=lambda p, s, b, hp: (masked_mean(per_row_loss(linear.logits(p, b.x), b.y), b.gm), s),
)


@pytest.fixture(scope="module")
def linear_seed0(linear_scores):
    # a head of a stack equals the same head trained alone
    return linear_scores[0]


@pytest.mark.parametrize("mode", ["group", "group_label"])
def test_resample_lowers_the_auc_gap_beyond_bootstrap_noise(data, linear_seed0, mode):
    """Measured on ``planted`` (3000 training and 3000 test rows, lr 1e-2, 12 epochs, seed 0):
    AUC gap linear 0.329; group 0.229 (paired difference 95% interval [0.089, 0.111]),
    group x label 0.224 ([0.091, 0.119]); test AUC 0.936 / 0.928 / 0.926. At the benchmark's
    lr 2.5e-4 (100 epochs) the probes are far from converged and the gap depends on the
    initialisation more than on the weights: linear 0.474 vs group 0.461 ([0.009, 0.018])
    and group x label 0.454 ([0.013, 0.028]), while linear with another seed gives 0.173.
    """
    (X, y, g), (Xt, yt, gt) = data
    s = fit_stack("resample", X, y, g, hparams={"lr": LR, "balance_label": resample.MODES[mode]}, epochs=EPOCHS).predict(Xt)[0]
    assert gap_lowered(yt, gt, linear_seed0, s)[0], f"{mode}: gap {auc_gap(yt, s, gt):.3f} vs linear {auc_gap(yt, linear_seed0, gt):.3f}"


def test_unit_weights_do_not_pass_the_gap_criterion(data, linear_seed0):
    (X, y, g), (Xt, yt, gt) = data
    same = fit_stack(UNWEIGHTED, X, y, g, hparams={"lr": LR}, epochs=EPOCHS).predict(Xt)[0]
    np.testing.assert_allclose(same, linear_seed0, atol=1e-5)
    assert not gap_lowered(yt, gt, linear_seed0, same)[0]
    other_init = fit_stack(UNWEIGHTED, X, y, g, hparams={"lr": LR, "seed": 1}, epochs=EPOCHS).predict(Xt)[0]
    assert not gap_lowered(yt, gt, linear_seed0, other_init)[0]


def test_groupdro_weights_move_to_the_worst_cell():
    rng = np.random.default_rng(0)
    n = 2000
    g = (rng.random(n) < 0.5).astype(np.int8)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int8)
    flip = (g == 1) & (rng.random(n) < 0.3)  # group 1's labels are noisier: its cells' loss stays higher
    y[flip] = 1 - y[flip]
    fit = fit_stack("groupdro", X, y, g, hparams={"lr": 1e-2, "dro_step": [0.0, 0.01, 0.05], "adj": 0.0}, epochs=5)
    q = fit.state["q"]  # cells g * 2 + y
    assert q.shape == (3, 4)
    np.testing.assert_allclose(q[0], [0.25] * 4, atol=1e-6)
    minority = q[:, 2] + q[:, 3]
    assert 0.5 < minority[1] < minority[2] and minority[2] > 0.6
    assert np.argmax(q[2]) in (2, 3)


def _dro_batch(x, y, g, gm):
    x = jnp.asarray(x, jnp.float32)
    return Batch(x=x, y=jnp.asarray(y, jnp.int32), g=jnp.asarray(g, jnp.int32), m=jnp.asarray(gm, jnp.float32),
                 gm=jnp.asarray(gm, jnp.float32), step=jnp.asarray(0, jnp.int32))


def test_groupdro_q_follows_the_exponentiated_gradient_update_by_hand():
    counts = np.array([[4.0, 9.0], [1.0, 16.0]], np.float32)  # training rows per (group, label) cell
    hp = {"dro_step": jnp.float32(0.5), "adj": jnp.float32(1.0), "cells": jnp.float32(1.0), "cell_counts": jnp.asarray(counts)}
    w, b = np.array([[0.7], [-0.4]], np.float32), np.array([0.2], np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    batches = [
        # the last row's group is unknown: it counts for no cell
        (np.array([[1.0, 0.5], [-1.0, 2.0], [0.3, -0.2], [2.0, 1.0], [0.0, 0.0]]), [0, 1, 1, 0, 1], [0, 0, 1, 1, 0], [1, 1, 1, 1, 0]),
        # cell (1, 1) is absent from this batch: only its adjustment moves its weight
        (np.array([[0.5, 0.5], [1.5, -1.0], [-0.5, 1.0], [1.0, 2.0]]), [0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]),
    ]
    state = groupdro.init_state(HeadSpec(d=2), hp)
    q = np.full(4, 0.25)
    adj = 1.0 / np.sqrt(counts.reshape(-1))
    for x, y, g, gm in batches:
        loss, state = groupdro.loss(params, state, _dro_batch(x, y, g, gm), hp)
        z = x @ w[:, 0] + b[0]
        rows = np.logaddexp(0.0, z) - np.asarray(y) * z
        cell = 2 * np.asarray(g) + np.asarray(y)
        known = np.asarray(gm) == 1
        per_cell = np.array([rows[known & (cell == c)].mean() if np.any(known & (cell == c)) else 0.0 for c in range(4)])
        q = q * np.exp(0.5 * (per_cell + adj))
        q = q / q.sum()
        np.testing.assert_allclose(np.asarray(state["q"]), q, rtol=0, atol=1e-6)
        np.testing.assert_allclose(float(loss), np.sum(q * (per_cell + adj)), rtol=0, atol=1e-6)


def test_groupdro_adjustment_alone_moves_q_by_c_over_root_n():
    counts = np.array([[100.0, 25.0], [4.0, 0.0]], np.float32)  # cell (1, 1) has no training rows
    hp = {"dro_step": jnp.float32(0.3), "adj": jnp.float32(2.0), "cells": jnp.float32(1.0), "cell_counts": jnp.asarray(counts)}
    params = {"w": jnp.zeros((2, 1)), "b": jnp.zeros((1,))}  # every row's loss is log 2
    x = np.ones((3, 2))
    loss, state = groupdro.loss(params, groupdro.init_state(HeadSpec(d=2), hp), _dro_batch(x, [0, 1, 0], [0, 0, 1], [1, 1, 1]), hp)
    # log 2 is common to the three cells and cancels; only 2 / sqrt(n) tells them apart
    q = np.exp(0.3 * np.array([2 / 10, 2 / 5, 2 / 2]))
    np.testing.assert_allclose(np.asarray(state["q"]), [*(q / q.sum()), 0.0], atol=1e-6)
    np.testing.assert_allclose(float(loss), np.log(2) + np.sum(q / q.sum() * [0.2, 0.4, 1.0]), atol=1e-6)


def test_groupdro_on_attribute_groups_alone_keeps_q_to_the_groups():
    counts = np.array([[30.0, 70.0], [5.0, 20.0]], np.float32)
    hp = {"dro_step": jnp.float32(0.3), "adj": jnp.float32(2.0), "cells": jnp.float32(0.0), "cell_counts": jnp.asarray(counts)}
    params = {"w": jnp.zeros((2, 1)), "b": jnp.zeros((1,))}
    _, state = groupdro.loss(params, groupdro.init_state(HeadSpec(d=2), hp), _dro_batch(np.ones((2, 2)), [0, 1], [0, 1], [1, 1]), hp)
    q = np.exp(0.3 * np.array([2 / 10, 2 / 5]))
    np.testing.assert_allclose(np.asarray(state["q"]), [*(q / q.sum()), 0.0, 0.0], atol=1e-6)


def _worst_cell_loss(y, s, g):
    s = np.clip(s, 1e-7, 1 - 1e-7)
    rows = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    return max(rows[(g == a) & (y == c)].mean() for a in (0, 1) for c in (0, 1))


def _auc(y, s):
    # Mann-Whitney on ranks (scores from a sigmoid have no ties that matter here); roc_auc_score
    # is too slow for hundreds of resamples
    r = np.empty(len(s))
    r[np.argsort(s, kind="stable")] = np.arange(1, len(s) + 1)
    pos = y == 1
    n1 = pos.sum()
    return (r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))


def _worst_group_auc(y, s, g):
    return min(_auc(y[g == a], s[g == a]) for a in (0, 1))


def beats_on_worst_group(y, g, base, cand, n_boot=200, seed=0, margin=0.05):
    """Whether ``cand`` lowers the worst cell's loss and raises the worst group's AUC against
    ``base`` by more than ``margin`` (95% bootstrap intervals of the paired differences over
    test rows exclude it, and so 0), keeps overall AUC within 0.05 and predicts both classes
    at 0.5. The margin is there because paired intervals are narrow: two ERM fits from
    different seeds already differ by 0.01-0.03, with intervals that exclude 0."""
    rng = np.random.default_rng(seed)
    d_loss, d_auc = [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        d_loss.append(_worst_cell_loss(y[i], cand[i], g[i]) - _worst_cell_loss(y[i], base[i], g[i]))
        d_auc.append(_worst_group_auc(y[i], cand[i], g[i]) - _worst_group_auc(y[i], base[i], g[i]))
    loss_ci, auc_ci = np.percentile(d_loss, [2.5, 97.5]), np.percentile(d_auc, [2.5, 97.5])
    overall = _auc(y, cand) - _auc(y, base)
    hat = cand > 0.5
    info = {"loss_ci": loss_ci, "auc_ci": auc_ci, "overall": overall}
    return bool(loss_ci[1] < -margin and auc_ci[0] > margin and overall > -0.05 and 0 < hat.mean() < 1), info


def test_groupdro_lowers_worst_group_loss_and_raises_worst_group_auc_against_linear(data, linear_scores):
    (X, y, g), (Xt, yt, gt) = data
    linear = linear_scores
    dro = fit_stack("groupdro", X, y, g, hparams={"lr": LR, "seed": SEEDS}, epochs=EPOCHS).predict(Xt)
    for k in range(len(SEEDS)):
        ok, info = beats_on_worst_group(yt, gt, linear[k], dro[k])
        assert ok, info
    # the criterion is not met by chance: plain ERM from another seed does not pass it. (GroupDRO
    # with dro_step = 0 and adj = 0 is no stand-in for ERM: q stays uniform over the cells, as
    # Sagawa et al. initialise it, which is the cell-balanced loss, itself a mitigation.)
    ok, info = beats_on_worst_group(yt, gt, linear[0], linear[1])
    assert not ok, info


def test_domain_independent_heads_use_the_known_group():
    (X, y, g), (Xt, yt, gt) = planted(3000, 0), planted(3000, 1)
    fit = fit_stack("domain_ind", X, y, g, hparams={"lr": LR}, epochs=EPOCHS)
    own, summed = fit.predict(Xt, groups=gt)[0], fit.predict(Xt)[0]
    minority = gt == 1
    # each group's own output set learnt its own signal
    assert roc_auc_score(yt[minority], own[minority]) > roc_auc_score(yt[minority], summed[minority]) - 0.01
    assert roc_auc_score(yt[minority], own[minority]) > 0.7
    assert abs(fit.params["w"][0, 1, 1, 0]) > abs(fit.params["w"][0, 1, 0, 0])


@pytest.fixture(scope="module")
def domain_ind_scores(data):
    (X, y, g), (Xt, _, gt) = data
    linear = fit_stack("linear", X, y, g, hparams={"lr": LR}, epochs=EPOCHS).predict(Xt)[0]
    fit = fit_stack("domain_ind", X, y, g, hparams={"lr": LR}, epochs=EPOCHS)
    return {"linear": linear, "sum": fit.predict(Xt)[0], "known": fit.predict(Xt, groups=gt)[0]}


def test_domain_ind_lowers_the_auc_gap_without_the_test_group(data, domain_ind_scores):
    """Measured (seed 0, 300 resamples of the 3000 test rows; interval of linear gap minus head gap):
    linear AUC 0.936, gap 0.329;
    domain_ind sum: AUC 0.900, gap 0.139, difference [0.169, 0.214], 29% predicted positive;
    domain_ind known: AUC 0.963, gap 0.134, difference [0.152, 0.234], 33% predicted positive.
    With init seed 1 sum is closer to the AUC bar (0.889 against linear's 0.936), so the bar
    is met with room only by the oracle rule."""
    _, (_, yt, gt) = data
    s = domain_ind_scores
    for rule in ("sum", "known"):
        ok, info = gap_lowered(yt, gt, s["linear"], s[rule])
        assert ok, f"domain_ind {rule}: {info}"
    # the criterion is not met by a head without per-group outputs, nor by a constant score
    assert not gap_lowered(yt, gt, s["linear"], s["linear"])[0]
    assert not gap_lowered(yt, gt, s["linear"], np.full_like(s["linear"], 0.3))[0]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_domain_ind_sum_rule_is_the_mean_of_group_probabilities():
    (X, y, g), (Xt, _, gt) = planted(600, 0), planted(200, 1)
    fit = fit_stack("domain_ind", X, y, g, hparams={"lr": LR}, epochs=3)
    w, b = fit.params["w"][0], fit.params["b"][0]  # (d, G, 1), (G, 1)
    probs = _sigmoid(np.einsum("nd,dgo->ngo", Xt.astype(np.float64), w) + b)[..., 0]  # (n, G)
    np.testing.assert_allclose(fit.predict(Xt)[0], probs.mean(axis=1), atol=1e-6)
    own = probs[np.arange(gt.size), gt]
    np.testing.assert_allclose(fit.predict(Xt, groups=gt)[0], own, atol=1e-6)
    # a row of unknown group falls back to the sum rule
    unknown = np.where(np.arange(gt.size) % 2 == 0, -1, gt)
    mixed = fit.predict(Xt, groups=unknown)[0]
    np.testing.assert_allclose(mixed, np.where(unknown < 0, probs.mean(axis=1), own), atol=1e-6)


def test_domain_ind_outputs_are_sized_by_the_heads_own_attribute():
    (X, y, g), (Xt, _, gt) = planted(600, 0), planted(200, 1)
    rng = np.random.default_rng(2)
    four = np.c_[g, rng.integers(0, 4, g.size)]
    beside = fit_stack("domain_ind", X, y, four, hparams={"lr": LR, "attribute": [0, 1]}, epochs=5)
    alone = fit_stack("domain_ind", X, y, g, hparams={"lr": LR}, epochs=5)
    np.testing.assert_array_equal(beside.params["frozen"]["trained"], [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(beside.predict(Xt)[0], alone.predict(Xt)[0], atol=1e-6)
    # the known rule reads only trained slots: a group the head never saw falls back to sum
    unseen = np.c_[np.full(gt.size, 3), gt]
    np.testing.assert_allclose(beside.predict(Xt, groups=unseen)[0], alone.predict(Xt)[0], atol=1e-6)
    np.testing.assert_allclose(beside.predict(Xt, groups=np.c_[gt, gt])[0], alone.predict(Xt, groups=gt)[0], atol=1e-6)
