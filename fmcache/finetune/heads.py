"""The torch heads of the fine-tuning stage's mitigation losses, laid out as the JAX heads.

A head's ``state_dict`` keys are the dotted paths of the JAX head's parameter pytree
(``fmcache.heads``) and its tensors have the same shapes: a dense layer holds ``w``
(n_in, n_out) and ``b`` (n_out,), not torch's transposed weight. So ``load_tree`` and
``to_tree`` move one head's values between the two stages unchanged, and a test can give
both the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _uniform(shape: tuple[int, ...], n_in: int) -> nn.Parameter:
    # torch.nn.Linear's initialisation, as the JAX heads' dense_init: U(+-1/sqrt(n_in))
    bound = 1.0 / math.sqrt(n_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class Dense(nn.Module):
    """``x @ w + b``; ``lead`` stacks independent layers (LAFTR's per-label adversaries)."""

    def __init__(self, n_in: int, n_out: int, lead: tuple[int, ...] = ()):
        super().__init__()
        self.w = _uniform((*lead, n_in, n_out), n_in)
        self.b = _uniform((*lead, n_out), n_in)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.w + self.b


class LaftrHead(nn.Module):
    """Encoder (ReLU, width ``hidden``), classifier on its output, and ``n_adv`` MLP adversaries."""

    def __init__(self, d: int, n_out: int, n_groups: int, hidden: int, n_adv: int):
        super().__init__()
        self.enc = Dense(d, hidden)
        self.clf = Dense(hidden, n_out)
        self.adv = nn.Module()
        self.adv.hid = Dense(hidden, hidden, (n_adv,))
        self.adv.out = Dense(hidden, n_groups, (n_adv,))

    def encode(self, x: Tensor) -> Tensor:
        return F.relu(self.enc(x))


class DomainIndHead(nn.Module):
    """One output set per group: ``w`` (d, G, n_out), ``b`` (G, n_out); ``frozen.trained`` (G,)
    marks the groups with training rows, the only ones inference reads."""

    def __init__(self, d: int, n_out: int, n_groups: int, cell_counts: Any):
        super().__init__()
        self.w = _uniform((d, n_groups, n_out), d)
        self.b = _uniform((n_groups, n_out), d)
        trained = torch.ones(n_groups) if cell_counts is None else (torch.as_tensor(cell_counts).sum(-1) > 0).float()
        # a submodule so the buffer's key is the JAX pytree's "frozen.trained"
        self.frozen = nn.Module()
        self.frozen.register_buffer("trained", trained)

    def all_logits(self, x: Tensor) -> Tensor:
        return torch.einsum("nd,dgo->ngo", x, self.w) + self.b


def _n_out(n_classes: int) -> int:
    # binary tasks have one logit, as the JAX heads
    return 1 if n_classes == 2 else n_classes


def make_linear(d: int, n_classes: int = 2, n_groups: int = 2, hidden: int = 128, cell_counts: Any = None) -> nn.Module:
    """The linear probe's head (ERM, resampling, GroupDRO, fairness penalties): one dense layer.

    Every ``make_*`` takes these arguments, so the losses' table calls them alike.

    Parameters
    ----------
    d : the pooled feature's dimension.
    n_classes : 2 for a binary task (one logit), more for softmax over classes.
    n_groups : group slots of the sensitive attribute (LAFTR's adversary, domain-independent heads).
    hidden : LAFTR's encoder and adversary width.
    cell_counts : (G, C) training rows per (group, label) cell; marks a domain-independent
        head's untrained group slots.

    Returns
    -------
    A float32 module whose ``state_dict`` is laid out as the JAX head's parameters.
    """
    return Dense(d, _n_out(n_classes))


def make_laftr(variant: str) -> Callable[..., nn.Module]:
    """The LAFTR head factory for ``dp``, ``eqodd`` (one adversary per label value) or ``eqopp``."""

    def make(d: int, n_classes: int = 2, n_groups: int = 2, hidden: int = 128, cell_counts: Any = None) -> nn.Module:
        return LaftrHead(d, _n_out(n_classes), n_groups, hidden, n_classes if variant == "eqodd" else 1)

    return make


def make_domain_ind(d: int, n_classes: int = 2, n_groups: int = 2, hidden: int = 128, cell_counts: Any = None) -> nn.Module:
    """One output set per group; the groups without rows in ``cell_counts`` (G, C) are marked untrained."""
    return DomainIndHead(d, _n_out(n_classes), n_groups, cell_counts)


def load_tree(head: nn.Module, tree: Mapping[str, Any]) -> nn.Module:
    """Copy a JAX head's parameter pytree (nested mappings of arrays) into ``head``.

    Parameters
    ----------
    head : a head made by a ``TorchMitigation.make_head``.
    tree : the JAX head's parameters (``jax.Array`` or NumPy leaves); keys nest as the
        head's ``state_dict`` keys dot.

    Returns
    -------
    ``head``, its tensors overwritten in place (dtype and device kept).

    Raises
    ------
    ValueError
        If the paths or the shapes of the two differ.
    """
    flat = _flatten(tree)
    own = head.state_dict()
    if set(flat) != set(own):
        raise ValueError(f"parameter paths differ: the tree has {sorted(flat)}, the head {sorted(own)}")
    with torch.no_grad():
        for key, value in flat.items():
            value = torch.as_tensor(np.asarray(value))
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"{key}: the tree's shape {tuple(value.shape)} is not the head's {tuple(own[key].shape)}")
            own[key].copy_(value)
    return head


def to_tree(head: nn.Module) -> dict[str, Any]:
    """The head's tensors as a nested dict of NumPy arrays, laid out as the JAX head's pytree."""
    tree: dict[str, Any] = {}
    for key, value in head.state_dict().items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value.detach().cpu().numpy()
    return tree


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
