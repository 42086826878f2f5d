"""The linear solver against scikit-learn, stacking against training alone, bad input, zero-shot."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fmcache.errors import FmcacheError, HeadInputError, UnknownNameError
from fmcache.heads import HEADS, fit_stack, predict_stack, zeroshot_params


def _data(n: int = 500, d: int = 12, seed: int = 0, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # anisotropic, off-centre features: the solver's preconditioning has something to do
    X = (rng.normal(size=(n, d)) * np.linspace(0.2, 3.0, d) + 0.5).astype(np.float32)
    W = rng.normal(size=(d, classes))
    logits = (X - 0.5) @ W + rng.normal(size=(n, classes)) * 1.5
    y = (logits[:, 0] > 0) if classes == 2 else logits.argmax(1)
    return X, y.astype(np.int8)


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_lbfgs_matches_sklearn_objective_over_a_grid_of_strengths(classes):
    X, y = _data(classes=classes)
    Xte, yte = _data(seed=1, classes=classes)
    Cs = np.logspace(-3, 2, 6)
    fit = fit_stack("linear", X, y, hparams={"C": Cs}, n_classes=classes, solver="lbfgs", tol=1e-7)
    assert fit.log["converged"].all()
    scores = fit.predict(Xte)
    for k, C in enumerate(Cs):
        # float64 input: scikit-learn on float32 input is itself only accurate to ~1e-3
        sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X.astype(np.float64), y)
        coef, icpt = fit.params["w"][k].T, fit.params["b"][k]
        if classes == 2:
            np.testing.assert_allclose(coef, sk.coef_, atol=1e-4 * np.abs(sk.coef_).max())
            np.testing.assert_allclose(icpt, sk.intercept_, atol=1e-3)
            assert abs(roc_auc_score(yte, scores[k]) - roc_auc_score(yte, sk.predict_proba(Xte)[:, 1])) < 1e-4
        else:
            # softmax intercepts are defined up to a shared constant
            np.testing.assert_allclose(coef, sk.coef_, atol=1e-4 * np.abs(sk.coef_).max())
            np.testing.assert_allclose(icpt - icpt.mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-3)
            np.testing.assert_allclose(scores[k], sk.predict_proba(Xte), atol=1e-4)


def test_linear_lbfgs_masks_unknown_labels_per_head():
    X, y = _data()
    Y = np.stack([y, y], axis=1)
    Y[::3, 1] = -1
    fit = fit_stack("linear", X, Y, hparams={"C": [0.5, 0.5], "label": [0, 1]}, solver="lbfgs", tol=1e-7)
    known = Y[:, 1] >= 0
    sk = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(X[known].astype(np.float64), y[known])
    np.testing.assert_allclose(fit.params["w"][1, :, 0], sk.coef_[0], atol=1e-4 * np.abs(sk.coef_).max())
    assert not np.allclose(fit.params["w"][0], fit.params["w"][1], atol=1e-3)


@pytest.mark.parametrize("head", ["linear", "groupdro", "laftr_eqodd"])
def test_stacked_heads_equal_heads_trained_alone(head):
    rng = np.random.default_rng(3)
    X, y0 = _data(n=300, d=8)
    Y = np.stack([y0, (X[:, 1] > 0.5).astype(np.int8)], axis=1)
    g = (rng.random(300) < 0.4).astype(np.int8)
    hp = {"lr": [1e-3, 3e-3, 1e-2, 3e-3], "weight_decay": [0.0, 0.05, 0.1, 0.05], "seed": [0, 1, 2, 3], "label": [0, 1, 0, 1]}
    kw = {"epochs": 4, "batch_size": 64, "seed": 7, "hidden": 16}
    stacked = fit_stack(head, X, Y, g, hp, **kw)
    # chunking compiles one more program: check it on the cheapest head only
    chunked = fit_stack(head, X, Y, g, hp, max_heads_per_chunk=3, **kw) if head == "groupdro" else stacked
    assert chunked.log["chunks"] == (2 if head == "groupdro" else 1)
    for k in range(4):
        alone = fit_stack(head, X, Y, g, hparams={key: [v[k]] for key, v in hp.items()}, **kw)
        for s, c, a in zip(_leaves(stacked.params), _leaves(chunked.params), _leaves(alone.params), strict=True):
            np.testing.assert_allclose(s[k], a[0], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(c[k], a[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stacked.log["loss"][k], alone.log["loss"][0], rtol=1e-4, atol=1e-5)
        if head == "groupdro":
            np.testing.assert_allclose(stacked.state["q"][k], alone.state["q"][0], rtol=1e-4, atol=1e-6)


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_zeroshot_is_the_cosine_similarity_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 16)).astype(np.float32)
    text = rng.normal(size=(3, 4, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    proto = text.mean(axis=1)
    proto /= np.linalg.norm(proto, axis=1, keepdims=True)
    logits = 42.0 * (X / np.linalg.norm(X, axis=1, keepdims=True)) @ proto.T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = predict_stack("zeroshot", zeroshot_params(text, 42.0), X)
    assert got.shape == (1, 50, 3)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    binary = predict_stack("zeroshot", zeroshot_params(text[:2], 42.0), X)
    z = 42.0 * (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (text[:2].mean(1) / np.linalg.norm(text[:2].mean(1), axis=1, keepdims=True)).T
    np.testing.assert_allclose(binary[0], 1 / (1 + np.exp(z[:, 0] - z[:, 1])), atol=1e-5)


def test_clip_adapt_starts_at_zero_shot_and_learns():
    rng = np.random.default_rng(0)
    X, y = _data(n=400, d=16)
    text = rng.normal(size=(2, 3, 16)).astype(np.float32)
    fit0 = fit_stack("clip_adapt", X, y, hparams={"lr": 1e-9}, prototypes=text, logit_scale=30.0, epochs=1)
    np.testing.assert_allclose(fit0.predict(X), predict_stack("zeroshot", zeroshot_params(text, 30.0), X), atol=1e-4)
    fit = fit_stack("clip_adapt", X, y, hparams={"lr": 3e-3}, prototypes=text, logit_scale=30.0, epochs=20)
    zero_shot_auc = roc_auc_score(y, fit0.predict(X)[0])
    assert roc_auc_score(y, fit.predict(X)[0]) > zero_shot_auc + 0.1
    np.testing.assert_allclose(fit.params["frozen"]["scale"], 30.0)


def _clip_setup():
    rng = np.random.default_rng(0)
    X, y = _data(n=400, d=16)
    text = rng.normal(size=(2, 3, 16)).astype(np.float32)
    return X, y, text


def _stack(params):
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a)[None], params)


def test_clip_adapt_is_fairmedfm_form_unit_norm_prototypes_no_bias():
    import jax

    from fmcache.heads import clip_adapt
    from fmcache.heads.types import HeadSpec

    X, y, text = _clip_setup()
    spec = HeadSpec(d=16, prototypes=text, logit_scale=30.0)
    p0 = clip_adapt.init(jax.random.PRNGKey(0), spec, {})
    assert set(p0) == {"prototypes", "frozen"}
    zero_shot = predict_stack("zeroshot", zeroshot_params(text, 30.0), X)
    np.testing.assert_allclose(predict_stack("clip_adapt", _stack(p0), X), zero_shot, atol=1e-5)
    # prototypes are re-normalised in the forward pass: their length carries nothing
    scaled = {**p0, "prototypes": np.asarray(p0["prototypes"]) * np.array([[3.0], [1.0]], np.float32)}
    np.testing.assert_allclose(predict_stack("clip_adapt", _stack(scaled), X), zero_shot, atol=1e-5)

    fit = fit_stack("clip_adapt", X, y, hparams={"lr": 3e-3}, prototypes=text, logit_scale=30.0, epochs=20)
    assert set(fit.params) == {"prototypes", "frozen"}
    scaled = {**fit.params, "prototypes": fit.params["prototypes"] * 3.0}
    np.testing.assert_allclose(predict_stack("clip_adapt", scaled, X), fit.predict(X), atol=1e-5)

    def train_loss(scores):
        p = np.clip(scores[0], 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    assert train_loss(fit.predict(X)) < train_loss(zero_shot) - 0.1


def test_clip_adapt_bias_variant_keeps_free_prototypes_and_a_bias():
    X, y, text = _clip_setup()
    fit0 = fit_stack("clip_adapt_bias", X, y, hparams={"lr": 1e-9}, prototypes=text, logit_scale=30.0, epochs=1)
    np.testing.assert_allclose(fit0.predict(X), predict_stack("zeroshot", zeroshot_params(text, 30.0), X), atol=1e-4)
    fit = fit_stack("clip_adapt_bias", X, y, hparams={"lr": 3e-3}, prototypes=text, logit_scale=30.0, epochs=20)
    assert fit.params["b"].shape == (1, 2) and np.abs(fit.params["b"]).max() > 0
    assert roc_auc_score(y, fit.predict(X)[0]) > roc_auc_score(y, fit0.predict(X)[0]) + 0.1


def test_weight_decay_mask_leaves_out_biases_and_frozen_constants():
    from fmcache.heads.optim import decay_mask

    params = {"w": np.ones((3, 1)), "b": np.ones(1), "enc": {"w": np.ones((2, 2)), "b": np.ones(2)}, "frozen": {"scale": np.ones(())}}
    assert decay_mask(params) == {"w": True, "b": False, "enc": {"w": True, "b": False}, "frozen": {"scale": False}}


@pytest.mark.parametrize("decay_bias", [False, True])
def test_one_adamw_step_matches_a_hand_computed_step(decay_bias):
    import jax

    from fmcache.heads import linear
    from fmcache.heads.types import HeadSpec

    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int8)
    lr, wd = 0.1, 0.5
    # one epoch of one full batch: a single step, at the schedule's full rate
    fit = fit_stack("linear", X, y, hparams={"lr": lr, "weight_decay": wd}, epochs=1, batch_size=16, decay_bias=decay_bias)
    p0 = jax.tree_util.tree_map(np.asarray, linear.init(jax.random.PRNGKey(0), HeadSpec(d=3), {}))
    w, b = p0["w"].astype(np.float64), p0["b"].astype(np.float64)
    r = 1 / (1 + np.exp(-(X @ w[:, 0] + b[0]))) - y
    grads = {"w": (X.T @ r / 16)[:, None], "b": np.array([r.mean()])}

    def adamw(p, g, decays):
        m, v = 0.1 * g, 0.001 * g * g  # first moments, bias-corrected below with t = 1
        return p * (1 - lr * wd if decays else 1.0) - lr * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)

    np.testing.assert_allclose(fit.params["w"][0], adamw(w, grads["w"], True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.params["b"][0], adamw(b, grads["b"], decay_bias), rtol=1e-5, atol=1e-6)
    assert fit.log["decay_bias"] is decay_bias


@pytest.mark.parametrize("decay_bias", [False, True])
def test_adamw_cosine_training_follows_torch_adamw_with_cosine_annealing(decay_bias):
    """40 full-batch steps against torch.optim.AdamW + CosineAnnealingLR(T_max=40) stepped
    per step, biases in a parameter group without decay unless ``decay_bias``."""
    import jax
    import torch

    from fmcache.heads import linear
    from fmcache.heads.types import HeadSpec

    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=64) > 0).astype(np.int8)
    lr, wd, steps = 0.05, 0.3, 40
    fit = fit_stack("linear", X, y, hparams={"lr": lr, "weight_decay": wd}, epochs=steps, batch_size=64, decay_bias=decay_bias)

    p0 = jax.tree_util.tree_map(np.asarray, linear.init(jax.random.PRNGKey(0), HeadSpec(d=5), {}))
    w = torch.tensor(p0["w"][:, 0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(p0["b"], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": wd if decay_bias else 0.0}], lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    Xt, yt = torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    np.testing.assert_allclose(fit.params["w"][0, :, 0], w.detach().numpy(), atol=2e-5)
    np.testing.assert_allclose(fit.params["b"][0], b.detach().numpy(), atol=2e-5)
    # the bias moved, so its decay (or not) is visible in the comparison
    assert abs(fit.params["b"][0, 0] - p0["b"][0]) > 0.1


def test_nan_or_inf_features_are_refused():
    X, y = _data(n=100)
    X[7, 3] = np.nan
    with pytest.raises(HeadInputError, match="NaN or inf.*first: 7"):
        fit_stack("linear", X, y, solver="lbfgs")
    X[7, 3] = 0.0
    fit = fit_stack("linear", X, y, epochs=1)
    X[2, 0] = np.inf
    with pytest.raises(HeadInputError, match="NaN or inf"):
        fit.predict(X)


def test_one_class_and_other_bad_input_give_one_clear_error():
    X, y = _data(n=100)
    with pytest.raises(HeadInputError, match="label column 0 has only class 1 .*one class"):
        fit_stack("linear", X, np.ones(100, np.int8), solver="lbfgs")
    with pytest.raises(HeadInputError, match="no known labels"):
        fit_stack("linear", X, np.full(100, -1, np.int8))
    g = np.where(np.arange(100) < 50, 1, -1)
    with pytest.raises(HeadInputError, match="single group"):
        fit_stack("groupdro", X, y, g)
    with pytest.raises(HeadInputError, match="needs the sensitive attribute"):
        fit_stack("resample", X, y)
    with pytest.raises(HeadInputError, match=r"'lrr' \(did you mean 'lr'\?\)"):
        fit_stack("linear", X, y, hparams={"lrr": 0.1})
    with pytest.raises(HeadInputError, match="one length"):
        fit_stack("linear", X, y, hparams={"lr": [0.1, 0.2], "seed": [1, 2, 3]})
    with pytest.raises(HeadInputError, match="selects column 2"):
        fit_stack("linear", X, y, hparams={"label": 2})
    with pytest.raises(UnknownNameError, match="groupdro"):
        fit_stack("groupDRO", X, y)
    with pytest.raises(FmcacheError, match="one row per feature row"):
        fit_stack("linear", X, y[:50])
    assert all(h.name == name for name, h in HEADS.items())
