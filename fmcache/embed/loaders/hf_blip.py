"""transformers BLIP: ``BlipForImageTextRetrieval`` (the Salesforce retrieval checkpoints) or
``BlipModel``, from a hub repository or a local ``save_pretrained`` folder.

Image features are the vision tower's CLS token after its final LayerNorm (``image``, the
feature LAVIS's ``extract_features`` returns as ``image_embeds[:, 0]``) and its projection into
the image-text contrastive space (``image_proj``). Text prototypes are the contrastive (ITC)
text embeddings: the text encoder run without the image, CLS token, projected, L2-normalised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from fmcache.embed.loaders.hf_clip import from_pretrained_strict, resolve_folder
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import sha256_file
from fmcache.errors import ModelError

# architectures whose image-text projections we know how to read
_ARCHITECTURES = ("BlipForImageTextRetrieval", "BlipModel")


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    import transformers

    folder, ckpt, weights_id = resolve_folder(spec, weights or spec.weights)
    arch = _architecture(folder, spec)
    model = from_pretrained_strict(getattr(transformers, arch), folder, ckpt, spec).to(device).eval()
    tokenizer = _tokenizer(folder, spec)
    cfg = model.config
    retrieval = arch == "BlipForImageTextRetrieval"
    proj_dim = int(cfg.image_text_hidden_size if retrieval else cfg.projection_dim)
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model, retrieval),
        dims={"image": int(cfg.vision_config.hidden_size), "image_proj": proj_dim},
        weights_id=weights_id,
        weights_sha256=sha256_file(ckpt),
        encode_text=_text_encoder(model, retrieval, tokenizer, int(cfg.text_config.max_position_embeddings), device),
        text_dim=proj_dim,
        # the retrieval class drops BLIP's learned temperature; BlipModel keeps a CLIP-style one
        logit_scale=None if retrieval else float(model.logit_scale.detach().exp()),
    )


def _architecture(folder: Path, spec: ModelSpec) -> str:
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder / 'config.json'} is not a valid transformers config ({e})") from None
    for a in archs:
        if a in _ARCHITECTURES:
            return a
    raise ModelError(
        f"weights of {spec.key!r} in {folder} are a {', '.join(archs) or 'unnamed'} checkpoint; fmcache reads "
        f"BLIP's image-text embeddings from {' or '.join(_ARCHITECTURES)} checkpoints only"
    )


def _tokenizer(folder: Path, spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of {spec.key!r} from {folder}: {e}") from None


def _image_encoder(model: Any, retrieval: bool) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    size = model.config.vision_config.image_size

    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # position embeddings are resampled only when the input differs from the trained size
        out = model.vision_model(pixel_values=x, interpolate_pos_encoding=tuple(x.shape[-2:]) != (size, size))
        # CLS after post_layernorm, as the retrieval heads use it; pooler_output applies that
        # norm a second time
        cls = out.last_hidden_state[:, 0, :]
        if retrieval:
            return {"image": cls, "image_proj": model.vision_proj(cls)}
        return {"image": cls, "image_proj": model.visual_projection(out.pooler_output)}

    return encode_image


def _text_encoder(model: Any, retrieval: bool, tokenizer: Any, context: int, device: str) -> Callable:
    @torch.inference_mode()
    def encode_text(prompts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            list(prompts), padding=True, truncation=True, max_length=context, return_tensors="pt"
        ).to(device)
        if retrieval:
            # BlipForImageTextRetrieval's contrastive branch (use_itm_head=False): unimodal text CLS
            hidden = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            emb = model.text_proj(hidden.last_hidden_state[:, 0, :])
        else:
            emb = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
        return torch.nn.functional.normalize(emb, dim=-1)

    return encode_text
