"""CLIP-Adapt: class prototypes initialised from the text prototypes, then trained.

``clip_adapt`` is FairMedFM's form: logits are the logit scale times the cosine similarity
between the image feature and each prototype, both L2-normalised at every forward pass,
with no bias. Only the prototypes' directions matter, so before training it is exactly the
zero-shot classifier, and training can only turn the prototypes, not rescale one class's
scores.

``clip_adapt_bias`` is the earlier variant kept for comparison: prototypes used
unnormalised (training may change their norm as well as their direction) plus a per-class
bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads import zeroshot
from fmcache.heads.types import HeadSpec, HeadType, Hparams, Params, erm_loss


def init(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    p = zeroshot.init(key, spec, hp)
    # the logit scale is the model's, not learnt: under "frozen" the optimiser leaves it alone
    return {"prototypes": p["prototypes"], "frozen": {"scale": p["scale"]}}


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    return jax.lax.stop_gradient(params["frozen"]["scale"]) * zeroshot.similarity(x, params["prototypes"])


loss = erm_loss(logits)


def init_bias(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    p = init(key, spec, hp)
    return {**p, "b": jnp.zeros((p["prototypes"].shape[0],), jnp.float32)}


def logits_bias(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    scale = jax.lax.stop_gradient(params["frozen"]["scale"])
    return scale * zeroshot.similarity(x, params["prototypes"], unit_prototypes=False) + params["b"]


loss_bias = erm_loss(logits_bias)


CLIP_ADAPT = HeadType(
    name="clip_adapt",
    init=init,
    loss=loss,
    predict=logits,
    description="CLIP-Adapt (FairMedFM): trainable unit-norm class prototypes initialised from the text prototypes",
    needs_text=True,
)

CLIP_ADAPT_BIAS = HeadType(
    name="clip_adapt_bias",
    init=init_bias,
    loss=loss_bias,
    predict=logits_bias,
    description="CLIP-Adapt variant: unnormalised trainable prototypes plus a per-class bias",
    needs_text=True,
)
