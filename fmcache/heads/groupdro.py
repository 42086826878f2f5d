"""GroupDRO (Sagawa et al., 2020): minimise the group-weighted loss, the weights following
the groups' losses by exponentiated gradient ascent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads import linear
from fmcache.heads.types import (
    Batch,
    HeadSpec,
    SEARCH_GRID,
    HeadType,
    Hparams,
    Params,
    State,
    per_row_loss,
)


def init_state(spec: HeadSpec, hp: Hparams) -> State:
    return {"q": jnp.full((spec.n_groups,), 1.0 / spec.n_groups, jnp.float32)}


def group_losses(rows: jax.Array, batch: Batch, n_groups: int) -> tuple[jax.Array, jax.Array]:
    onehot = jax.nn.one_hot(batch.g, n_groups) * batch.gm[:, None]
    counts = jnp.sum(onehot, axis=0)
    return (onehot.T @ rows) / jnp.maximum(counts, 1.0), counts


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    q = state["q"]
    rows = per_row_loss(linear.logits(params, batch.x), batch.y)
    per_group, _ = group_losses(rows, batch, q.shape[0])
    # a group absent from the batch has loss 0 and so loses weight relative to the others,
    # as in the reference implementation
    q = q * jnp.exp(hp["dro_step"] * jax.lax.stop_gradient(per_group))
    q = q / jnp.sum(q)
    return jnp.sum(jax.lax.stop_gradient(q) * per_group), {"q": q}


GROUPDRO = HeadType(
    name="groupdro",
    init=linear.init,
    loss=loss,
    predict=linear.logits,
    init_state=init_state,
    hparams={"dro_step": 0.01},
    uses_groups=True,
    description="logistic regression minimising the worst-group loss (GroupDRO)",
    search_grid={**SEARCH_GRID, "dro_step": (0.01, 0.1)},
)
