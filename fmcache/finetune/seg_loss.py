"""SAMed's segmentation loss and FairSeg's fair error-bound scaling (FEBS), in torch.

SAMed (Zhang & Liu 2023) trains on ``(1 - w) * CE + w * Dice`` of the low-resolution logits,
w = 0.8. Its Dice loss is pooled over the whole batch: per channel c (background included),
1 - (2 sum(p t) + 1e-5) / (sum(p p) + sum(t t) + 1e-5) with p the softmax probabilities and t
the one-hot target, summed over items and pixels, then averaged over the channels.

FEBS (Tian et al., ICLR 2024, FairSeg's ``FairDiceLoss``) scales each item's probabilities
inside that Dice loss by a weight of its group: w_g = tanh((min_g' L_g' / L_g) ** gamma), L_g
the Dice loss (summed over channels) of group g's items in the batch, held constant. The
reference fills the groups absent from a batch with a loss of 0 before the minimum, so
one missing group sets every weight to tanh(0) = 0 and the Dice term to a constant; here the
minimum is over the groups present only. An item of unknown group (-1) keeps weight 1 (the
reference would index its last group with -1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5  # SAMed's DiceLoss


def one_hot(target: torch.Tensor, n_channels: int) -> torch.Tensor:
    """(B, H, W) class ids as a float (B, n_channels, H, W) one-hot map."""
    return F.one_hot(target.long(), n_channels).permute(0, 3, 1, 2).float()


def channel_dice_losses(probs: torch.Tensor, onehot: torch.Tensor, item_weights: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """SAMed's Dice loss of each channel, pooled over the batch's items and pixels.

    Parameters
    ----------
    probs, onehot
        (B, C, H, W) probabilities and one-hot target.
    item_weights
        (B,) multiplies each item's share of every sum, as if it were drawn that many times
        (group-balanced resampling); None counts each item once.

    Returns
    -------
    torch.Tensor
        (C,) the losses 1 - (2 sum(p t) + 1e-5) / (sum(p p) + sum(t t) + 1e-5).
    """
    inter, pp, tt = (probs * onehot).sum((2, 3)), (probs * probs).sum((2, 3)), (onehot * onehot).sum((2, 3))
    if item_weights is not None:
        w = item_weights[:, None]
        inter, pp, tt = inter * w, pp * w, tt * w
    return 1 - (2 * inter.sum(0) + SMOOTH) / (pp.sum(0) + tt.sum(0) + SMOOTH)


def febs_weights(group_losses: torch.Tensor, present: torch.Tensor, gamma: float) -> torch.Tensor:
    """FEBS group weights tanh((min over present groups of L / L_g) ** gamma).

    Parameters
    ----------
    group_losses
        (G,) each group's Dice loss (summed over channels) on its items of the batch.
    present
        (G,) bool: the groups with items in the batch; the others' losses are ignored.
    gamma
        The temperature: larger pushes the worse groups' weights further down.

    Returns
    -------
    torch.Tensor
        (G,) weights in (0, tanh(1)] for present groups; 1 for absent ones (they weigh
        no item). No gradient flows through them.
    """
    losses = group_losses.detach().float()
    if not bool(present.any()):
        return torch.ones_like(losses)
    best = losses[present].min()
    # a group already at loss 0 is the best one: its ratio is 1, not 0 / 0
    ratio = torch.where(losses > 0, best / losses.clamp(min=torch.finfo(losses.dtype).tiny), torch.ones_like(losses))
    return torch.where(present, torch.tanh(ratio ** gamma), torch.ones_like(losses))


def febs_item_weights(probs: torch.Tensor, onehot: torch.Tensor, groups: torch.Tensor, n_groups: int,
                      gamma: float) -> torch.Tensor:
    """Each item's FEBS weight (B,): its group's :func:`febs_weights`, 1 for group -1."""
    losses = torch.zeros(n_groups, device=probs.device)
    present = torch.zeros(n_groups, dtype=torch.bool, device=probs.device)
    with torch.no_grad():
        for g in range(n_groups):
            mine = groups == g
            if bool(mine.any()):
                losses[g] = channel_dice_losses(probs[mine], onehot[mine]).sum()
                present[g] = True
    w = febs_weights(losses, present, gamma)
    known = groups >= 0
    return torch.where(known, w[groups.clamp(min=0)], torch.ones_like(probs[:, 0, 0, 0]))


def samed_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 0.8,
               item_weights: torch.Tensor | None = None, febs: tuple[torch.Tensor, int, float] | None = None
               ) -> torch.Tensor:
    """SAMed's ``(1 - dice_weight) * CE + dice_weight * Dice`` of a batch.

    Parameters
    ----------
    logits
        (B, C, H, W) low-resolution logits, C = classes + background.
    target
        (B, H, W) int64 class ids at the same size.
    dice_weight
        The Dice term's share (SAMed and the benchmark: 0.8).
    item_weights
        (B,) resampling weights of each item's CE and Dice sums. The CE is divided by the
        item count, not the weights' sum, so the balanced risk's estimate stays unbiased.
    febs
        (groups (B,), number of groups, gamma): scale each item's probabilities in the Dice
        term by its group's FEBS weight.
    """
    n_channels = logits.shape[1]
    ce = F.cross_entropy(logits, target, reduction="none").mean((1, 2))
    ce = ce.mean() if item_weights is None else (ce * item_weights).sum() / len(ce)
    probs, onehot = torch.softmax(logits, dim=1), one_hot(target, n_channels)
    if febs is not None:
        groups, n_groups, gamma = febs
        probs = probs * febs_item_weights(probs, onehot, groups, n_groups, gamma)[:, None, None, None]
    dice = channel_dice_losses(probs, onehot, item_weights).mean()
    return (1 - dice_weight) * ce + dice_weight * dice
