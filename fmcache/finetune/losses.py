"""The mitigation losses of the fine-tuning stage, in torch, on a backbone's pooled features.

Each method is the JAX head of the same name in ``fmcache.heads`` written again in torch:
the same head, the same loss formula (``fmcache.mitigations``), the same hyperparameters
and defaults, and the same state update. The inputs differ only in where ``x`` comes from:
here it is the backbone's pooled feature of the batch, carrying gradients back into it.
The heads (``fmcache.finetune.heads``) hold the JAX heads' parameters under the same
names and shapes.

    m = LOSSES["groupdro"]
    head = m.make_head(d, n_classes=2, n_groups=2)
    hp = {**m.hparams, "cell_counts": counts}          # (G, C) training rows per cell
    state = m.init_state(2, 2, hp)
    loss, state = m.loss(head, state, Batch(x, y, g, mask, gmask), hp)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmcache.finetune.heads import DomainIndHead, LaftrHead, make_domain_ind, make_laftr, make_linear
from fmcache.mitigations import MITIGATIONS

State = dict[str, Tensor]
Hparams = Mapping[str, Any]  # the method's scalars, plus "cell_counts": (G, C) float tensor


class Batch(NamedTuple):
    """One minibatch as the losses read it (the torch twin of ``fmcache.heads.types.Batch``)."""

    x: Tensor  # (B, d) pooled features, float, carrying the backbone's gradient
    y: Tensor  # (B,) int64 class id; rows with m == 0 hold 0
    g: Tensor  # (B,) int64 group id; rows with unknown group hold 0
    m: Tensor  # (B,) float: 1 where the row counts for the task loss
    gm: Tensor  # (B,) float: 1 where the row's group is known (and m == 1)


# Shared pieces, as fmcache.heads.types has them.


def _squeeze_binary(logits: Tensor) -> Tensor:
    return logits[:, 0] if logits.shape[-1] == 1 else logits


def _per_row_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per row: binary from (B,) or (B, 1) logits, softmax from (B, C)."""
    if logits.ndim == 1 or logits.shape[-1] == 1:
        z = logits.reshape(logits.shape[0])
        return F.softplus(z) - y.to(z.dtype) * z
    return -torch.gather(F.log_softmax(logits, dim=-1), 1, y[:, None])[:, 0]


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    return torch.sum(values * weights) / torch.clamp(torch.sum(weights), min=1.0)


def _per_cell_mean(values: Tensor, cell: Tensor, w: Tensor, n: int) -> tuple[Tensor, Tensor]:
    onehot = F.one_hot(cell, n).to(values.dtype) * w[:, None]
    counts = onehot.sum(0)
    return (onehot.T @ values) / torch.clamp(counts, min=1.0), counts


def _counts(hp: Hparams, like: Tensor) -> Tensor:
    return torch.as_tensor(hp["cell_counts"], dtype=like.dtype, device=like.device)


def _linear_logits(head: nn.Module, x: Tensor, g: Tensor | None = None) -> Tensor:
    return _squeeze_binary(head(x))


def _erm(head: nn.Module, state: State, batch: Batch, hp: Hparams) -> tuple[Tensor, State]:
    return _masked_mean(_per_row_loss(_linear_logits(head, batch.x), batch.y), batch.m), state


# Resampling (fmcache.heads.resample).


def _balanced(counts: Tensor, idx: tuple[Tensor, ...]) -> Tensor:
    n_bins = torch.clamp((counts > 0).sum(), min=1)
    n_b = counts[idx]
    return torch.where(n_b > 0, counts.sum() / (n_bins * torch.clamp(n_b, min=1.0)), torch.zeros_like(n_b))


