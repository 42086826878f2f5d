"""The fine-tuning stage's torch losses are the JAX heads' losses: on the same batch and the
same parameters they give the same value, the same gradients (every parameter and the
features, which carry the backbone's gradient) and the same new state.

Both sides run in float64 so the comparison can be tight. The batch has every class, two
trained groups and a third group slot without training rows, rows of unknown group and
rows outside the task (m = 0).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fmcache.finetune.heads import load_tree, to_tree
from fmcache.finetune.losses import LOSSES, Batch
from fmcache.heads import HEADS
from fmcache.heads.types import Batch as JaxBatch
from fmcache.heads.types import HeadSpec
from fmcache.mitigations import MITIGATIONS

D, G, HIDDEN, B = 5, 3, 6, 48
RTOL, ATOL = 1e-5, 1e-5

# non-default settings too, so each switch of a formula is compared
OVERRIDES = {
    "erm": [{}],
    "resample": [{}, {"balance_label": 1.0}],
    "groupdro": [{"dro_step": 0.5}, {"dro_step": 0.5, "cells": 0.0, "adj": 2.0}],
    "laftr": [{"adv_coeff": 0.7}],
    "laftr_eqodd": [{}],
    "laftr_eqopp": [{}, {"eqopp_label": 1}],
    "fairpenalty": [{"penalty": 2.0}],
    "fairpenalty_eo": [{"penalty": 2.0}],
    "domain_ind": [{}],
}
CASES = [
    pytest.param(name, n_classes, hp, id=f"{name}-C{n_classes}-{i}")
    for name, hps in OVERRIDES.items()
    for n_classes in ((2,) if name.startswith("fairpenalty") else (2, 3))
    for i, hp in enumerate(hps)
]


def _jax_name(name: str) -> str:
    return "linear" if name == "erm" else name


def _flat(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _setup(name: str, n_classes: int, overrides: dict, seed: int = 0):
    """The shared inputs: NumPy parameters from the JAX head's init, a batch, hparams, state."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 40, size=(G, n_classes)).astype(np.float64)
    counts[2] = 0  # a group slot without training rows
    y = np.arange(B) % n_classes
    g = rng.integers(0, 2, B)
    g[:4] = [0, 1, 0, 1]
    m = np.ones(B)
    m[-3:] = 0.0
    y[m == 0] = 0
    known = np.ones(B, bool)
    known[[5, 9, 13, 17]] = False
    g[~known] = 0
    batch = dict(x=rng.normal(size=(B, D)), y=y, g=g, m=m, gm=m * known)
    hp = {**MITIGATIONS[name].hparams, **overrides} if name in MITIGATIONS else dict(overrides)
    head = HEADS[_jax_name(name)]
    spec = HeadSpec(d=D, n_classes=n_classes, n_groups=G, hidden=HIDDEN)
    params = head.init(jax.random.PRNGKey(seed), spec, {**hp, "cell_counts": jnp.asarray(counts, jnp.float32)})
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    state = {k: np.asarray(v, np.float64) for k, v in head.init_state(spec, {**hp, "cell_counts": jnp.asarray(counts)}).items()}
    if "q" in state:
        # a q away from uniform, over the groups with training rows as init_state's
        q = state["q"] * rng.uniform(0.5, 2.0, state["q"].shape)
        state["q"] = q / q.sum()
    return params, batch, hp, counts, state


@functools.cache
def _jax_value_and_grad(name: str):
    head = HEADS[_jax_name(name)]

    def f(p, x, st, b, hp):
        return head.loss(p, st, b._replace(x=x), hp)

    # one compiled graph per head, the hparams traced: faster than dispatching each small op
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def jax_side(name, params, batch, hp, counts, state):
    with jax.enable_x64(True):
        hpj = {**{k: jnp.asarray(v) for k, v in hp.items()}, "cell_counts": jnp.asarray(counts)}
        b = JaxBatch(x=None, y=jnp.asarray(batch["y"], jnp.int32), g=jnp.asarray(batch["g"], jnp.int32),
                     m=jnp.asarray(batch["m"]), gm=jnp.asarray(batch["gm"]))
        st = {k: jnp.asarray(v) for k, v in state.items()}
        p = jax.tree_util.tree_map(jnp.asarray, params)
        (loss, new), (gp, gx) = _jax_value_and_grad(name)(p, jnp.asarray(batch["x"]), st, b, hpj)
        return float(loss), _flat(gp), np.asarray(gx), {k: np.asarray(v) for k, v in new.items()}


def torch_side(method, n_classes, params, batch, hp, counts, state):
    cc = torch.tensor(counts)
    head = method.make_head(D, n_classes, G, HIDDEN, cell_counts=cc).double()
    load_tree(head, params)
    x = torch.tensor(batch["x"], requires_grad=True)
    b = Batch(x=x, y=torch.tensor(batch["y"], dtype=torch.int64), g=torch.tensor(batch["g"], dtype=torch.int64),
              m=torch.tensor(batch["m"]), gm=torch.tensor(batch["gm"]))
    loss, new = method.loss(head, {k: torch.tensor(v) for k, v in state.items()}, b, {**hp, "cell_counts": cc})
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in head.named_parameters()}
    return loss.item(), grads, x.grad.numpy(), {k: v.numpy() for k, v in new.items()}


