"""CLIP-Adapt: class prototypes initialised from the text prototypes, then trained.

Scores are the zero-shot ones (logit scale times normalised image feature dot prototype)
plus a per-class bias; the prototypes are free parameters, so training may change their
norm as well as their direction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads import zeroshot
from fmcache.heads.types import (
    Batch,
    HeadSpec,
    HeadType,
    Hparams,
    Params,
    State,
    masked_mean,
    per_row_loss,
)


def init(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    p = zeroshot.init(key, spec, hp)
    # the logit scale is the model's, not learnt: under "frozen" the optimiser leaves it alone
    return {"prototypes": p["prototypes"], "b": jnp.zeros((p["prototypes"].shape[0],), jnp.float32), "frozen": {"scale": p["scale"]}}


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    return jax.lax.stop_gradient(params["frozen"]["scale"]) * zeroshot.normalize(x) @ params["prototypes"].T + params["b"]


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    return masked_mean(per_row_loss(logits(params, batch.x), batch.y), batch.m), state


CLIP_ADAPT = HeadType(
    name="clip_adapt",
    init=init,
    loss=loss,
    predict=logits,
    description="CLIP-Adapt: trainable class prototypes initialised from the text prototypes",
    needs_text=True,
)
