"""LAFTR (Madras et al., 2018, "Learning Adversarially Fair and Transferable
Representations") on embeddings: an encoder, a classifier on its output, and an adversary
that tries to recover the sensitive attribute from it.

Players. The encoder and classifier form one player, the adversary the other, each with
its own Adam moments (``optim.players``), as the original code (one Adam per player) and
MEDFAIR (``optimizer`` and ``optimizer_disc``) have. One loss serves both: the adversary
descends its error on a detached representation, the encoder and classifier descend the
task loss minus ``adv_coeff`` times that error with the adversary detached, so each
objective's gradient reaches its own player's parameters only. ``adv_steps`` = 0 (the
default) moves both players on every step: both references move each player once per
minibatch. ``adv_steps`` = r >= 1 alternates: in every cycle of r + 1 steps the adversary
takes r steps and then the encoder and classifier one, the original code's ``aud_steps``
(there repeated on one minibatch, here on successive ones); the idle player's parameters
and moments do not change. ``adv_coeff`` defaults to 1, the original configuration's
``fair_coeff``. On planted bias at the benchmark's protocol simultaneous updates at 1 lower
the gaps of ``dp``, ``eqodd`` and ``eqopp`` on label 0, while ``eqopp`` on label 1 needs
``adv_steps`` = 2 (``search_grid`` tries both).

Adversary. An MLP with one hidden ReLU layer as wide as the encoder (``HeadSpec.hidden``),
as the original code's auditor (one hidden layer) and MEDFAIR's two-layer discriminator
(width 128, the default ``hidden``; there with no activation between its layers), with
softmax over the groups. Its error is the group-normalised L1 loss of the paper:
1 - P(true group) averaged within each cell, every cell weighing the same.

Variants. ``dp``: cells are groups; the adversary sees z. ``eqodd``: cells are (group,
label); Madras et al. give the adversary the label as an input, but a linear layer fed
[z, y] can only shift its output with y, and an MLP conditions on it only as far as its
hidden layer learns to, so here each label value has an adversary of its own applied to
its rows, which conditions exactly. ``eqopp``: one adversary on the rows of one label
value, ``eqopp_label``: 0 by default, as the original code ("only using Y = 0 examples";
MEDFAIR's ``laftr-eqopp0``), or 1 (``laftr-eqopp1``).
On label-0 rows the adversary equalises P(yhat = 1 | y = 0) between groups, the false
positive rate; the result tables have no FPR-only gap, so the head's ``target_gap`` is
``eqodds``, whose paper form is the mean of the TPR and FPR gaps. With ``eqopp_label`` = 1
it equalises the TPR, the tables' ``eqopp``. The task loss uses every row, as MEDFAIR's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from fmcache.heads import optim
from fmcache.heads.types import (
    Batch,
    HeadSpec,
    HeadType,
    Hparams,
    Params,
    State,
    dense,
    dense_init,
    masked_mean,
    mitigation_fields,
    per_row_loss,
    squeeze_binary,
)

VARIANTS = ("dp", "eqodd", "eqopp")


def _mlp_init(key: jax.Array, n_in: int, width: int, n_out: int) -> Params:
    kh, ko = jax.random.split(key)
    return {"hid": dense_init(kh, n_in, width), "out": dense_init(ko, width, n_out)}


def init(key: jax.Array, spec: HeadSpec, hp: Hparams, *, variant: str) -> Params:
    ke, kc, ka = jax.random.split(key, 3)
    n_adv = spec.n_classes if variant == "eqodd" else 1
    adv = jax.vmap(lambda k: _mlp_init(k, spec.hidden, spec.hidden, spec.n_groups))(jax.random.split(ka, n_adv))
    return {"enc": dense_init(ke, spec.d, spec.hidden), "clf": dense_init(kc, spec.hidden, spec.n_out), "adv": adv}


def encode(params: Params, x: jax.Array) -> jax.Array:
    return jax.nn.relu(dense(params["enc"], x))


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    return squeeze_binary(dense(params["clf"], encode(params, x)))


def adversary_logits(adv: Params, z: jax.Array, y: jax.Array) -> jax.Array:
    """(B, groups) logits, each row from the adversary of its label (the only one, for one adversary)."""
    n_adv = adv["out"]["b"].shape[0]
    # every adversary scores every row: a few B x groups products more than gathering per row
    outs = [dense(_at(adv["out"], a), jax.nn.relu(dense(_at(adv["hid"], a), z))) for a in range(n_adv)]
    if n_adv == 1:
        return outs[0]
    return jnp.take_along_axis(jnp.stack(outs), y[None, :, None], axis=0)[0]


def _at(layer: Params, a: int) -> Params:
    return {"w": layer["w"][a], "b": layer["b"][a]}


def adversary_error(adv: Params, z: jax.Array, batch: Batch, variant: str, eqopp_label: jax.Array) -> jax.Array:
    """Mean over cells of the adversary's L1 error 1 - P(true group); every cell weighs the same."""
    n_adv, n_groups = adv["out"]["b"].shape
    probs = jax.nn.softmax(adversary_logits(adv, z, batch.y), axis=-1)
    err = 1.0 - jnp.take_along_axis(probs, batch.g[:, None], axis=1)[:, 0]
    w = batch.gm
    if variant == "eqopp":
        w = w * (batch.y == eqopp_label)
    cell = batch.g * n_adv + (batch.y if variant == "eqodd" else 0)
    onehot = jax.nn.one_hot(cell, n_groups * n_adv) * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    cell_err = (onehot.T @ err) / jnp.maximum(counts, 1.0)
    present = counts > 0
    return jnp.sum(jnp.where(present, cell_err, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def loss(params: Params, state: State, batch: Batch, hp: Hparams, *, variant: str) -> tuple[jax.Array, State]:
    z = encode(params, batch.x)
    task = masked_mean(per_row_loss(squeeze_binary(dense(params["clf"], z)), batch.y), batch.m)
    label = jnp.asarray(hp.get("eqopp_label", 0)).astype(batch.y.dtype)
    # each term reaches one player only; the optimiser decides which player moves
    adv_fit = adversary_error(params["adv"], jax.lax.stop_gradient(z), batch, variant, label)
    adv_fool = adversary_error(jax.lax.stop_gradient(params["adv"]), z, batch, variant, label)
    return task - hp["adv_coeff"] * adv_fool + adv_fit, state


def player_of(key: str) -> str:
    return "adv" if key.startswith("adv") else "main"


def optimizer(hp: Hparams, total_steps: int, decay_bias: bool = False) -> optax.GradientTransformation:
    """Both players every step for ``adv_steps`` = 0; else ``adv_steps`` adversary steps, then one main step."""
    r = jnp.asarray(hp["adv_steps"]).astype(jnp.int32)
    turns = {
        "adv": lambda t: (r == 0) | (t % (r + 1) < r),
        "main": lambda t: (r == 0) | (t % (r + 1) == r),
    }
    return optim.players(turns, player_of)(hp, total_steps, decay_bias)


def laftr(variant: str = "dp") -> HeadType:
    """The LAFTR head for one fairness criterion: ``dp``, ``eqodd`` or ``eqopp``."""
    if variant not in VARIANTS:
        raise ValueError(f"LAFTR variant {variant!r} is not one of {VARIANTS}")
    return HeadType(
        **mitigation_fields("laftr" if variant == "dp" else f"laftr_{variant}"),
        init=functools.partial(init, variant=variant),
        loss=functools.partial(loss, variant=variant),
        predict=logits,
        # the benchmark trains LAFTR with a learning rate of its own
        default_grid={"lr": (3e-4,), "weight_decay": (0.05,)},
        search_grid={"lr": (3e-4, 1e-3), "weight_decay": (0.05,), "adv_coeff": (0.3, 1.0, 3.0), "adv_steps": (0, 2)},
        optimizer=optimizer,
    )
