"""Each mitigation head moves the disparity it targets in the right direction on planted bias.

The method tests train at the benchmark's protocol (AdamW, lr 2.5e-4, weight decay 0.05,
batch 128, 100 epochs: ``BENCHMARK_GRID`` and ``fit_stack``'s defaults) on embedding-like
features, and judge every head by one criterion, ``lowers``, against the linear probe
trained the same way. The unit tests of each head's loss use small hand-made batches.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from helpers.fairness_checks import auc_gap, dp_gap, eo_gap, lowers, worst_cell_loss, worst_group_auc_shortfall
from sklearn.metrics import roc_auc_score

from fmcache.heads import HEADS, fit_stack, groupdro, linear, resample
from fmcache.heads.inputs import COMMON_HPARAMS
from fmcache.heads.types import (
    BENCHMARK_GRID,
    Batch,
    HeadSpec,
    masked_mean,
    per_row_loss,
)

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


@pytest.fixture(scope="module")
def linear_scores(data):
    (X, y, g), (Xt, _, _) = data
    return fit_stack("linear", X, y, g, hparams={"lr": LR, "seed": SEEDS}, epochs=EPOCHS).predict(Xt)


def test_laftr_reduces_the_dp_gap_against_linear(data, linear_scores):
    """LAFTR keeps its own protocol (``planted``, lr 3e-3, 12 epochs, encoder width 16): its
    adversarial training is tuned apart from the other heads."""
    (X, y, g), (Xt, yt, gt) = data
    before = float(np.mean([dp_gap(yt, s, gt) for s in linear_scores]))
    fit = fit_stack("laftr", X, y, g, hparams={"lr": 3e-3, "seed": SEEDS, "adv_coeff": 1.0}, epochs=EPOCHS, hidden=16)
    after = float(np.mean([dp_gap(yt, s, gt) for s in fit.predict(Xt)]))
    assert after < 0.8 * before, f"laftr: dp_gap {after:.3f} vs linear {before:.3f}"


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
    batch = Batch(x=jnp.zeros((n, 1)), y=jnp.asarray(y), g=jnp.asarray(g), m=jnp.ones(n), gm=jnp.ones(n))
    w = np.asarray(resample.row_weights(batch, {"cell_counts": jnp.asarray(counts), "balance_label": jnp.float32(resample.MODES[mode])}))
    np.testing.assert_allclose(w, [expected[(a, b)] for a, b in zip(g, y)], rtol=1e-6)
    # the weights keep the total mass N, so the loss stays on the scale of an unweighted mean
    np.testing.assert_allclose(w.sum(), n, rtol=1e-6)
    if mode == "group":
        np.testing.assert_allclose([w[g == k].sum() for k in (0, 1)], [n / 2] * 2, rtol=1e-6)
    else:
        np.testing.assert_allclose([w[(g == a) & (y == b)].sum() for a in (0, 1) for b in (0, 1)], [n / 4] * 4, rtol=1e-6)


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
                 gm=jnp.asarray(gm, jnp.float32))


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


def test_domain_independent_heads_use_the_known_group():
    (X, y, g), (Xt, yt, gt) = planted(3000, 0), planted(3000, 1)
    fit = fit_stack("domain_ind", X, y, g, hparams={"lr": LR}, epochs=EPOCHS)
    own, summed = fit.predict(Xt, groups=gt)[0], fit.predict(Xt)[0]
    minority = gt == 1
    # each group's own output set learnt its own signal
    assert roc_auc_score(yt[minority], own[minority]) > roc_auc_score(yt[minority], summed[minority]) - 0.01
    assert roc_auc_score(yt[minority], own[minority]) > 0.7
    assert abs(fit.params["w"][0, 1, 1, 0]) > abs(fit.params["w"][0, 1, 0, 0])


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
# The method tests: benchmark protocol, embedding-like features.

MITIGATION = ("resample", "groupdro", "fairpenalty", "fairpenalty_eo", "domain_ind")
D, N = 48, 6000


def planted_embeddings(n: int, seed: int, d: int = D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``planted``'s bias in features that look more like a model's embeddings: d = 48, and
    the majority's label, the minority's label and the group each lie along a direction
    spread over every coordinate (three orthonormal directions, the same for every draw).
    At lr 2.5e-4 a probe on 8 features is still far from converged after 100 epochs, and
    its gaps then depend on the initialisation; here two seeds of the linear probe agree
    to 0.003 in AUC gap."""
    u, v, w = np.linalg.qr(np.random.default_rng(1234).normal(size=(d, 3)))[0].T
    rng = np.random.default_rng(seed)
    g = (rng.random(n) < 0.2).astype(np.int8)
    y = (rng.random(n) < np.where(g == 1, 0.6, 0.3)).astype(np.int8)
    s = 2.0 * y - 1.0
    X = rng.normal(size=(n, d)) + np.outer(np.where(g == 0, 1.5 * s, 0.0), u) + np.outer(np.where(g == 1, 0.8 * s, 0.0), v) + np.outer(2.0 * g, w)
    return X.astype(np.float32), y, g