def _resample(head: nn.Module, state: State, batch: Batch, hp: Hparams) -> tuple[Tensor, State]:
    """Group (or group x label) resampling done as the equivalent reweighting, as the JAX head.

    A sampler drawing rows with probability proportional to these weights gives minibatches
    whose expected loss is this weighted loss, so both follow the same objective and differ
    only in variance; the weights keep the fine-tuning loop's data order untouched.
    """
    counts = _counts(hp, batch.gm)
    by_group = _balanced(counts.sum(1), (batch.g,))
    by_cell = _balanced(counts, (batch.g, batch.y))
    w = (by_cell if float(hp["balance_label"]) > 0 else by_group) * batch.gm
    rows = _per_row_loss(_linear_logits(head, batch.x), batch.y)
    # the row count, not the weight sum: the estimate of the balanced risk stays unbiased
    return torch.sum(w * rows) / torch.clamp(batch.gm.sum(), min=1.0), state


# GroupDRO (fmcache.heads.groupdro).


def _dro_training_counts(counts: Tensor, cells: bool) -> Tensor:
    if cells:
        return counts.reshape(-1)
    n_groups, n_classes = counts.shape
    by_attribute = torch.zeros(n_groups * n_classes, dtype=counts.dtype, device=counts.device)
    by_attribute[:n_groups] = counts.sum(1)
    return by_attribute


def _groupdro_init(n_groups: int, n_classes: int, hp: Hparams) -> State:
    n = n_groups * n_classes
    if "cell_counts" not in hp:
        return {"q": torch.full((n,), 1.0 / n)}
    counts = torch.as_tensor(hp["cell_counts"]).float()
    present = (_dro_training_counts(counts, float(hp["cells"]) > 0.5) > 0).float()
    return {"q": present / torch.clamp(present.sum(), min=1.0)}


def _groupdro(head: nn.Module, state: State, batch: Batch, hp: Hparams) -> tuple[Tensor, State]:
    counts = _counts(hp, batch.gm)
    cells = float(hp["cells"]) > 0.5
    q = state["q"].to(counts)
    ids = batch.g * counts.shape[1] + batch.y if cells else batch.g
    rows = _per_row_loss(_linear_logits(head, batch.x), batch.y)
    per_group, _ = _per_cell_mean(rows, ids, batch.gm, q.shape[0])
    n_g = _dro_training_counts(counts, cells)
    present = n_g > 0
    adj = torch.where(present, float(hp["adj"]) / torch.sqrt(torch.clamp(n_g, min=1.0)), torch.zeros_like(n_g))
    # as the JAX head (after Sagawa et al.'s LossComputer): every group's batch loss gets the
    # adjustment, and the adjusted loss both moves q and is the objective
    adjusted = per_group + adj
    q = torch.where(present, q * torch.exp(float(hp["dro_step"]) * adjusted.detach()), torch.zeros_like(q))
    q = q / q.sum()
    return torch.sum(q.detach() * adjusted), {"q": q.detach()}


# LAFTR (fmcache.heads.laftr).


def _adversary_error(adv: tuple[Tensor, ...], z: Tensor, batch: Batch, variant: str, eqopp_label: int) -> Tensor:
    """Mean over cells of the adversary's L1 error 1 - P(true group); every cell weighs the same."""
    hid_w, hid_b, out_w, out_b = adv
    n_adv, n_groups = out_b.shape
    outs = torch.stack([F.relu(z @ hid_w[a] + hid_b[a]) @ out_w[a] + out_b[a] for a in range(n_adv)])
    logits = outs[0] if n_adv == 1 else torch.gather(outs, 0, batch.y[None, :, None].expand(1, -1, n_groups))[0]
    probs = F.softmax(logits, dim=-1)
    err = 1.0 - torch.gather(probs, 1, batch.g[:, None])[:, 0]
    w = batch.gm
    if variant == "eqopp":
        w = w * (batch.y == eqopp_label).to(w.dtype)
    cell = batch.g * n_adv + (batch.y if variant == "eqodd" else 0)
    cell_err, counts = _per_cell_mean(err, cell, w, n_groups * n_adv)
    present = counts > 0
    return torch.where(present, cell_err, torch.zeros_like(cell_err)).sum() / torch.clamp(present.sum(), min=1)


