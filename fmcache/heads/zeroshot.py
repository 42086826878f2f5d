"""CLIP zero-shot: cosine similarity between an image feature and each class's text prototype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fmcache.errors import HeadInputError
from fmcache.heads.types import Batch, HeadSpec, HeadType, Hparams, Params, State


def class_prototypes(text_prototypes: np.ndarray) -> np.ndarray:
    """(C, T, D) per-template prototypes (or (C, D)) to (C, D): template mean, unit norm.

    Parameters
    ----------
    text_prototypes : array from ``Embeddings.text_prototypes``.

    Returns
    -------
    np.ndarray
        float32 (C, D), one unit vector per class.
    """
    p = np.asarray(text_prototypes, dtype=np.float32)
    if p.ndim == 3:
        p = p.mean(axis=1)
    if p.ndim != 2 or p.shape[0] < 2:
        raise HeadInputError(f"text prototypes must be (classes, templates, dim) or (classes, dim) with 2+ classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise HeadInputError("text prototypes contain NaN or inf: recompute them with `fmcache embed`")
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise HeadInputError("a text prototype is all zeros: recompute them with `fmcache embed`")
    return p / norm


def normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def init(key: jax.Array, spec: HeadSpec, hp: Hparams) -> Params:
    if spec.prototypes is None:
        raise HeadInputError("this head needs the model's text prototypes (pass prototypes=...)")
    return {"prototypes": jnp.asarray(class_prototypes(spec.prototypes)), "scale": jnp.float32(spec.logit_scale)}


def similarity(x: jax.Array, prototypes: jax.Array, unit_prototypes: bool = True) -> jax.Array:
    """(n, C) similarity of each unit-normalised row to each prototype (unit-normalised too
    unless ``unit_prototypes`` is False).

    A row that holds Q vectors of the prototypes' width (Q x D, flattened: BLIP-2's queries)
    scores each class by its best vector, as BLIP-2's image-text similarity does.
    """
    d = prototypes.shape[-1]
    if x.shape[-1] % d:
        raise HeadInputError(f"features of width {x.shape[-1]} are not whole vectors of the prototypes' width {d}")
    per_vector = normalize(x.reshape(*x.shape[:-1], x.shape[-1] // d, d))
    return (per_vector @ (normalize(prototypes) if unit_prototypes else prototypes).T).max(axis=-2)


def logits(params: Params, x: jax.Array, g: jax.Array | None = None) -> jax.Array:
    """(n, C) logits: logit scale times the cosine similarity to each class prototype."""
    return params["scale"] * similarity(x, params["prototypes"])


def _no_loss(params: Params, state: State, batch: Batch, hp: Hparams) -> tuple[jax.Array, State]:
    raise HeadInputError("the zero-shot head is not trained: build it with zeroshot_params()")


def zeroshot_params(text_prototypes: np.ndarray, logit_scale: float) -> Params:
    """Parameters of one zero-shot head, stacked as K = 1 for ``predict_stack``.

    Parameters
    ----------
    text_prototypes : (C, T, D) or (C, D) text prototypes; class c scores label value c.
    logit_scale : the model's (exponentiated) logit scale, e.g. 100 for OpenAI CLIP.
    """
    return {"prototypes": jnp.asarray(class_prototypes(text_prototypes))[None], "scale": jnp.full((1,), logit_scale, jnp.float32)}


ZEROSHOT = HeadType(
    name="zeroshot",
    init=init,
    loss=_no_loss,
    predict=logits,
    trainable=False,
    description="CLIP zero-shot from the cached text prototypes",
    default_grid={},
    search_grid={},
    needs_text=True,
)
