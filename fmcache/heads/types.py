"""The one shape every head shares: init, loss, predict (plus an optional training state).

A head type is data: a frozen record of pure functions of one head's parameters. The
training engine stacks K heads along a leading axis with ``jax.vmap``; nothing here knows
about that axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmcache.heads import optim
from fmcache.mitigations import MITIGATIONS

Params = Any  # a pytree of jax arrays
State = Any  # a pytree of jax arrays (may be an empty dict)
Hparams = Mapping[str, jax.Array]  # one head's scalars: lr, weight_decay, seed, label, ...


class Batch(NamedTuple):
    """One head's view of a minibatch: shared features, its own label and group columns."""

    x: jax.Array  # (B, d) float32
    y: jax.Array  # (B,) int32 class id; rows with m == 0 hold 0
    g: jax.Array  # (B,) int32 group id; rows with unknown group hold 0
    m: jax.Array  # (B,) float32: 1 where the row counts for this head's loss
    gm: jax.Array  # (B,) float32: 1 where the row's group is known (and m == 1)


@dataclass(frozen=True)
class HeadSpec:
    """Static facts a head's functions may close over: dimensions and fixed inputs.

    Attributes
    ----------
    d : feature dimension.
    n_classes : 2 for a binary task (one logit), more for softmax over classes.
    n_groups : number of groups of the sensitive attribute (at least 2).
    hidden : width of the encoder of heads that have one (LAFTR), and of LAFTR's adversary's
        hidden layer.
    prototypes : (C, D) unit-norm class prototypes, for heads built on a text tower.
    logit_scale : the CLIP model's logit scale (already exponentiated).
    """

    d: int
    n_classes: int = 2
    n_groups: int = 2
    hidden: int = 128
    prototypes: np.ndarray | None = field(default=None, compare=False)
    logit_scale: float = 100.0

    @property
    def n_out(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes


def _no_state(spec: HeadSpec, hp: Hparams) -> State:
    return {}


# the benchmark's protocol: AdamW with a cosine schedule, lr 2.5e-4, weight decay 0.05
BENCHMARK_GRID: Mapping[str, tuple[float, ...]] = {"lr": (2.5e-4,), "weight_decay": (0.05,)}
# a small search around it, for model selection on validation to choose from
SEARCH_GRID: Mapping[str, tuple[float, ...]] = {"lr": (2.5e-4, 1e-3), "weight_decay": (0.05,)}


@dataclass(frozen=True)
class HeadType:
    """A head: pure functions of one head's parameters, and every fact the engine and the
    sweep need about it. Adding a head type is making one of these.

    Attributes
    ----------
    name : registry key.
    init : ``(key, spec, hp) -> params``. For a head that is not trained, the parameters it
        is used with (built from ``spec``, e.g. the text prototypes).
    loss : ``(params, state, batch, hp) -> (scalar loss, new state)``; the new state (e.g.
        GroupDRO's group weights) is carried to the next step and is not differentiated.
    predict : ``(params, x, g) -> logits``, (n,) for two classes or (n, C); ``g`` is the
        (n,) group id or None where the head can do without it.
    init_state : ``(spec, hp) -> state``.
    hparams : the head's own hyperparameters and their defaults (beyond lr, weight_decay,
        seed, label, attribute).
    uses_groups : the loss needs the sensitive attribute; rows with an unknown group are
        left out of its training.
    trainable : False for heads built without training (zero-shot): ``init`` is the fit.
    multiclass : the head also handles more than two classes.
    description : one line for listings.
    default_grid : the hyperparameters ``--sweep default`` trains it with (one point: the
        benchmark's protocol).
    search_grid : the wider grid ``--sweep all`` trains it over.
    target_gap : the fairness gap (a metric name of ``fmcache.fairness``) the head is built
        to shrink; the linear probe's value of it is the baseline it is compared with.
    needs_text : the head starts from the model's text prototypes (VLMs only); it is trained
        and scored on the label its prompts describe.
    solvers : the optimisers that fit it: ``adamw`` (minibatch) and, for plain logistic
        regression, ``lbfgs`` (full batch, scikit-learn's objective).
    needs_cell_counts : the loss reads ``hp["cell_counts"]``, the (groups, classes) count of
        its training rows per (group, label) cell, which the engine then fills in.
    optimizer : ``(hp, total_steps, decay_bias) -> optax.GradientTransformation`` for one
        head (``optim.adamw``; heads with players that take turns build theirs with
        ``optim.players``).
    formula : the loss in a few lines; a mitigation's is its entry's in ``fmcache.mitigations``.
    """

    name: str
    init: Callable[[jax.Array, HeadSpec, Hparams], Params]
    loss: Callable[[Params, State, Batch, Hparams], tuple[jax.Array, State]]
    predict: Callable[[Params, jax.Array, jax.Array | None], jax.Array]
    init_state: Callable[[HeadSpec, Hparams], State] = _no_state
    hparams: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)
    uses_groups: bool = False
    trainable: bool = True
    multiclass: bool = True
    description: str = ""
    default_grid: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: dict(BENCHMARK_GRID), hash=False, compare=False)
    search_grid: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: dict(SEARCH_GRID), hash=False, compare=False)
    target_gap: str = "auc_delta"
    needs_text: bool = False
    solvers: tuple[str, ...] = ("adamw",)
    needs_cell_counts: bool = False
    optimizer: Callable[[Hparams, int, bool], optax.GradientTransformation] = optim.adamw
    formula: str = ""


