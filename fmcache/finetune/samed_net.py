"""SAMed's network: a SAM whose image encoder carries LoRA and whose mask decoder segments
every class at once, without prompts.

- Image encoder: LoRA (peft) on every attention ``qkv`` projection, alpha = rank (SAMed's
  adapters add B A x unscaled); all its other weights frozen. SAMed adapts the query and value
  parts of ``qkv`` only; peft's adapter covers the whole projection (keys too).
- Prompt encoder: frozen; only its no-prompt embeddings are used (no points, no boxes, the
  no-mask dense embedding).
- Mask decoder: trained in full, built with ``n_classes + 1`` mask tokens (background, then one
  per class) and every token's mask returned. Its transformer, upscaling and IoU token are the
  pretrained ones; mask token i and its hypernetwork MLP are copies of pretrained token
  ``i mod k`` (k = 4 in SAM: the single-mask token, then the three multimask ones), so classes
  beyond the fourth start from repeated tokens and only training tells them apart. SAMed itself
  initialises these tokens, MLPs and the IoU head at random. The IoU head is not in the loss
  and stays frozen.
- ``n_decoders > 1`` (domain-independent training): one such decoder per group, each a copy of
  the same initial decoder.

The frozen weights are shared with the caller's ``Sam`` (its modules are copied, not its
tensors), so the adapters are injected without changing the caller's model and a ViT-H costs
no second copy of its weights. Those shared tensors have ``requires_grad`` turned off, which
inference through the caller's model never looks at.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fmcache.errors import ModelError

# one image per prompt, as the prompt sweep decodes (segment_anything's own would pair every image with every prompt)
from fmcache.segment.sam import _predict_masks


class SamedNet(nn.Module):
    """SAMed around a ``segment_anything`` ``Sam``: ``forward(x, g)`` gives low-res logits.

    Parameters
    ----------
    sam
        The pretrained ``Sam`` (left unchanged, its weights shared and frozen).
    n_classes
        Foreground classes; the output has ``n_classes + 1`` channels, channel 0 background.
    rank
        LoRA rank (alpha = rank).
    n_decoders
        1, or the number of groups for group-specific decoders.
    """

    def __init__(self, sam: nn.Module, n_classes: int, rank: int = 4, n_decoders: int = 1):
        super().__init__()
        self.image_encoder = lora_encoder(sam.image_encoder, rank)
        self.prompt_encoder = _shared_copy(sam.prompt_encoder).requires_grad_(False)
        first = class_decoder(sam.mask_decoder, n_classes)
        self.decoders = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(n_decoders - 1)])
        self.n_channels = n_classes + 1

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_classes + 1, 4 grid, 4 grid) logits of inputs ``x`` (B, 3, S, S).

        With several decoders, item i goes through decoder ``g[i]``; an item of unknown group
        (-1, or no ``g``) gets the log of the decoders' mean probabilities, which are logits of
        that mixture.
        """
        feats = self.image_encoder(x)
        if len(self.decoders) == 1:
            return self._decode(self.decoders[0], feats)
        g = torch.full((len(x),), -1, device=x.device) if g is None else g.to(x.device)
        out = torch.empty((len(x), self.n_channels, *self._low_res(feats)), device=feats.device, dtype=feats.dtype)
        for d, decoder in enumerate(self.decoders):
            mine = g == d
            if bool(mine.any()):
                out[mine] = self._decode(decoder, feats[mine])
        unknown = (g < 0) | (g >= len(self.decoders))
        if bool(unknown.any()):
            probs = torch.stack([torch.softmax(self._decode(dec, feats[unknown]), 1) for dec in self.decoders])
            out[unknown] = probs.mean(0).clamp(min=torch.finfo(probs.dtype).tiny).log()
        return out

    def _decode(self, decoder: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        b = feats.shape[0]
        # the no-prompt embeddings come with a batch of one; each image gets its own copy
        logits, _ = _predict_masks(decoder, feats, self.prompt_encoder.get_dense_pe(), sparse.expand(b, -1, -1),
                                   dense.expand(b, -1, -1, -1))
        return logits

    @staticmethod
    def _low_res(feats: torch.Tensor) -> tuple[int, int]:
        return 4 * feats.shape[-2], 4 * feats.shape[-1]  # the decoder upscales its grid 4x


def lora_encoder(encoder: nn.Module, rank: int) -> nn.Module:
    """A copy of ``encoder`` sharing its weights, with peft LoRA adapters on every ``qkv``
    linear layer; only the adapters require gradients."""
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(rank, int) or rank < 1:
        raise ModelError(f"LoRA rank {rank!r}: give a whole number >= 1 (SAMed's default: 4)")
    out = _shared_copy(encoder)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=["qkv"], bias="none")
    try:
        out = inject_adapter_in_model(config, out)
    except ValueError as e:  # peft: no module matched the target
        raise ModelError(f"the image encoder {type(encoder).__name__} has no attention 'qkv' layer for "
                         f"SAMed's LoRA ({e})") from None
    for name, p in out.named_parameters():
        p.requires_grad_("lora_" in name)
    return out


def class_decoder(pretrained: nn.Module, n_classes: int) -> nn.Module:
    """A trainable copy of SAM's ``MaskDecoder`` with ``n_classes + 1`` mask tokens, token and
    hypernetwork MLP i copied from pretrained ``i mod k``; the IoU head (not trained) frozen."""
    if n_classes < 1:
        raise ModelError(f"SAMed needs at least one foreground class, got {n_classes}")
    k, n = pretrained.num_mask_tokens, n_classes + 1
    pick = [i % k for i in range(n)]
    dec = copy.deepcopy(pretrained)
    dec.num_multimask_outputs, dec.num_mask_tokens = n_classes, n
    dec.mask_tokens = nn.Embedding(n, pretrained.mask_tokens.embedding_dim)
    head = dec.iou_prediction_head.layers
    last = nn.Linear(head[-1].in_features, n)
    with torch.no_grad():
        dec.mask_tokens.weight.copy_(pretrained.mask_tokens.weight[pick])
        last.weight.copy_(head[-1].weight[pick])
        last.bias.copy_(head[-1].bias[pick])
    dec.output_hypernetworks_mlps = nn.ModuleList(copy.deepcopy(pretrained.output_hypernetworks_mlps[i])
                                                  for i in pick)
    head[-1] = last
    dec.to(pretrained.mask_tokens.weight.device)
    dec.requires_grad_(True)
    dec.iou_prediction_head.requires_grad_(False)
    return dec


def _shared_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers are the original's tensors."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)
