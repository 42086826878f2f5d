"""What the fine-tuning loop needs from a method: one small protocol every method fills in.

A task owns its model and its data; the loop (:mod:`fmcache.finetune.loop`) owns the
optimiser, the schedule, mixed precision, accumulation, checkpoints and early stopping, and
treats a LoRA classifier and SAMed alike.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch.utils.data import Dataset as TorchDataset

Batch = dict[str, torch.Tensor]  # a collated batch: images "x" and whatever the task's items carry
State = dict[str, torch.Tensor]  # a loss's running state (GroupDRO's group weights), checkpointed with the weights


class Task(Protocol):
    """A fine-tuning method bound to a model and a dataset.

    Attributes
    ----------
    method : the method's name as runs record it (``lora``, ``lora+groupdro``, ``samed+febs``, ...).
    model : every module of the method. Its parameters with ``requires_grad`` are the ones
        trained, and the only ones a checkpoint holds; the rest stay bit-identical.
    """

    method: str
    model: torch.nn.Module

    def items(self, split: str, *, train: bool) -> TorchDataset:
        """The split's items, each a dict of tensors (``x`` the model input); ``train`` adds the
        training augmentations."""
        ...

    def init_state(self) -> State:
        """The loss's state before the first step ({} for a loss without one)."""
        ...

    def loss(self, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        """Scalar loss of a training batch (model in train mode) and the state after it;
        the state is not differentiated."""
        ...

    def predict(self, batch: Batch) -> torch.Tensor:
        """Eval-mode outputs of a batch, one row per item (scores, or masks' logits)."""
        ...

    def score(self, split: str, outputs: torch.Tensor) -> float:
        """The validation criterion of a split's concatenated outputs; higher is better.
        It selects the epoch kept and drives early stopping."""
        ...

    def describe(self) -> dict[str, Any]:
        """The method's settings, for the run's config."""
        ...
