"""Which weights of a foundation model a fine-tuning method trains: LoRA adapters (peft) on the
modules the model registry names for its family, or the whole image tower."""

from __future__ import annotations

import re
from typing import Any

import torch

from fmcache.embed.registry import LORA_TARGETS
from fmcache.embed.spec import Encoder
from fmcache.errors import FmcacheError

DEFAULT_RANK = 8  # peft's default rank, which the benchmark's LoRA configuration leaves as it is
_NORMS = (torch.nn.modules.batchnorm._BatchNorm,)


def add_lora(enc: Encoder, rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0) -> list[str]:
    """Inject LoRA adapters into ``enc.module`` in place and freeze everything else.

    Returns the adapted modules' names. ``alpha`` defaults to ``rank`` (a scale of 1).
    FmcacheError when the family declares no targets or none of its modules matches.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise FmcacheError(f"LoRA rank must be at least 1 (got {rank})")
    pattern = LORA_TARGETS.get(enc.spec.family)
    if pattern is None:
        raise FmcacheError(f"{enc.spec.key!r} ({enc.spec.family}) has no LoRA targets; fine-tune it with --method full")
    names = [n for n, _ in enc.module.named_modules() if re.fullmatch(pattern, n)]
    if not names:
        raise FmcacheError(f"{enc.spec.key!r}: no module matches its family's LoRA targets ({pattern}); "
                           "these weights are not the architecture the registry describes")
    for p in enc.module.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=pattern, bias="none")
    try:
        inject_adapter_in_model(config, enc.module)
    except (ValueError, TypeError) as e:
        raise FmcacheError(f"peft cannot add LoRA to {enc.spec.key!r}'s modules ({e}); use --method full") from None
    for n, p in enc.module.named_parameters():
        p.requires_grad_("lora_" in n)
    return names


def unfreeze_image_tower(enc: Encoder, example: torch.Tensor, kind: str = "image") -> int:
    """Full fine-tuning: make every parameter the ``kind`` features depend on trainable, and
    only those (a VLM's text tower stays frozen). Returns how many tensors that is.

    Which parameters those are is read off one backward pass on ``example``, so it holds for
    every family without a table of tower prefixes.
    """
    params = dict(enc.module.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    was = enc.module.training
    enc.module.eval()  # no running statistics move for the probe pass
    with torch.enable_grad():
        out = enc.image_forward(example)
        out[kind].float().sum().backward()
    enc.module.train(was)
    used = 0
    for p in params.values():
        p.requires_grad_(p.grad is not None)
        used += p.grad is not None
        p.grad = None
    return used


def freeze_statistics(module: torch.nn.Module) -> None:
    """Batch-norm layers whose weights are frozen keep their running statistics (train mode
    would update them): under LoRA the frozen backbone stays exactly the pretrained one."""
    for m in module.modules():
        if isinstance(m, _NORMS) and not any(p.requires_grad for p in m.parameters(recurse=False)):
            m.eval()


def trained_statistics(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Running statistics of batch-norm layers that are trained (full fine-tuning): they change
    with the weights, so checkpoints keep them too."""
    out: dict[str, Any] = {}
    for name, m in module.named_modules():
        if isinstance(m, _NORMS) and any(p.requires_grad for p in m.parameters(recurse=False)):
            out.update({f"{name}.{b}": t for b, t in m.named_buffers(recurse=False) if t is not None})
    return out
