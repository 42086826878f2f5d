"""Domain-independent heads (Wang et al., 2020): one output set per group on shared features.

Training scores each row with its own group's outputs. Two inference rules:

``sum`` (no group needed at test time; what ``predict`` does without ``g``): the groups'
    class probabilities summed over groups, as MEDFAIR's DomainInd does
    (``inference_sum_prob``: sigmoid of each group's outputs, summed over groups; Wang et
    al. 2020, Sec. 4.3, sum over domains of P(y | d, x)). Here the sum is divided by the
    number of groups so the score stays a probability: a monotone rescale that leaves AUC
    as it is and puts the 0.5 threshold at the mean of the groups' probabilities.
``known`` (oracle, ``predict`` with ``g``): each row scored by its own group's outputs; a
    row whose group is unknown (-1), or is one this head was not trained on, falls back to
    ``sum``.

The engine stacks heads of several attributes in one vmap, so every head has as many group
slots as the largest attribute of the stack. Slots of groups a head had no training rows for
keep their random initialisation; they are marked untrained (``frozen.trained``, from the
engine's cell counts) and no rule reads them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fmcache.heads.optim import FROZEN
from fmcache.heads.types import (
    Batch,
    HeadSpec,
    HeadType,
    Hparams,
    Params,
    State,
    dense_init,
    masked_mean,
    mitigation_fields,
    per_row_loss,
    squeeze_binary,
)

RULES = ("sum", "known")


def init(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    # each group's output set is drawn from its own key, so a head starts (and ends) the
    # same whatever number of group slots the stack around it carries
    sets = [dense_init(jax.random.fold_in(key, j), spec.d, spec.n_out) for j in range(spec.n_groups)]
    if "cell_counts" in hp:
        trained = (jnp.sum(hp["cell_counts"], axis=-1) > 0).astype(jnp.float32)
    else:
        trained = jnp.ones((spec.n_groups,), jnp.float32)
    return {
        "w": jnp.stack([s["w"] for s in sets], axis=1),  # (d, G, n_out)
        "b": jnp.stack([s["b"] for s in sets]),  # (G, n_out)
        FROZEN: {"trained": trained},
    }


def all_logits(params: Params, x: jax.Array) -> jax.Array:
    """(n, G, n_out) logits of every group's output set, untrained ones included."""
    return jnp.einsum("nd,dgo->ngo", x, params["w"]) + params["b"]


def sum_logits(params: Params, x: jax.Array) -> jax.Array:
    """(n, n_out) logits whose probabilities are the mean over trained groups of each
    group's probabilities (the ``sum`` rule)."""
    z = all_logits(params, x)
    trained = jax.lax.stop_gradient(params[FROZEN]["trained"]) > 0
    if z.shape[-1] == 1:
        # logit of mean_g p_g: log mean_g p_g - log mean_g (1 - p_g), in log space so a
        # confident group cannot overflow it
        pos = jnp.where(trained[None], jax.nn.log_sigmoid(z[..., 0]), -jnp.inf)
        neg = jnp.where(trained[None], jax.nn.log_sigmoid(-z[..., 0]), -jnp.inf)
        return (jax.nn.logsumexp(pos, axis=1) - jax.nn.logsumexp(neg, axis=1))[:, None]
    # log of the mean class probabilities: softmax of it gives those probabilities back
    logp = jnp.where(trained[None, :, None], jax.nn.log_softmax(z, axis=-1), -jnp.inf)
    return jax.nn.logsumexp(logp, axis=1) - jnp.log(jnp.sum(trained))


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    summed = sum_logits(params, x)
    if g is None:
        return squeeze_binary(summed)
    z = all_logits(params, x)
    trained = params[FROZEN]["trained"] > 0
    gi = jnp.clip(g, 0, z.shape[1] - 1)
    own = jnp.take_along_axis(z, gi[:, None, None], axis=1)[:, 0]
    if own.shape[-1] > 1:
        own = jax.nn.log_softmax(own, axis=-1)
    usable = (g >= 0) & (g < z.shape[1]) & trained[gi]
    return squeeze_binary(jnp.where(usable[:, None], own, summed))


def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    z = jnp.take_along_axis(all_logits(params, batch.x), batch.g[:, None, None], axis=1)[:, 0]
    return masked_mean(per_row_loss(squeeze_binary(z), batch.y), batch.gm), state


DOMAIN_IND = HeadType(
    **mitigation_fields("domain_ind"),
    init=init,
    loss=loss,
    predict=logits,
)