def _check_adv_steps(hp: Hparams) -> None:
    if int(hp["adv_steps"]) != 0:
        raise ValueError(
            f"LAFTR fine-tuning supports adv_steps = 0 only (both players every step), got {hp['adv_steps']}: "
            "with per-parameter Adam moments one optimiser then equals one per player; turns need one optimiser each"
        )


def _laftr_loss(head: LaftrHead, state: State, batch: Batch, hp: Hparams, *, variant: str) -> tuple[Tensor, State]:
    _check_adv_steps(hp)
    z = head.encode(batch.x)
    task = _masked_mean(_per_row_loss(_squeeze_binary(head.clf(z)), batch.y), batch.m)
    label = int(hp.get("eqopp_label", 0))
    adv = (head.adv.hid.w, head.adv.hid.b, head.adv.out.w, head.adv.out.b)
    # detach() where the JAX head stops gradients: each term reaches one player only
    adv_fit = _adversary_error(adv, z.detach(), batch, variant, label)
    adv_fool = _adversary_error(tuple(t.detach() for t in adv), z, batch, variant, label)
    return task - float(hp["adv_coeff"]) * adv_fool + adv_fit, state


def _laftr_init(n_groups: int, n_classes: int, hp: Hparams) -> State:
    _check_adv_steps(hp)
    return {}


def _laftr_logits(head: LaftrHead, x: Tensor, g: Tensor | None = None) -> Tensor:
    return _squeeze_binary(head.clf(head.encode(x)))


# Fairness penalties (fmcache.heads.fairpenalty).


def _parity_gap(p: Tensor, g: Tensor, w: Tensor, n_groups: int) -> Tensor:
    """Sum over groups present in ``w`` of |group mean of p - overall mean of p|."""
    group_mean, counts = _per_cell_mean(p, g, w, n_groups)
    overall = torch.sum(p * w) / torch.clamp(w.sum(), min=1.0)
    return torch.where(counts > 0, torch.abs(group_mean - overall), torch.zeros_like(group_mean)).sum()


def _fairpenalty(head: nn.Module, state: State, batch: Batch, hp: Hparams, *, kind: str) -> tuple[Tensor, State]:
    z = _linear_logits(head, batch.x)
    if z.ndim != 1:
        raise ValueError("the fairness penalties handle binary labels only (one logit)")
    task = _masked_mean(_per_row_loss(z, batch.y), batch.m)
    p = torch.sigmoid(z)
    n_groups = int(hp["cell_counts"].shape[0])
    if kind == "dp":
        gap = _parity_gap(p, batch.g, batch.gm, n_groups)
    else:
        gap = sum(_parity_gap(p, batch.g, batch.gm * (batch.y == c).to(p.dtype), n_groups) for c in (0, 1))
    return task + float(hp["penalty"]) * gap, state


# Domain-independent heads (fmcache.heads.domain_ind).


def _domain_ind_sum_logits(head: DomainIndHead, x: Tensor) -> Tensor:
    z = head.all_logits(x)
    trained = head.frozen.trained > 0
    ninf = torch.tensor(-math.inf, dtype=z.dtype, device=z.device)
    if z.shape[-1] == 1:
        # logit of the mean of the trained groups' p, in log space so no group overflows it
        pos = torch.where(trained[None], F.logsigmoid(z[..., 0]), ninf)
        neg = torch.where(trained[None], F.logsigmoid(-z[..., 0]), ninf)
        return (torch.logsumexp(pos, 1) - torch.logsumexp(neg, 1))[:, None]
    logp = torch.where(trained[None, :, None], F.log_softmax(z, dim=-1), ninf)
    return torch.logsumexp(logp, 1) - torch.log(trained.sum().to(z.dtype))


