"""transformers ``CLIPModel`` (PubMedCLIP's transformers release), plus the hub/folder plumbing
that the transformers-based loaders share.

A weights source is an ``hf-hub:`` repository or a local ``save_pretrained`` folder
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` + processor/tokenizer files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import HUB_PREFIX, hub_file, hub_snapshot, hub_weights_id, local_path, sha256_file
from fmcache.errors import ModelError

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
_SMALL_FILES = ["*.json", "*.txt"]  # config, processor and tokenizer files


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    from transformers import AutoTokenizer, CLIPModel

    folder, ckpt, weights_id = resolve_folder(spec, weights or spec.weights)
    model = from_pretrained_strict(CLIPModel, folder, ckpt, spec).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of {spec.key!r} from {folder}: {e}") from None
    cfg = model.config
    dims = {"image": int(cfg.vision_config.hidden_size), "image_proj": int(cfg.projection_dim)}
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model),
        dims=dims,
        weights_id=weights_id,
        weights_sha256=sha256_file(ckpt),
        encode_text=_text_encoder(model, tokenizer, int(cfg.text_config.max_position_embeddings), device),
        text_dim=dims["image_proj"],
        logit_scale=float(model.logit_scale.detach().exp()),
    )


def _image_encoder(model: Any) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # pooler_output = post_layernorm(CLS), the input of visual_projection
        pre = model.vision_model(pixel_values=x).pooler_output
        return {"image": pre, "image_proj": model.visual_projection(pre)}

    return encode_image


def _text_encoder(model: Any, tokenizer: Any, context: int, device: str) -> Callable[[list[str]], torch.Tensor]:
    @torch.inference_mode()
    def encode_text(prompts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            list(prompts), padding=True, truncation=True, max_length=context, return_tensors="pt"
        ).to(device)
        # transformers 5 returns a model output whose pooler_output is the projected embedding
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(emb, dim=-1)

    return encode_text


# ---- shared by the transformers loaders --------------------------------------------------------


def resolve_folder(spec: ModelSpec, source: str) -> tuple[Path, Path, str]:
    """(``save_pretrained`` folder, its weights file, readable identity) for a weights source."""
    if source.startswith(HUB_PREFIX):
        repo = source[len(HUB_PREFIX):].strip("/")
        hub_snapshot(repo, _SMALL_FILES, spec.key)
        ckpt = hub_file(repo, WEIGHTS_NAMES, spec.key)
        return ckpt.parent, ckpt, hub_weights_id(repo, ckpt)
    p = local_path(source, spec.key)
    if p.is_file():
        p = p.parent  # a weights file inside a save_pretrained folder
    ckpt = next((p / n for n in WEIGHTS_NAMES if (p / n).is_file()), None)
    if ckpt is None or not (p / "config.json").is_file():
        raise ModelError(
            f"folder {p} given as weights for {spec.key!r} is not a transformers save_pretrained folder "
            f"(it needs config.json and one of {', '.join(WEIGHTS_NAMES)})"
        )
    return p, ckpt, f"{p.name}/{ckpt.name}"


def from_pretrained_strict(cls: Any, folder: Path, ckpt: Path, spec: ModelSpec) -> torch.nn.Module:
    """``cls.from_pretrained(folder)`` that fails on any key mismatch instead of warning.

    Nothing here runs code from the folder, so the loaders' ``trust_code`` has no say: the class
    is fixed (no ``auto_map`` custom code) and a ``pytorch_model.bin`` is read with
    ``weights_only=True``, which refuses TorchScript archives and pickled objects.
    """
    from fmcache.embed.weights import key_mismatch

    try:
        model, info = cls.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, dtype=torch.float32, weights_only=True
        )
    except Exception as e:  # corrupt file, bad config, shape mismatch: all surface here
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot load {spec.key!r} from {ckpt} (is the file truncated or corrupt?): {first}") from None
    # legacy position_ids buffers of older transformers are harmless (now non-persistent)
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith("position_ids")]
    err = key_mismatch(spec.key, ckpt, list(info.get("missing_keys", ())), unexpected)
    if err is not None:
        raise err
    if info.get("mismatched_keys") or info.get("error_msgs"):
        raise ModelError(
            f"weights {ckpt} do not match the architecture of {spec.key!r}: "
            f"{list(info.get('mismatched_keys') or info.get('error_msgs'))[:5]}"
        )
    return model
