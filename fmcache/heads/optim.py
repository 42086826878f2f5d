"""AdamW with a cosine schedule, written to match torch.optim.AdamW + CosineAnnealingLR
stepped once per optimiser step, so a head trained here and one trained by the reference
protocol follow the same update rule.

Weight decay skips biases by default, as FairMedFM's trainer does (its parameter groups
put biases and norms at decay 0): shrinking an intercept towards 0 only pulls the scores
towards the class-balanced point and regularises nothing. ``decay_mask`` says which
leaves decay, in the form optax's ``adamw(mask=...)`` takes; passing no mask decays every
leaf, as torch's AdamW does with one parameter group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

# A top-level "frozen" entry of a head's parameters holds constants (e.g. a CLIP logit
# scale) that the optimiser neither moves nor decays.
FROZEN = "frozen"

# leaf names of additive offsets; every head builds its layers with types.dense_init,
# whose offset is "b"
BIAS_NAMES = frozenset({"b", "bias"})


def cosine_lr(lr: jax.Array, step: jax.Array, total_steps: int) -> jax.Array:
    """Learning rate before optimiser step ``step`` (0-based) of ``total_steps``, decaying to 0."""
    return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * step / total_steps))


def decay_mask(params: Any) -> Any:
    """A pytree of bools shaped like ``params``: True where weight decay applies.

    False for leaves named as biases (``BIAS_NAMES``, at any depth) and for the frozen
    constants; True for everything else.
    """

    def decays(path: tuple[Any, ...], leaf: Any) -> bool:
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return not (names and (names[-1] in BIAS_NAMES or names[0] == FROZEN))

    return jax.tree_util.tree_map_with_path(decays, params)


def adamw_init(params: Any) -> dict[str, Any]:
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"m": zeros, "v": jax.tree_util.tree_map(jnp.zeros_like, params)}


def adamw_update(
    params: Any,
    grads: Any,
    opt: dict[str, Any],
    lr: jax.Array,
    weight_decay: jax.Array,
    step: jax.Array,
    mask: Any | Callable[[Any], Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """One AdamW step (decoupled decay, bias-corrected moments), ``step`` 0-based.

    ``mask``: a pytree of bools like ``params`` (or a function of ``params`` giving one)
    saying which leaves decay; None decays all of them (torch's default).
    """
    t = (step + 1).astype(jnp.float32)
    m = jax.tree_util.tree_map(lambda m, g: BETA1 * m + (1 - BETA1) * g, opt["m"], grads)
    v = jax.tree_util.tree_map(lambda v, g: BETA2 * v + (1 - BETA2) * g * g, opt["v"], grads)
    step_size = lr / (1 - BETA1**t)
    root_bc2 = jnp.sqrt(1 - BETA2**t)
    if callable(mask):
        mask = mask(params)
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)

    def move(p: jax.Array, m: jax.Array, v: jax.Array, decays: bool) -> jax.Array:
        shrink = (1 - lr * weight_decay) if decays else 1.0
        return p * shrink - step_size * m / (jnp.sqrt(v) / root_bc2 + EPS)

    new = jax.tree_util.tree_map(move, params, m, v, mask)
    if isinstance(params, dict) and FROZEN in params:
        new = {**new, FROZEN: params[FROZEN]}
    return new, {"m": m, "v": v}