@pytest.fixture(scope="module")
def emb():
    return planted_embeddings(N, 0), planted_embeddings(N, 1)


def bench_fit(head, emb, **hp) -> np.ndarray:
    """Scores on the test rows of heads trained at the benchmark's protocol: fit_stack's
    defaults (lr 2.5e-4, weight decay 0.05, batch 128, 100 epochs), ``hp`` the heads' own
    settings, one head per entry of a list."""
    (X, y, g), (Xt, _, _) = emb
    return fit_stack(head, X, y, g, hparams=hp or None, n_heads=None if hp else 1).predict(Xt)


def test_the_method_tests_train_at_the_benchmark_protocol():
    defaults = inspect.signature(fit_stack).parameters
    assert defaults["epochs"].default == 100 and defaults["batch_size"].default == 128
    assert {k: (COMMON_HPARAMS[k],) for k in BENCHMARK_GRID} == dict(BENCHMARK_GRID) == {"lr": (2.5e-4,), "weight_decay": (0.05,)}
    for name in ("linear", *MITIGATION):
        assert dict(HEADS[name].default_grid) == dict(BENCHMARK_GRID), name


@pytest.fixture(scope="module")
def bench_linear(emb):
    return bench_fit("linear", emb, seed=[0, 1])


def _test(emb):
    return emb[1][1], emb[1][2]


# resampling with every row weighing 1: the linear probe under another name
UNWEIGHTED = dataclasses.replace(
    resample.RESAMPLE,
    name="resample_unweighted",
    loss=lambda p, s, b, hp: (masked_mean(per_row_loss(linear.logits(p, b.x), b.y), b.gm), s),
)


@pytest.fixture(scope="module")
def bench_resample(emb):
    return bench_fit("resample", emb, balance_label=[resample.MODES["group"], resample.MODES["group_label"]])


@pytest.mark.parametrize("mode", ["group", "group_label"])
def test_resample_lowers_the_auc_gap_at_the_benchmark_protocol(emb, bench_linear, bench_resample, mode):
    """Measured (test rows of ``planted_embeddings``, 300 resamples; interval of linear gap
    minus head gap): linear AUC gap 0.319, AUC 0.934, 34% predicted positive;
    group: gap 0.175, interval [0.129, 0.159], AUC 0.923, 36% positive;
    group x label: gap 0.178, interval [0.126, 0.156], AUC 0.919, 38% positive."""
    yt, gt = _test(emb)
    ok, info = lowers(auc_gap, yt, gt, bench_linear[0], bench_resample[list(resample.MODES).index(mode)])
    assert ok, f"resample {mode}: {info}"


@pytest.mark.slow
def test_resample_with_unit_weights_is_the_linear_probe_and_fails_the_criterion(emb, bench_linear):
    same = bench_fit(UNWEIGHTED, emb, seed=[0, 1])
    np.testing.assert_allclose(same, bench_linear, atol=1e-5)
    yt, gt = _test(emb)
    assert not lowers(auc_gap, yt, gt, bench_linear[0], same[1])[0]


# GroupDRO's exponentiated-gradient step: the default (0.01) moves q by exp(0.01 * loss
# difference) per step, and over the protocol's 4700 steps q ends on the minority cells;
# the majority's fit then goes and test AUC falls by 0.13. 0.001 keeps AUC within 0.05.
DRO_STEP = 0.001


@pytest.fixture(scope="module")
def bench_groupdro(emb):
    return bench_fit("groupdro", emb, dro_step=[DRO_STEP, groupdro.GROUPDRO.hparams["dro_step"]])


