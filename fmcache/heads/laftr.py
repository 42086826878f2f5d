"""LAFTR (Madras et al., 2018) on embeddings: an encoder, a classifier on its output, and an
adversary that tries to recover the sensitive attribute from it.

One loss serves both players (simultaneous updates): the adversary descends its error on
a detached representation while the encoder and classifier descend the task loss minus
``adv_coeff`` times that error with the adversary detached. With ``alternate`` = 1 the
players take turns instead: even steps move the adversary, odd steps the rest.

Variants say which cells the adversary's error is averaged over (each cell weighs the
same, as in the paper's group-normalised loss): ``dp`` groups; ``eqodd`` (group, label);
``eqopp`` (group, label) on positive rows only. For the two label-aware variants the
adversary also sees the label, as in the paper.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

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
    per_row_loss,
    squeeze_binary,
)

VARIANTS = ("dp", "eqodd", "eqopp")
TARGET_GAPS = {"dp": "dp", "eqodd": "eqodds", "eqopp": "eqopp"}


def init(key: jax.Array, spec: HeadSpec, hp: Hparams, *, variant: str) -> Params:
    ke, kc, ka = jax.random.split(key, 3)
    extra = 0 if variant == "dp" else 1
    return {
        "enc": dense_init(ke, spec.d, spec.hidden),
        "clf": dense_init(kc, spec.hidden, spec.n_out),
        "adv": dense_init(ka, spec.hidden + extra, spec.n_groups),
    }


def encode(params: Params, x: jax.Array) -> jax.Array:
    return jax.nn.relu(dense(params["enc"], x))


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    return squeeze_binary(dense(params["clf"], encode(params, x)))


def adversary_error(adv: Params, z: jax.Array, batch: Batch, variant: str, n_groups: int) -> jax.Array:
    """Mean over cells of the adversary's L1 error 1 - P(true group); every cell weighs the same."""
    if variant != "dp":
        z = jnp.concatenate([z, batch.y[:, None].astype(z.dtype)], axis=1)
    err = 1.0 - jnp.take_along_axis(jax.nn.softmax(dense(adv, z), axis=-1), batch.g[:, None], axis=1)[:, 0]
    w = batch.gm
    if variant == "eqopp":
        w = w * (batch.y == 1)
    n_labels = 1 if variant == "dp" else 2
    cell = batch.g * n_labels + (batch.y if n_labels == 2 else 0)
    onehot = jax.nn.one_hot(cell, n_groups * n_labels) * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    cell_err = (onehot.T @ err) / jnp.maximum(counts, 1.0)
    present = counts > 0
    return jnp.sum(jnp.where(present, cell_err, 0.0)) / jnp.maximum(jnp.sum(present), 1)


def loss(params: Params, state: State, batch: Batch, hp: Hparams, *, variant: str) -> tuple[jax.Array, State]:
    z = encode(params, batch.x)
    task = masked_mean(per_row_loss(squeeze_binary(dense(params["clf"], z)), batch.y), batch.m)
    n_groups = params["adv"]["b"].shape[0]
    adv_fit = adversary_error(params["adv"], jax.lax.stop_gradient(z), batch, variant, n_groups)
    adv_fool = adversary_error(jax.lax.stop_gradient(params["adv"]), z, batch, variant, n_groups)
    main = task - hp["adv_coeff"] * adv_fool
    adv_turn = jnp.where(hp["alternate"] > 0, (batch.step % 2 == 0).astype(jnp.float32), 1.0)
    main_turn = jnp.where(hp["alternate"] > 0, 1.0 - adv_turn, 1.0)
    return main_turn * main + adv_turn * adv_fit, state


def laftr(variant: str = "dp") -> HeadType:
    """The LAFTR head for one fairness criterion: ``dp``, ``eqodd`` or ``eqopp``."""
    if variant not in VARIANTS:
        raise ValueError(f"LAFTR variant {variant!r} is not one of {VARIANTS}")
    return HeadType(
        name="laftr" if variant == "dp" else f"laftr_{variant}",
        init=functools.partial(init, variant=variant),
        loss=functools.partial(loss, variant=variant),
        predict=logits,
        hparams={"adv_coeff": 0.1, "alternate": 0.0},
        uses_groups=True,
        description=f"LAFTR: encoder + classifier + attribute adversary ({variant})",
        # the benchmark trains LAFTR with a learning rate of its own
        default_grid={"lr": (3e-4,), "weight_decay": (0.05,)},
        search_grid={"lr": (3e-4, 1e-3), "weight_decay": (0.05,), "adv_coeff": (0.1, 1.0)},
        target_gap=TARGET_GAPS[variant],
    )