def assert_same(method, name, n_classes, overrides, jax_overrides=None):
    params, batch, hp, counts, state = _setup(name, n_classes, overrides)
    jl, jg, jgx, jstate = jax_side(name, params, batch, {**hp, **(jax_overrides or {})}, counts, state)
    tl, tg, tgx, tstate = torch_side(method, n_classes, params, batch, hp, counts, state)
    np.testing.assert_allclose(tl, jl, rtol=RTOL, err_msg="loss")
    # the constants of "frozen" have no gradient in torch (a buffer); every trained leaf does
    assert set(tg) == {k for k in jg if not k.startswith("frozen.")}
    for key, grad in tg.items():
        np.testing.assert_allclose(grad, jg[key], rtol=RTOL, atol=ATOL, err_msg=f"d loss / d {key}")
    np.testing.assert_allclose(tgx, jgx, rtol=RTOL, atol=ATOL, err_msg="d loss / d x")
    assert set(tstate) == set(jstate)
    for key in tstate:
        np.testing.assert_allclose(tstate[key], jstate[key], rtol=RTOL, atol=1e-12, err_msg=f"state {key}")
    return jl, jgx


@pytest.mark.parametrize("name, n_classes, overrides", CASES)
def test_torch_loss_and_gradients_equal_the_jax_heads(name, n_classes, overrides):
    loss, grad_x = assert_same(LOSSES[name], name, n_classes, overrides)
    # a vacuous agreement (no gradient reaches the features) would prove nothing
    assert np.isfinite(loss) and np.abs(grad_x).max() > 1e-6


@pytest.mark.parametrize("name, n_classes", sorted({(p.values[0], p.values[1]) for p in CASES}))
def test_predictions_equal_the_jax_heads(name, n_classes):
    params, batch, hp, counts, _ = _setup(name, n_classes, {}, seed=1)
    method, head_type = LOSSES[name], HEADS[_jax_name(name)]
    head = load_tree(method.make_head(D, n_classes, G, HIDDEN, cell_counts=torch.tensor(counts)).double(), params)
    g = np.array([0, 1, -1, 2] * (B // 4))  # known, unknown and an untrained group
    with torch.no_grad(), jax.enable_x64(True):
        p = jax.tree_util.tree_map(jnp.asarray, params)
        for groups in (None, g):
            tg = None if groups is None else torch.tensor(groups, dtype=torch.int64)
            jg = None if groups is None else jnp.asarray(groups, jnp.int32)
            ours = method.predict(head, torch.tensor(batch["x"]), tg).numpy()
            np.testing.assert_allclose(ours, np.asarray(head_type.predict(p, jnp.asarray(batch["x"]), jg)), rtol=1e-6, atol=1e-9)
    _flat_back = _flat(to_tree(head))
    assert all(np.array_equal(_flat_back[k], v) for k, v in _flat(params).items())


def test_a_degenerate_torch_loss_is_told_apart():
    """The comparison can fail: GroupDRO with its weights frozen, and a penalty dropped."""
    groupdro = LOSSES["groupdro"]

    def frozen_q(head, state, batch, hp):
        loss, _ = groupdro.loss(head, state, batch, {**hp, "dro_step": 0.0})
        return loss, state

    with pytest.raises(AssertionError):
        assert_same(dataclasses.replace(groupdro, loss=frozen_q), "groupdro", 2, {"dro_step": 0.5})
    # the penalty's value is what makes the loss differ: at 0 on both sides they agree again
    with pytest.raises(AssertionError):
        assert_same(LOSSES["fairpenalty"], "fairpenalty", 2, {"penalty": 0.0}, jax_overrides={"penalty": 2.0})
    assert_same(LOSSES["fairpenalty"], "fairpenalty", 2, {"penalty": 0.0})


def test_what_the_torch_stage_cannot_train_is_refused():
    params, batch, hp, counts, _ = _setup("laftr", 2, {})
    method = LOSSES["laftr"]
    head = load_tree(method.make_head(D, 2, G, HIDDEN).double(), params)
    b = Batch(torch.tensor(batch["x"]), torch.tensor(batch["y"]), torch.tensor(batch["g"]),
              torch.tensor(batch["m"]), torch.tensor(batch["gm"]))
    # LAFTR's players taking turns need one optimiser each
    with pytest.raises(ValueError, match="adv_steps"):
        method.loss(head, {}, b, {"adv_steps": 2, "cell_counts": torch.tensor(counts)})
    with pytest.raises(ValueError, match="adv_steps"):
        method.init_state(G, 2, {"adv_steps": 1})
    # the penalties are defined on one logit, as the JAX heads (multiclass=False)
    three = LOSSES["fairpenalty"].make_head(D, n_classes=3).double()
    with pytest.raises(ValueError, match="binary"):
        LOSSES["fairpenalty"].loss(three, {}, b, {"cell_counts": torch.ones(G, 3)})


def test_one_entry_decides_the_facts_of_both_stages():
    assert set(LOSSES) == set(MITIGATIONS) | {"erm"}
    assert LOSSES["erm"].hparams == {}
    for name, m in MITIGATIONS.items():
        head = HEADS[name]
        assert dict(LOSSES[name].hparams) == dict(m.hparams) == head.hparams
        assert (head.target_gap, head.uses_groups, head.needs_cell_counts) == (m.target_gap, m.uses_groups, m.needs_cell_counts)
        assert head.formula == m.formula and m.formula
    with pytest.raises(TypeError):
        MITIGATIONS["groupdro"].hparams["adj"] = 2.0


def test_load_tree_refuses_another_layout():
    params, *_ = _setup("laftr", 2, {})
    with pytest.raises(ValueError, match="paths"):
        load_tree(LOSSES["erm"].make_head(D), params)
    with pytest.raises(ValueError, match="shape"):
        load_tree(LOSSES["laftr"].make_head(D, hidden=HIDDEN + 1, n_groups=G), params)