def test_groupdro_lowers_worst_cell_loss_and_raises_worst_group_auc_at_the_benchmark_protocol(emb, bench_linear, bench_groupdro):
    """Measured at dro_step 0.001 (cells, adj 1): worst cell loss linear 0.708 -> 0.550,
    interval [0.138, 0.212]; worst-group AUC 0.657 -> 0.807 (shortfall 0.343 -> 0.193),
    interval [0.131, 0.173]; AUC 0.934 -> 0.901; 40% predicted positive. At the default
    dro_step 0.01 both targets still move (worst cell loss 0.582, worst-group AUC 0.795,
    interval of the shortfall [0.102, 0.175]) but AUC falls to 0.804: it fails the AUC bar,
    as asserted."""
    yt, gt = _test(emb)
    for metric in (worst_cell_loss, worst_group_auc_shortfall):
        ok, info = lowers(metric, yt, gt, bench_linear[0], bench_groupdro[0])
        assert ok, f"groupdro {metric.__name__}: {info}"
    ok, info = lowers(worst_group_auc_shortfall, yt, gt, bench_linear[0], bench_groupdro[1])
    assert info["diff_low"] > 0 and info["auc_new"] < info["auc_base"] - 0.05, info


# penalties: the selected one, one from the search grid, and an over-penalised head
PENALTIES = [0.3, 3.0, 100.0]


@pytest.fixture(scope="module")
def bench_fairpenalty(emb):
    return bench_fit("fairpenalty", emb, penalty=PENALTIES)


@pytest.fixture(scope="module")
def bench_fairpenalty_eo(emb):
    return bench_fit("fairpenalty_eo", emb, penalty=PENALTIES)


def test_fairpenalty_lowers_the_dp_gap_at_the_benchmark_protocol(emb, bench_linear, bench_fairpenalty):
    """Measured at penalty 0.3: DP gap linear 0.239 -> 0.052, interval [0.167, 0.210], AUC
    0.934 -> 0.923, 30% predicted positive (linear 34%)."""
    yt, gt = _test(emb)
    ok, info = lowers(dp_gap, yt, gt, bench_linear[0], bench_fairpenalty[0])
    assert ok, f"fairpenalty: {info}"


def test_fairpenalty_eo_lowers_the_eqodds_gap_at_the_benchmark_protocol(emb, bench_linear, bench_fairpenalty_eo):
    """Measured at penalty 0.3: EqOdds gap linear 0.342 -> 0.159, interval [0.146, 0.217],
    AUC 0.934 -> 0.920, 31% predicted positive (linear 34%). Higher penalties lower the gap
    further at too high a cost in AUC: see the over-penalised test."""
    yt, gt = _test(emb)
    ok, info = lowers(eo_gap, yt, gt, bench_linear[0], bench_fairpenalty_eo[0])
    assert ok, f"fairpenalty_eo: {info}"


@pytest.fixture(scope="module")
def bench_domain_ind(emb):
    (X, y, g), (Xt, _, _) = emb
    # predict without groups: the sum rule, which needs no test group
    return {"sum": fit_stack("domain_ind", X, y, g, n_heads=1).predict(Xt)[0]}


def test_domain_ind_lowers_the_auc_gap_with_the_sum_rule_at_the_benchmark_protocol(emb, bench_linear, bench_domain_ind):
    """Measured: AUC gap linear 0.319 -> sum rule (no test group) 0.180, interval [0.125,
    0.157], AUC 0.934 -> 0.912, 34% predicted positive (linear 34%)."""
    yt, gt = _test(emb)
    ok, info = lowers(auc_gap, yt, gt, bench_linear[0], bench_domain_ind["sum"])
    assert ok, f"domain_ind sum: {info}"


# Negative controls: the criterion rejects what is no mitigation.

CRITERIA = {
    "resample": (auc_gap,),
    "groupdro": (worst_cell_loss, worst_group_auc_shortfall),
    "fairpenalty": (dp_gap,),
    "fairpenalty_eo": (eo_gap,),
    "domain_ind": (auc_gap,),
}


# the fixture and entry of the scores each head's own test passes with
PASSING = {"resample": ("bench_resample", 0), "groupdro": ("bench_groupdro", 0), "fairpenalty": ("bench_fairpenalty", 0),
           "fairpenalty_eo": ("bench_fairpenalty_eo", 0), "domain_ind": ("bench_domain_ind", "sum")}


