"""The bias mitigations, one entry each: the facts every stage that trains them shares.

The JAX heads on cached features (``fmcache.heads``) and the torch fine-tuning stage
(``fmcache.finetune.losses``) implement the same objective under the same name, with the
same hyperparameters and defaults; each entry states that objective once, in ``formula``.
This module is data only (neither torch nor JAX), so either stage, the CLI and the report
may read it.

Notation of the formulas: a batch row i has features x_i, label y_i, group g_i, task
weight m_i (1 where its label is known) and group weight gm_i (1 where its group is known
and m_i = 1); l_i is the row's cross-entropy (binary from one logit, softmax over classes
otherwise); N_{g,c} are the training rows per (group, label) cell (``cell_counts``),
counted before training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Mitigation:
    """One bias mitigation as every stage that trains it knows it.

    Attributes
    ----------
    name : registry key, the same for the JAX head type and the torch loss.
    hparams : the method's own hyperparameters and their defaults (beyond lr, weight_decay,
        seed, label, attribute); read-only.
    target_gap : the fairness gap (a metric name of ``fmcache.fairness``) the method is
        built to shrink.
    uses_groups : the loss needs the sensitive attribute; rows with an unknown group are
        left out of its group terms.
    formula : the objective, a few lines in the module's notation.
    needs_cell_counts : the loss (or the head's initialisation) reads ``cell_counts``, the
        (groups, classes) count of training rows.
    description : one line for listings.
    """

    name: str
    hparams: Mapping[str, float]
    target_gap: str
    uses_groups: bool
    formula: str
    needs_cell_counts: bool
    description: str = ""

    def __post_init__(self) -> None:
        # frozen all the way down: a caller mutating defaults would change them for every stage
        object.__setattr__(self, "hparams", MappingProxyType(dict(self.hparams)))


_LAFTR = (
    "z = relu(x W_e + b_e); E(A, z) = mean over non-empty cells k of mean_{i in k, gm_i = 1} "
    "(1 - softmax(A(z_i))[g_i]), A an MLP (one hidden ReLU layer of the encoder's width) over the groups;\n"
    "L = sum_i m_i l_i(clf(z)) / max(sum_i m_i, 1) - adv_coeff * E(sg(A), z) + E(A, sg(z)), sg = stop-gradient,\n"
    "so the adversary descends its error and the encoder + classifier ascend it; "
    "adv_steps = 0: both players move every step, r > 0: r adversary steps, then one main step.\n"
)

_PENALTY = (
    "p_i = sigmoid(f(x_i)); gap(w) = sum over groups h with sum_{g_i = h} w_i > 0 of "
    "|sum_{g_i = h} w_i p_i / sum_{g_i = h} w_i - sum_i w_i p_i / max(sum_i w_i, 1)|;\n"
)

_ENTRIES = (
    Mitigation(
        name="resample",
        hparams={"balance_label": 0.0},
        target_gap="auc_delta",
        uses_groups=True,
        needs_cell_counts=True,
        description="logistic regression with attribute groups (balance_label=1: group x label cells) reweighted to equal mass",
        formula=(
            "bins k: groups (balance_label = 0) or (group, label) cells (1); N_k training rows per bin, K non-empty bins;\n"
            "w_i = sum_k N_k / (K N_{k(i)}) (0 for an empty bin);\n"
            "L = sum_i gm_i w_i l_i / max(sum_i gm_i, 1): the expected loss of a sampler drawing rows "
            "with probability proportional to w, as a reweighting."
        ),
    ),
    Mitigation(
        name="groupdro",
        hparams={"dro_step": 0.01, "adj": 1.0, "cells": 1.0},
        target_gap="auc_delta",
        uses_groups=True,
        needs_cell_counts=True,
        description="logistic regression minimising the worst (group x label) cell's loss (GroupDRO)",
        formula=(
            "DRO groups k: cells g * C + y (cells = 1) or groups g (cells = 0); n_k their training rows;\n"
            "L_k = sum_{k(i) = k} gm_i l_i / max(sum_{k(i) = k} gm_i, 1); a_k = adj / sqrt(n_k) (0 where n_k = 0);\n"
            "q_k <- q_k exp(dro_step (L_k + a_k)) where n_k > 0, else 0; q <- q / sum q (the state carried on);\n"
            "L = sum_k sg(q_k) (L_k + a_k), with the updated q; q starts uniform over groups with n_k > 0."
        ),
    ),
    Mitigation(
        name="laftr",
        hparams={"adv_coeff": 1.0, "adv_steps": 0},
        target_gap="dp",
        uses_groups=True,
        needs_cell_counts=False,
        description="LAFTR: encoder + classifier against an MLP attribute adversary (dp: groups)",
        formula=_LAFTR + "dp: the cells are the groups.",
    ),
    Mitigation(
        name="laftr_eqodd",
        hparams={"adv_coeff": 1.0, "adv_steps": 0},
        target_gap="eqodds",
        uses_groups=True,
        needs_cell_counts=False,
        description="LAFTR: encoder + classifier against an MLP attribute adversary (eqodd: one adversary per label value)",
        formula=_LAFTR + "eqodd: the cells are (group, label); each label value has its own adversary, applied to its rows.",
    ),
    Mitigation(
        name="laftr_eqopp",
        hparams={"adv_coeff": 1.0, "adv_steps": 0, "eqopp_label": 0},
        target_gap="eqodds",
        uses_groups=True,
        needs_cell_counts=False,
        description="LAFTR: encoder + classifier against an MLP attribute adversary (eqopp: label-0 rows (eqopp_label))",
        formula=_LAFTR + "eqopp: the cells are the groups, among rows with y = eqopp_label only.",
    ),
    Mitigation(
        name="fairpenalty",
        hparams={"penalty": 1.0},
        target_gap="dp",
        uses_groups=True,
        needs_cell_counts=True,  # for the number of groups
        description="logistic regression + differentiable DP penalty",
        formula=_PENALTY + "L = sum_i m_i l_i / max(sum_i m_i, 1) + penalty * gap(gm)  (binary labels only).",
    ),
    Mitigation(
        name="fairpenalty_eo",
        hparams={"penalty": 1.0},
        target_gap="eqodds",
        uses_groups=True,
        needs_cell_counts=True,  # for the number of groups
        description="logistic regression + differentiable EO penalty",
        formula=_PENALTY + "L = sum_i m_i l_i / max(sum_i m_i, 1) + penalty * (gap(gm [y = 0]) + gap(gm [y = 1]))  (binary only).",
    ),
    Mitigation(
        name="domain_ind",
        hparams={},
        target_gap="auc_delta",
        uses_groups=True,
        # the cell counts mark which group slots have training rows
        needs_cell_counts=True,
        description="one logistic output set per group (domain-independent training)",
        formula=(
            "one output set f_h(x) = x W_h + b_h per group h; L = sum_i gm_i l_i(f_{g_i}(x_i)) / max(sum_i gm_i, 1);\n"
            "inference 'sum': the mean over trained groups (N_h > 0) of each group's class probabilities;\n"
            "'known': the row's own group's output where that group is known and trained, else 'sum'."
        ),
    ),
)

MITIGATIONS: Mapping[str, Mitigation] = MappingProxyType({m.name: m for m in _ENTRIES})
