"""Group-balanced training: every (group, label) cell weighs the same in expectation.

Minibatches are shared by all heads of a stack, so per-head resampling is done as the
equivalent reweighting: a row of cell c weighs N / (n_cells * N_c), N_c counted on the
head's training rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads import linear
from fmcache.heads.types import Batch, HeadType, Hparams, Params, State, per_row_loss


def row_weights(batch: Batch, hp: Hparams) -> jax.Array:
    counts = hp["cell_counts"]  # (G, n_classes), filled in by the training engine
    n_cells = jnp.maximum(jnp.sum(counts > 0), 1)
    n_c = counts[batch.g, batch.y]
    return jnp.where(n_c > 0, jnp.sum(counts) / (n_cells * jnp.maximum(n_c, 1.0)), 0.0)


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    w = row_weights(batch, hp) * batch.gm
    rows = per_row_loss(linear.logits(params, batch.x), batch.y)
    # divide by the row count, not the weight sum: the estimate of the balanced risk stays unbiased
    return jnp.sum(w * rows) / jnp.maximum(jnp.sum(batch.gm), 1.0), state


RESAMPLE = HeadType(
    name="resample",
    init=linear.init,
    loss=loss,
    predict=linear.logits,
    uses_groups=True,
    description="logistic regression with group x label cells reweighted to equal mass",
    needs_cell_counts=True,
)
