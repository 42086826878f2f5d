"""transformers BLIP-2 Q-Former (``Blip2ForImageTextRetrieval``, the layout of
``Salesforce/blip2-itm-vit-g``), from a hub repository or a local ``save_pretrained`` folder.

The image passes the ViT (its output after the final LayerNorm is LAVIS's ``ln_vision``
output), then the Q-Former's learned query tokens cross-attend to it: one 768-wide output
per query (32 in the release) and their L2-normalised 256-wide projections. By default the
cache holds one vector per image, so the queries are pooled by their mean, for both kinds
(``--queries reference`` keeps query 0 and every projection instead, as FairMedFM does):

- ``image``: mean of the Q-Former query outputs. LAVIS / FairMedFM took query 0 alone, but the
  queries are an unordered set of learned slots with no CLS role, so any single one is an
  arbitrary pick; the mean keeps what all of them extracted.
- ``image_proj``: mean of the per-query unit vectors. BLIP-2's contrastive score takes the
  *maximum* over queries of the query-text cosine, which no fixed vector can reproduce; with
  the mean, the dot product with a unit text embedding is exactly the mean of the per-query
  cosines, the linear stand-in for that maximum (the vector itself is not unit norm).

Text prototypes are the contrastive text embeddings: the Q-Former run on the text alone,
CLS token, ``text_projection``, L2-normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from fmcache.embed.loaders.hf_clip import from_pretrained_strict, resolve_folder
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import sha256_file
from fmcache.errors import ModelError


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    from transformers import Blip2ForImageTextRetrieval

    folder, ckpt, weights_id = resolve_folder(spec, weights or spec.weights)
    model = from_pretrained_strict(Blip2ForImageTextRetrieval, folder, ckpt, spec).to(device).eval()
    cfg = model.config
    # without text input the Q-Former's layers lack the text feed-forward: an image-only release
    text = bool(cfg.qformer_config.use_qformer_text_input)
    context = int(cfg.qformer_config.max_position_embeddings)
    encode_text = _text_encoder(model, _tokenizer(folder, spec), context, device) if text else None
    proj_dim = int(cfg.image_text_hidden_size)
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model),
        encode_queries=_query_encoder(model),
        n_queries=int(model.query_tokens.shape[1]),
        dims={"image": int(cfg.qformer_config.hidden_size), "image_proj": proj_dim},
        weights_id=weights_id,
        weights_sha256=sha256_file(ckpt),
        encode_text=encode_text,
        text_dim=proj_dim if text else None,
        logit_scale=None,  # the transformers port drops BLIP-2's learned temperature
    )


def _tokenizer(folder: Path, spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of {spec.key!r} from {folder}: {e}") from None


def query_outputs(model: Any, x: torch.Tensor) -> torch.Tensor:
    """The Q-Former's per-query outputs (B, queries, hidden) for a normalised image batch.

    Parameters
    ----------
    model
        A ``Blip2ForImageTextRetrieval`` (or any BLIP-2 class with ``vision_model``,
        ``query_tokens`` and ``qformer``).
    x
        Normalised images (B, 3, H, W).
    """
    size = model.config.vision_config.image_size
    image = model.vision_model(
        pixel_values=x, interpolate_pos_encoding=tuple(x.shape[-2:]) != (size, size)
    ).last_hidden_state
    queries = model.query_tokens.expand(image.shape[0], -1, -1)
    mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
    out = model.qformer(query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=mask)
    return out.last_hidden_state


def _query_encoder(model: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    def encode_queries(x: torch.Tensor) -> dict[str, torch.Tensor]:
        q = query_outputs(model, x)
        proj = torch.nn.functional.normalize(model.vision_projection(q.to(model.vision_projection.weight.dtype)), dim=-1)
        return {"image": q, "image_proj": proj}

    return encode_queries


def _image_encoder(model: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    per_query = _query_encoder(model)

    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.mean(dim=1) for k, v in per_query(x).items()}

    return encode_image


def _text_encoder(model: Any, tokenizer: Any, context: int, device: str) -> Callable[[list[str]], torch.Tensor]:
    @torch.inference_mode()
    def encode_text(prompts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            list(prompts), padding=True, truncation=True, max_length=context, return_tensors="pt"
        ).to(device)
        # Blip2ForImageTextRetrieval's contrastive branch: text-only Q-Former pass, CLS token
        hidden = model.qformer(
            query_embeds=model.embeddings(input_ids=batch["input_ids"]),
            query_length=0,
            attention_mask=batch["attention_mask"],
        ).last_hidden_state
        emb = model.text_projection(hidden[:, 0, :].to(model.text_projection.weight.dtype))
        return torch.nn.functional.normalize(emb, dim=-1)

    return encode_text