CONTROLS = ("itself", "other seed", "constant", "one class")


def _control_cases():
    # a bootstrap of a dp or eo gap costs little; AUCs and losses cost seconds, so those run with -m slow
    for head in MITIGATION:
        cheap = head in ("fairpenalty", "fairpenalty_eo")
        for control in CONTROLS:
            yield pytest.param(head, control, id=f"{head}-{control}", marks=() if cheap else pytest.mark.slow)


@pytest.mark.parametrize(("head", "control"), list(_control_cases()))
def test_the_criterion_rejects_plain_erm_a_constant_and_one_class_scores(request, emb, bench_linear, head, control):
    """Against the linear probe (seed 0), its own scores, the probe from seed 1, a constant
    0.3 and the head's own passing scores squeezed below 0.5 (0.49 s: the order kept, so
    the same AUCs and AUC gap, and every thresholded gap 0) all fail. Measured for seed 1
    (interval of seed 0 minus seed 1): AUC gap 0.319 vs 0.322, [-0.010, 0.003]; DP gap
    0.239 vs 0.244, [-0.019, 0.009]; EqOdds gap 0.342 vs 0.355, [-0.038, 0.008]; worst cell
    loss 0.708 vs 0.735, [-0.037, 0.016]; worst-group AUC shortfall 0.343 vs 0.348,
    [-0.011, 0.001]. The constant has AUC gap, DP gap and EqOdds gap 0 with intervals far
    above 0: only the AUC bar and both classes turn it away."""
    yt, gt = _test(emb)
    base = bench_linear[0]
    if control == "one class":
        fixture, key = PASSING[head]
        scores = 0.49 * request.getfixturevalue(fixture)[key]
    else:
        scores = {"itself": base, "other seed": bench_linear[1], "constant": np.full_like(base, 0.3)}[control]
    for metric in CRITERIA[head]:
        ok, info = lowers(metric, yt, gt, base, scores)
        assert not ok, f"{head} {metric.__name__}: {control} passes: {info}"
        if control == "one class" and metric in (dp_gap, eo_gap):
            # every clause but both classes holds: a gap of 0 by predicting no positives
            assert info["new"] == 0 and info["diff_low"] > 0 and info["auc_new"] >= info["auc_base"] - 0.05, info
            assert info["positive_rate"] == 0


@pytest.mark.parametrize(("head", "penalty"), [("fairpenalty", 100.0), ("fairpenalty_eo", 3.0), ("fairpenalty_eo", 100.0)])
def test_the_criterion_rejects_an_over_penalised_head(emb, bench_linear, bench_fairpenalty, bench_fairpenalty_eo, head, penalty):
    """Measured: fairpenalty at penalty 3 still passes (DP gap 0.099, interval [0.097,
    0.187], AUC 0.892, 22% positive); at 100 it collapses: DP gap 0.013, AUC 0.642, 8%
    positive. fairpenalty_eo at 3 (in its search grid): EqOdds gap 0.008, AUC 0.795, scores
    in [0.15, 0.63], 4% positive; at 100: gap 0.004, AUC 0.557, 1% positive.

    Lowering the EqOdds gap costs AUC on this data whatever the batch: the minority's label
    signal is weak, so equal soft-score means within both classes ask for a narrower spread
    of the majority's scores (full-batch training at penalty 3 also ends at AUC 0.78). The
    near absence of positives at 0.5 is the minibatch's doing: a batch of 128 holds 10-15
    minority rows of each class, the penalty's |group mean - overall mean| is then mostly
    sampling noise (at penalty 3, 0.034 per batch against 0.007 on the whole set), and only
    a narrower spread of all scores lowers it; they gather around the base rate (0.36),
    below 0.5. Full-batch training at penalty 3 predicts 22% positive."""
    yt, gt = _test(emb)
    scores, metric = (bench_fairpenalty, dp_gap) if head == "fairpenalty" else (bench_fairpenalty_eo, eo_gap)
    ok, info = lowers(metric, yt, gt, bench_linear[0], scores[PENALTIES.index(penalty)])
    assert not ok and info["new"] < info["base"] and info["auc_new"] < info["auc_base"] - 0.05, info
