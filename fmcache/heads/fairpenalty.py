"""Logistic regression plus a differentiable fairness penalty on the batch's soft predictions.

``dp``: sum over groups of |mean P(y=1) in the group - mean P(y=1) overall| (for two groups
exactly the demographic-parity gap of the soft predictions). ``eo``: the same within the
negatives and within the positives, summed (the equalised-odds gaps of FPR and TPR).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fmcache.heads import linear
from fmcache.heads.types import (
    SEARCH_GRID,
    Batch,
    HeadType,
    Hparams,
    Params,
    State,
    masked_mean,
    mitigation_fields,
    per_row_loss,
)

KINDS = ("dp", "eo")


def parity_gap(p: jax.Array, g: jax.Array, w: jax.Array, n_groups: int) -> jax.Array:
    """Sum over groups present in ``w`` of |group mean of p - overall mean of p|."""
    onehot = jax.nn.one_hot(g, n_groups) * w[:, None]
    counts = jnp.sum(onehot, axis=0)
    group_mean = (onehot.T @ p) / jnp.maximum(counts, 1.0)
    overall = jnp.sum(p * w) / jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum(jnp.where(counts > 0, jnp.abs(group_mean - overall), 0.0))


def loss(params: Params, state: State, batch: Batch, hp: Hparams, *, kind: str) -> tuple[jax.Array, State]:
    z = linear.logits(params, batch.x)
    task = masked_mean(per_row_loss(z, batch.y), batch.m)
    p = jax.nn.sigmoid(z)
    G = int(hp["cell_counts"].shape[0])
    if kind == "dp":
        gap = parity_gap(p, batch.g, batch.gm, G)
    else:
        gap = sum(parity_gap(p, batch.g, batch.gm * (batch.y == c), G) for c in (0, 1))
    return task + hp["penalty"] * gap, state


def fairpenalty(kind: str = "dp") -> HeadType:
    """Logistic regression with a demographic-parity (``dp``) or equalised-odds (``eo``) penalty."""
    if kind not in KINDS:
        raise ValueError(f"fairness penalty {kind!r} is not one of {KINDS}")
    return HeadType(
        **mitigation_fields("fairpenalty" if kind == "dp" else f"fairpenalty_{kind}"),
        init=linear.init,
        loss=functools.partial(loss, kind=kind),
        predict=linear.logits,
        multiclass=False,
        search_grid={**SEARCH_GRID, "penalty": (0.3, 3.0)},
    )