def mitigation_fields(name: str) -> dict[str, Any]:
    """The HeadType fields that the mitigation's entry in ``fmcache.mitigations`` decides.

    Parameters
    ----------
    name : a key of ``MITIGATIONS``.

    Returns
    -------
    Keyword arguments of ``HeadType``: name, hparams (a fresh dict of the defaults),
    target_gap, uses_groups, needs_cell_counts, description and formula, so the JAX head
    and the torch fine-tuning loss cannot drift apart on them.
    """
    m = MITIGATIONS[name]
    return {
        "name": m.name,
        "hparams": dict(m.hparams),
        "target_gap": m.target_gap,
        "uses_groups": m.uses_groups,
        "needs_cell_counts": m.needs_cell_counts,
        "description": m.description,
        "formula": m.formula,
    }


# Small shared pieces the head modules build on.


def dense_init(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
    """torch.nn.Linear's default initialisation: U(-1/sqrt(n_in), 1/sqrt(n_in)) for both."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / np.sqrt(n_in)
    return {
        "w": jax.random.uniform(kw, (n_in, n_out), jnp.float32, -bound, bound),
        "b": jax.random.uniform(kb, (n_out,), jnp.float32, -bound, bound),
    }


def dense(p: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def per_row_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Cross-entropy per row: binary from (B,) or (B, 1) logits, softmax from (B, C)."""
    if logits.ndim == 1 or logits.shape[-1] == 1:
        z = logits.reshape(logits.shape[0])
        # log(1 + e^z) - y z, written to stay finite for large |z|
        return jax.nn.softplus(z) - y.astype(z.dtype) * z
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def erm_loss(predict: Callable[[Params, jax.Array], jax.Array]) -> Callable[..., tuple[jax.Array, State]]:
    """The loss of a head that mitigates nothing: mean cross-entropy of ``predict`` over its rows."""

    def loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
        return masked_mean(per_row_loss(predict(params, batch.x), batch.y), batch.m), state

    return loss


def squeeze_binary(logits: jax.Array) -> jax.Array:
    """(n, 1) logits of a binary head become (n,); multi-class logits stay (n, C)."""
    return logits[:, 0] if logits.shape[-1] == 1 else logits


def positive_score(logits: jax.Array) -> jax.Array:
    """Logits to scores: P(class 1) for (n,) or (n, 2) logits, class probabilities for (n, C > 2)."""
    if logits.ndim == 1:
        return jax.nn.sigmoid(logits)
    probs = jax.nn.softmax(logits, axis=-1)
    return probs[:, 1] if logits.shape[-1] == 2 else probs
