"""Domain-independent heads (Wang et al., 2020): one output set per group on shared features.

Training scores each row with its own group's outputs. At inference the group can be
given (``g``) or left out, in which case the groups' logits are averaged (the paper's sum,
scaled by 1/G so the score remains a probability).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads.types import (
    Batch,
    HeadSpec,
    HeadType,
    Hparams,
    Params,
    State,
    dense_init,
    masked_mean,
    per_row_loss,
    squeeze_binary,
)


def init(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    p = dense_init(key, spec.d, spec.n_out * spec.n_groups)
    return {"w": p["w"].reshape(spec.d, spec.n_groups, spec.n_out), "b": p["b"].reshape(spec.n_groups, spec.n_out)}


def all_logits(params: Params, x: jax.Array) -> jax.Array:
    """(n, G, n_out) logits of every group's output set."""
    return jnp.einsum("nd,dgo->ngo", x, params["w"]) + params["b"]


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    z = all_logits(params, x)
    if g is None:
        return squeeze_binary(jnp.mean(z, axis=1))
    # an unknown group (-1) falls back to the average over groups
    own = jnp.take_along_axis(z, jnp.maximum(g, 0)[:, None, None], axis=1)[:, 0]
    return squeeze_binary(jnp.where((g >= 0)[:, None], own, jnp.mean(z, axis=1)))


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    z = jnp.take_along_axis(all_logits(params, batch.x), batch.g[:, None, None], axis=1)[:, 0]
    return masked_mean(per_row_loss(squeeze_binary(z), batch.y), batch.gm), state


DOMAIN_IND = HeadType(
    name="domain_ind",
    init=init,
    loss=loss,
    predict=logits,
    uses_groups=True,
    description="one logistic output set per group (domain-independent training)",
)
