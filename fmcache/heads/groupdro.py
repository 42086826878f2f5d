"""GroupDRO (Sagawa et al., 2020): minimise the group-weighted loss, the weights following
the groups' losses by exponentiated gradient ascent.

Groups are the (attribute group x label) cells by default, as in the paper's benchmarks
(e.g. Waterbirds' background x bird type); ``cells = 0`` falls back to the attribute's
groups alone. The generalisation adjustment ``adj`` adds C / sqrt(n_g) to each group's loss,
n_g the group's training rows, so that small groups, whose training loss understates their
test loss, get more weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads import linear
from fmcache.heads.types import (
    SEARCH_GRID,
    Batch,
    HeadSpec,
    HeadType,
    Hparams,
    Params,
    State,
    mitigation_fields,
    per_row_loss,
)


def group_ids(batch: Batch, hp: Hparams, n_classes: int) -> jax.Array:
    """Each row's DRO group: its (group, label) cell g * n_classes + y, or its group alone."""
    return jnp.where(hp["cells"] > 0.5, batch.g * n_classes + batch.y, batch.g)


def training_counts(hp: Hparams) -> jax.Array:
    """(G * n_classes,) training rows per DRO group; with ``cells = 0`` the attribute's groups
    take the first G places and the rest stay empty, so q keeps one shape either way."""
    counts = hp["cell_counts"]  # (G, n_classes), filled in by the training engine
    n_groups, n_classes = counts.shape
    by_attribute = jnp.zeros(n_groups * n_classes, counts.dtype).at[:n_groups].set(jnp.sum(counts, axis=1))
    return jnp.where(hp["cells"] > 0.5, counts.reshape(-1), by_attribute)


def init_state(spec: HeadSpec, hp: Hparams) -> State:
    n = spec.n_groups * spec.n_classes
    if "cell_counts" not in hp:
        return {"q": jnp.full((n,), 1.0 / n, jnp.float32)}
    # uniform over the groups that have training rows; an empty group could never be seen
    present = (training_counts(hp) > 0).astype(jnp.float32)
    return {"q": present / jnp.maximum(jnp.sum(present), 1.0)}


def group_losses(rows: jax.Array, ids: jax.Array, w: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    onehot = jax.nn.one_hot(ids, n) * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    return (onehot.T @ rows) / jnp.maximum(counts, 1.0), counts


def adjustment(hp: Hparams) -> jax.Array:
    """C / sqrt(n_g) per DRO group; 0 for groups without training rows."""
    n_g = training_counts(hp)
    return jnp.where(n_g > 0, hp["adj"] / jnp.sqrt(jnp.maximum(n_g, 1.0)), 0.0)


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    q = state["q"]
    n_classes = hp["cell_counts"].shape[1]
    rows = per_row_loss(linear.logits(params, batch.x), batch.y)
    per_group, _ = group_losses(rows, group_ids(batch, hp, n_classes), batch.gm, q.shape[0])
    present = training_counts(hp) > 0
    # Following LossComputer.compute_robust_loss in Sagawa et al.'s code
    # (github.com/kohpangwei/group_DRO, loss.py): the adjustment is added to every group's
    # batch loss, present in the batch or not, and that adjusted loss drives the q update;
    # their in-place `adjusted_loss += ...` also changes `group_loss`, so the returned
    # objective is sum q_g (loss_g + adj_g) too (the same gradient, a shifted value). A
    # group absent from the batch has loss 0 before adjustment and so loses weight
    # relative to the others, as there.
    adjusted = per_group + adjustment(hp)
    q = jnp.where(present, q * jnp.exp(hp["dro_step"] * jax.lax.stop_gradient(adjusted)), 0.0)
    q = q / jnp.sum(q)
    return jnp.sum(jax.lax.stop_gradient(q) * adjusted), {"q": q}


GROUPDRO = HeadType(
    # default adj 1: FairMedFM's GroupDRO setting ("group adjustments: 1")
    **mitigation_fields("groupdro"),
    init=linear.init,
    loss=loss,
    predict=linear.logits,
    init_state=init_state,
    search_grid={**SEARCH_GRID, "dro_step": (0.01, 0.1)},
)
