"""Resampling to balance the sensitive attribute, done as the equivalent reweighting.

Two modes, chosen per head by the ``balance_label`` hyperparameter:

- ``0`` (default), group-balanced, as MEDFAIR's resampling and the FairMedFM benchmark
  describe it: every attribute group weighs the same in expectation; a row of group g
  weighs N / (n_groups * N_g). Label proportions inside a group are left as they are.
- ``1``, (group, label)-balanced: every (group, label) cell weighs the same; a row of cell
  c weighs N / (n_cells * N_c).

N, N_g and N_c are counted on the head's training rows (groups and cells with no rows do
not count). Minibatches are shared by all heads of a stack, so a head cannot draw its own
rows; instead each row's loss is multiplied by its weight. A sampler drawing rows with
probability proportional to these weights gives a minibatch whose expected loss equals
the weighted one, so the two follow the same objective; they differ only in variance (a
sampler repeats minority rows, the weights scale their gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads import linear
from fmcache.heads.types import Batch, HeadType, Hparams, Params, State, mitigation_fields, per_row_loss

MODES = {"group": 0.0, "group_label": 1.0}


def _balanced(counts: jax.Array, idx: tuple[jax.Array, ...]) -> jax.Array:
    """N / (number of non-empty bins * N_bin) for each row's bin; 0 for an empty bin."""
    n_bins = jnp.maximum(jnp.sum(counts > 0), 1)
    n_b = counts[idx]
    return jnp.where(n_b > 0, jnp.sum(counts) / (n_bins * jnp.maximum(n_b, 1.0)), 0.0)


def row_weights(batch: Batch, hp: Hparams) -> jax.Array:
    counts = hp["cell_counts"]  # (G, n_classes), filled in by the training engine
    by_group = _balanced(jnp.sum(counts, axis=1), (batch.g,))
    by_cell = _balanced(counts, (batch.g, batch.y))
    return jnp.where(hp["balance_label"] > 0, by_cell, by_group)


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    w = row_weights(batch, hp) * batch.gm
    rows = per_row_loss(linear.logits(params, batch.x), batch.y)
    # divide by the row count, not the weight sum: the estimate of the balanced risk stays unbiased
    return jnp.sum(w * rows) / jnp.maximum(jnp.sum(batch.gm), 1.0), state


RESAMPLE = HeadType(
    **mitigation_fields("resample"),
    init=linear.init,
    loss=loss,
    predict=linear.logits,
    search_grid={"lr": (2.5e-4, 1e-3), "weight_decay": (0.05,), "balance_label": (MODES["group"], MODES["group_label"])},
)
