"""Linear probe (ERM): logistic regression, binary per label or softmax over classes."""

from __future__ import annotations

import jax

from fmcache.heads.types import (
    HeadSpec,
    HeadType,
    Hparams,
    Params,
    dense,
    dense_init,
    erm_loss,
    squeeze_binary,
)


def init(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    return dense_init(key, spec.d, spec.n_out)


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    return squeeze_binary(dense(params, x))


loss = erm_loss(logits)


LINEAR = HeadType(
    name="linear",
    init=init,
    loss=loss,
    predict=logits,
    description="logistic regression on the features (ERM)",
    search_grid={"lr": (2.5e-4, 1e-3, 4e-3), "weight_decay": (0.0, 0.05)},
    solvers=("adamw", "lbfgs"),
)
