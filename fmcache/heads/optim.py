"""AdamW with a cosine schedule, written to match torch.optim.AdamW + CosineAnnealingLR
stepped once per optimiser step, so a head trained here and one trained by the reference
protocol follow the same update rule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

# A top-level "frozen" entry of a head's parameters holds constants (e.g. a CLIP logit
# scale) that the optimiser neither moves nor decays.
FROZEN = "frozen"


def cosine_lr(lr: jax.Array, step: jax.Array, total_steps: int) -> jax.Array:
    """Learning rate before optimiser step ``step`` (0-based) of ``total_steps``, decaying to 0."""
    return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * step / total_steps))


def adamw_init(params: Any) -> dict[str, Any]:
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"m": zeros, "v": jax.tree_util.tree_map(jnp.zeros_like, params)}


def adamw_update(params: Any, grads: Any, opt: dict[str, Any], lr: jax.Array, weight_decay: jax.Array, step: jax.Array) -> tuple[Any, dict[str, Any]]:
    """One AdamW step (decoupled decay, bias-corrected moments), ``step`` 0-based."""
    t = (step + 1).astype(jnp.float32)
    m = jax.tree_util.tree_map(lambda m, g: BETA1 * m + (1 - BETA1) * g, opt["m"], grads)
    v = jax.tree_util.tree_map(lambda v, g: BETA2 * v + (1 - BETA2) * g * g, opt["v"], grads)
    step_size = lr / (1 - BETA1**t)
    root_bc2 = jnp.sqrt(1 - BETA2**t)

    def move(p: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
        return p * (1 - lr * weight_decay) - step_size * m / (jnp.sqrt(v) / root_bc2 + EPS)

    new = jax.tree_util.tree_map(move, params, m, v)
    if isinstance(params, dict) and FROZEN in params:
        new = {**new, FROZEN: params[FROZEN]}
    return new, {"m": m, "v": v}
