"""Text prototypes of a vision-language model: one embedding per (class, template)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from fmcache.datasets.spec import PromptSet
from fmcache.embed.spec import Encoder


def encode_prompt_sets(enc: Encoder, prompt_sets: Mapping[str, PromptSet]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """For each prompt set: (C classes, T templates, D) unit-norm embeddings and the prompts used."""
    assert enc.encode_text is not None
    out = {}
    with torch.inference_mode():
        for name, ps in prompt_sets.items():
            prompts = [t.format(c) for c in ps.classes for t in ps.templates]
            emb = enc.encode_text(prompts).float().cpu().numpy()
            protos = emb.reshape(len(ps.classes), len(ps.templates), -1)
            out[name] = (protos, {"templates": list(ps.templates), "classes": list(ps.classes), "label": ps.label})
    return out
