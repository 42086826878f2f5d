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


def gap_lowered(yt, gt, base, new, n_boot: int = 300, seed: int = 0) -> tuple[bool, dict[str, float]]:
    """Does ``new`` lower the AUC gap against ``base`` on these test rows, and is it still a
    classifier? The paired difference of the gaps (base - new), bootstrapped over test rows,
    must have a 95% interval above 0; test AUC within 0.05 of the base's; both classes
    predicted at 0.5."""
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
    ok = low > 0 and info["auc_new"] >= info["auc_base"] - 0.05 and 0 < hat.mean() < 1
    return bool(ok), info


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
