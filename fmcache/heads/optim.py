"""The heads' optimiser: optax's AdamW under a cosine schedule, set up to follow
torch.optim.AdamW + CosineAnnealingLR stepped once per optimiser step, so a head trained
here and one trained by the reference protocol follow the same update rule.

Weight decay skips biases by default, as FairMedFM's trainer does (its parameter groups
put biases and norms at decay 0): shrinking an intercept towards 0 only pulls the scores
towards the class-balanced point and regularises nothing. ``decay_bias=True`` decays
every leaf, as torch's AdamW does with one parameter group.

Heads whose parameters are several players (LAFTR's encoder and adversary) give each
player its own Adam moments and let only the player whose turn it is move
(``players``); the learning rate follows one cosine over all steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

# A top-level "frozen" entry of a head's parameters holds constants (e.g. a CLIP logit
# scale) that the optimiser neither moves nor decays.
FROZEN = "frozen"

# leaf names of additive offsets; every head builds its layers with types.dense_init,
# whose offset is "b"
BIAS_NAMES = frozenset({"b", "bias"})


def decay_mask(params: Any) -> Any:
    """A pytree of bools shaped like ``params``: True where weight decay applies.

    False for leaves named as biases (``BIAS_NAMES``, at any depth) and for the frozen
    constants; True for everything else.
    """

    def decays(path: tuple[Any, ...], leaf: Any) -> bool:
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return not (names and (names[-1] in BIAS_NAMES or names[0] == FROZEN))

    return jax.tree_util.tree_map_with_path(decays, params)


def _top_level_labels(name_of: Callable[[str], str]) -> Callable[[Any], Any]:
    """Labels for ``optax.partition``: every leaf under a top-level key gets that key's label."""

    def labels(params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: jax.tree_util.tree_map(lambda _, k=k: name_of(k), v) for k, v in params.items()}

    return labels


def _keep_frozen(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    # the frozen constants get zero updates and no optimiser state
    return optax.partition({"train": tx, "frozen": optax.set_to_zero()}, _top_level_labels(lambda k: "frozen" if k == FROZEN else "train"))


def _schedule(hp: Mapping[str, jax.Array], total_steps: int) -> optax.Schedule:
    # CosineAnnealingLR with T_max = total_steps, read before each step: lr * (1 + cos(pi t / T)) / 2
    return optax.cosine_decay_schedule(hp["lr"], total_steps)


def adamw(hp: Mapping[str, jax.Array], total_steps: int, decay_bias: bool = False) -> optax.GradientTransformation:
    """AdamW at ``hp["lr"]`` and ``hp["weight_decay"]`` under a cosine schedule to 0 over ``total_steps``.

    The hyperparameters may be traced values: the engine builds one optimiser per head
    inside its ``vmap``.
    """
    return _keep_frozen(optax.adamw(_schedule(hp, total_steps), BETA1, BETA2, EPS, weight_decay=hp["weight_decay"], mask=None if decay_bias else decay_mask))


def players(
    turns: Mapping[str, Callable[[jax.Array], jax.Array]],
    player_of: Callable[[str], str],
) -> Callable[[Mapping[str, jax.Array], int, bool], optax.GradientTransformation]:
    """An optimiser builder for a head whose top-level parameter groups are players taking turns.

    ``turns[name](t)`` says whether player ``name`` moves at step ``t`` (0-based);
    ``player_of(key)`` names the player owning a top-level key of the parameters. Each
    player has its own Adam moments (bias-corrected by its own step count) and decoupled
    weight decay, both applied only on its turns: an idle player's parameters and moments
    stay exactly as they are. The learning rate follows one cosine over all steps.
    """

    def build(hp: Mapping[str, jax.Array], total_steps: int, decay_bias: bool = False) -> optax.GradientTransformation:
        mask = None if decay_bias else decay_mask
        moves = {
            name: optax.transforms.conditionally_mask(
                optax.chain(optax.scale_by_adam(BETA1, BETA2, EPS), optax.add_decayed_weights(hp["weight_decay"], mask)), turn
            )
            for name, turn in turns.items()
        }
        # scaling a zero update by the rate leaves it zero, so one schedule can follow every step
        per_player = optax.partition(moves, _top_level_labels(player_of))
        return _keep_frozen(optax.chain(per_player, optax.scale_by_learning_rate(_schedule(hp, total_steps))))

    return build
