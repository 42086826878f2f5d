"""transformers ``Dinov2Model`` from a hub repository or a local ``save_pretrained`` folder."""

from __future__ import annotations

from typing import Any, Callable

import torch

from fmcache.embed.loaders.hf_clip import from_pretrained_strict, resolve_folder
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import sha256_file


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    from transformers import Dinov2Model

    folder, ckpt, weights_id = resolve_folder(spec, weights or spec.weights)
    model = from_pretrained_strict(Dinov2Model, folder, ckpt, spec).to(device).eval()
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model),
        dims={"image": int(model.config.hidden_size)},
        weights_id=weights_id,
        weights_sha256=sha256_file(ckpt),
    )


def _image_encoder(model: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # pooler_output = CLS after the final layernorm; position embeddings (trained at 518)
        # are interpolated to the input size by the model itself
        return {"image": model(pixel_values=x).pooler_output}

    return encode_image