def _domain_ind_logits(head: DomainIndHead, x: Tensor, g: Tensor | None = None) -> Tensor:
    """The ``sum`` rule without ``g``; with it, ``known`` (own group where known and trained)."""
    summed = _domain_ind_sum_logits(head, x)
    if g is None:
        return _squeeze_binary(summed)
    z = head.all_logits(x)
    trained = head.frozen.trained > 0
    gi = torch.clamp(g, 0, z.shape[1] - 1)
    own = torch.gather(z, 1, gi[:, None, None].expand(-1, 1, z.shape[-1]))[:, 0]
    if own.shape[-1] > 1:
        own = F.log_softmax(own, dim=-1)
    usable = (g >= 0) & (g < z.shape[1]) & trained[gi]
    return _squeeze_binary(torch.where(usable[:, None], own, summed))


def _domain_ind(head: DomainIndHead, state: State, batch: Batch, hp: Hparams) -> tuple[Tensor, State]:
    z = head.all_logits(batch.x)
    own = torch.gather(z, 1, batch.g[:, None, None].expand(-1, 1, z.shape[-1]))[:, 0]
    return _masked_mean(_per_row_loss(_squeeze_binary(own), batch.y), batch.gm), state


# The table.


def _no_state(n_groups: int, n_classes: int, hp: Hparams) -> State:
    return {}


@dataclass(frozen=True)
class TorchMitigation:
    """One method of the fine-tuning stage: the torch twin of the JAX head of that name.

    Attributes
    ----------
    name : ``erm`` or a key of ``fmcache.mitigations.MITIGATIONS``.
    make_head : ``(d, n_classes=2, n_groups=2, hidden=128, cell_counts=None) -> nn.Module``;
        ``cell_counts`` (G, C) marks a domain-independent head's untrained group slots.
    loss : ``(head, state, batch, hp) -> (scalar loss, new state)``; ``hp`` holds the
        method's hyperparameters (missing ones take ``hparams``'s defaults) and
        ``cell_counts``; the new state is detached.
    init_state : ``(n_groups, n_classes, hp) -> state``.
    predict : ``(head, x, g=None) -> logits``, (n,) for two classes or (n, C).
    hparams : the defaults, from ``fmcache.mitigations`` (none for ``erm``).
    """

    name: str
    make_head: Callable[..., nn.Module]
    loss: Callable[[nn.Module, State, Batch, Hparams], tuple[Tensor, State]]
    init_state: Callable[[int, int, Hparams], State] = _no_state
    predict: Callable[..., Tensor] = _linear_logits
    hparams: Mapping[str, float] = field(default_factory=dict)


def _with_defaults(fn: Callable[..., Any], defaults: Mapping[str, float]) -> Callable[..., Any]:
    # a caller passes only the hyperparameters it changes, as the JAX engine fills defaults
    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        *rest, hp = args
        return fn(*rest, {**defaults, **hp})

    return call


def _entry(name: str, make_head: Callable[..., nn.Module], loss: Callable[..., Any], **kw: Any) -> TorchMitigation:
    defaults = MITIGATIONS[name].hparams if name in MITIGATIONS else {}
    init_state = kw.pop("init_state", _no_state)
    return TorchMitigation(name, make_head, _with_defaults(loss, defaults), _with_defaults(init_state, defaults),
                           hparams=defaults, **kw)


LOSSES: Mapping[str, TorchMitigation] = {
    m.name: m
    for m in (
        _entry("erm", make_linear, _erm),
        _entry("resample", make_linear, _resample),
        _entry("groupdro", make_linear, _groupdro, init_state=_groupdro_init),
        *(
            _entry(name, make_laftr(variant), functools.partial(_laftr_loss, variant=variant),
                   init_state=_laftr_init, predict=_laftr_logits)
            for name, variant in (("laftr", "dp"), ("laftr_eqodd", "eqodd"), ("laftr_eqopp", "eqopp"))
        ),
        _entry("fairpenalty", make_linear, functools.partial(_fairpenalty, kind="dp")),
        _entry("fairpenalty_eo", make_linear, functools.partial(_fairpenalty, kind="eo")),
        _entry("domain_ind", make_domain_ind, _domain_ind, predict=_domain_ind_logits),
    )
}
