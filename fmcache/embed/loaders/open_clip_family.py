"""open_clip models: OpenAI CLIP (built-in config or OpenAI-format file) and hub-folder models (BiomedCLIP).

A weights source is an ``hf-hub:`` repository or a local folder laid out like one
(``open_clip_config.json`` + weights + tokenizer files), or, for OpenAI CLIP, a single
OpenAI-format state-dict file (plain, ``{"state_dict": ...}``-nested, or, with ``trust_code``,
TorchScript).
The architecture is built from the config without weights, then the state dict is loaded
strictly here, so a mismatch is an error rather than an open_clip warning.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

import torch

from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import (
    HUB_PREFIX,
    hub_file,
    hub_snapshot,
    hub_weights_id,
    hub_offline,
    key_mismatch,
    local_path,
    read_state_dict,
    sha256_file,
)
from fmcache.errors import ModelError

CONFIG_NAME = "open_clip_config.json"
# open_clip's own preference among the weights files of a hub folder
CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
_SMALL_FILES = ["*.json", "*.txt"]  # config and tokenizer files
# entries of OpenAI's TorchScript archive that are not parameters
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    source = weights or spec.weights
    folder, ckpt, weights_id = _resolve(spec, source)
    sd = _unwrap(read_state_dict(ckpt, spec.key, trust_code=trust_code))
    if folder is not None:
        model_cfg = _folder_config(folder)
    else:
        model_cfg = _openai_config(sd, spec)
    model = _build(spec, model_cfg, folder)
    _load_strict(model, sd, spec, ckpt)
    model = model.to(device).eval()
    tokenizer = _tokenizer(spec, model_cfg, folder)
    text_dim = int(model_cfg["embed_dim"])
    encode_image, dims = _image_encoder(model, spec, text_dim)
    return Encoder(
        spec=spec,
        module=model,
        encode_image=encode_image,
        dims=dims,
        weights_id=weights_id,
        weights_sha256=sha256_file(ckpt),
        encode_text=_text_encoder(model, tokenizer, device),
        text_dim=text_dim,
        logit_scale=float(model.logit_scale.detach().exp()),
    )


# ---- where the files are ------------------------------------------------------------------


def _resolve(spec: ModelSpec, source: str) -> tuple[Path | None, Path, str]:
    """(config folder or None for an OpenAI file, weights file, readable identity)."""
    if source.startswith(HUB_PREFIX):
        repo = source[len(HUB_PREFIX):].strip("/")
        cfg = hub_file(repo, (CONFIG_NAME,), spec.key)
        hub_snapshot(repo, _SMALL_FILES, spec.key)  # tokenizer files land beside the config
        ckpt = hub_file(repo, CHECKPOINT_NAMES, spec.key)
        return cfg.parent, ckpt, hub_weights_id(repo, ckpt)
    src = source[len("local-dir:"):] if source.startswith("local-dir:") else source
    p = local_path(src, spec.key)
    if p.is_dir():
        if not (p / CONFIG_NAME).is_file():
            raise ModelError(
                f"folder {p} given as weights for {spec.key!r} has no {CONFIG_NAME}; it must be laid out "
                f"like the hub repository ({spec.weights})"
            )
        ckpt = next((p / n for n in CHECKPOINT_NAMES if (p / n).is_file()), None)
        if ckpt is None:
            raise ModelError(
                f"folder {p} given as weights for {spec.key!r} holds no weights file (one of "
                f"{', '.join(CHECKPOINT_NAMES)})"
            )
        return p, ckpt, f"{p.name}/{ckpt.name}"
    return None, p, p.name


def _folder_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        return cfg["model_cfg"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{folder / CONFIG_NAME} is not a valid open_clip config ({e})") from None


# ---- the state dict -------------------------------------------------------------------------


def _unwrap(sd: Any) -> dict[str, torch.Tensor]:
    # PubMedCLIP-style training checkpoints nest the model under "state_dict", DDP adds "module."
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelError(f"weights file holds a {type(sd).__name__}, not a state dict")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    for k in _OPENAI_EXTRAS:
        sd.pop(k, None)
    return sd


def _openai_config(sd: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, Any]:
    """The model config of an OpenAI-format ViT CLIP state dict, read off its shapes.

    Falls back to the entry's built-in architecture when keys are absent, so the strict load
    can then report which keys are wrong.
    """
    try:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = sd["ln_final.weight"].shape[0]
        return {
            "embed_dim": sd["text_projection"].shape[1],
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": patch * grid,
                "patch_size": patch,
                "width": width,
                "layers": _count_blocks(sd, "visual.transformer.resblocks."),
                "head_width": 64,  # head counts are not in the state dict; OpenAI used width / 64
            },
            "text_cfg": {
                "context_length": sd["positional_embedding"].shape[0],
                "vocab_size": sd["token_embedding.weight"].shape[0],
                "width": text_width,
                "heads": max(1, text_width // 64),
                "layers": _count_blocks(sd, "transformer.resblocks."),
            },
        }
    except KeyError:
        import open_clip

        arch = spec.config.get("arch")
        cfg = open_clip.get_model_config(arch) if arch else None
        if cfg is None:
            raise ModelError(f"weights for {spec.key!r} are not an OpenAI-format CLIP state dict") from None
        return cfg


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], spec: ModelSpec, ckpt: Path) -> None:
    from open_clip.model import convert_to_custom_text_state_dict

    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)  # old flat text keys of a custom-text model
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    own = model.state_dict()
    # buffers the model computes itself (a TorchScript archive saves them anyway)
    computed = {name for name, _ in model.named_buffers()} - set(own)
    for k in list(sd):
        # also legacy position_ids buffers of old transformers (now non-persistent), and the BERT
        # pooler that older BiomedCLIP-style files carry but the CLS pooler never uses
        if k not in own and (
            k in computed or k.endswith(".position_ids") or k.startswith("text.transformer.pooler.")
        ):
            del sd[k]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    err = key_mismatch(spec.key, ckpt, missing, unexpected)
    if err is not None:
        raise err
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # shapes that differ
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ModelError(f"weights {ckpt} do not match the architecture of {spec.key!r}: {detail}") from None


# ---- the model ----------------------------------------------------------------------------


def _build(spec: ModelSpec, model_cfg: dict[str, Any], folder: Path | None) -> torch.nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ModelError(f"{spec.key!r}: CoCa-style open_clip models are not supported")
    if spec.config.get("quick_gelu") is not None:
        cfg["quick_gelu"] = bool(spec.config["quick_gelu"])  # OpenAI weights need QuickGELU
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False  # weights come from our checkpoint
    custom = bool(cfg.pop("custom_text", False)) or "hf_model_name" in text
    if "hf_model_name" in text:
        text["hf_model_name"] = _text_config_source(text["hf_model_name"], folder, spec)
        text["hf_model_pretrained"] = False
    cfg.pop("custom_text", None)
    try:
        return (CustomTextCLIP if custom else CLIP)(**cfg)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot build the architecture of {spec.key!r} from its config: {e}") from None


def _text_config_source(name: str, folder: Path | None, spec: ModelSpec) -> str:
    """A place the text tower's ``AutoConfig`` can be read from without the network if need be.

    A local folder wins: ``name`` itself, ``name`` relative to the weights folder, or the
    weights folder when it holds a ``config.json``. Otherwise ``name`` is a hub repository,
    which must be reachable or already in the Hugging Face cache.
    """
    candidates = [Path(name).expanduser()]
    if folder is not None:
        candidates += [folder / name, folder]
    from transformers import AutoConfig

    for c in candidates:
        if (c / "config.json").is_file():
            try:
                AutoConfig.from_pretrained(str(c), trust_remote_code=False)
            except Exception as e:
                _refuse_custom_code(e, str(c), spec)
                # any other fault of the config surfaces when open_clip builds the tower
            return str(c)
    from fmcache.embed.weights import _hub_cache_dir

    try:
        AutoConfig.from_pretrained(
            name, cache_dir=_hub_cache_dir(), local_files_only=hub_offline(), trust_remote_code=False
        )
    except Exception as e:
        _refuse_custom_code(e, f"hf-hub:{name}", spec)
        why = "HF_HUB_OFFLINE is set and it is not cached" if hub_offline() else "the hub is unreachable"
        raise ModelError(
            f"the text tower of {spec.key!r} needs the config of hf-hub:{name}, which cannot be read "
            f"({why}); put that repository's config.json beside {CONFIG_NAME} in the weights folder "
            f"and pass --weights PATH"
        ) from None
    return name


def _refuse_custom_code(err: Exception, source: str, spec: ModelSpec) -> None:
    # open_clip builds the text tower with AutoConfig / AutoModel, which would offer to import
    # the Python modules a config's auto_map names; checked first with trust_remote_code=False
    if isinstance(err, ValueError) and "trust_remote_code" in str(err):
        raise ModelError(
            f"the text tower config of {spec.key!r} ({source}) names custom Python code (auto_map), which "
            f"fmcache never runs; use a config of a built-in transformers architecture"
        ) from None


def _tokenizer(spec: ModelSpec, model_cfg: dict[str, Any], folder: Path | None) -> Callable:
    import open_clip

    text = model_cfg.get("text_cfg", {})
    context = text.get("context_length") or spec.config.get("context_length")
    if "hf_tokenizer_name" in text or "hf_model_name" in text:
        if folder is None:
            raise ModelError(f"{spec.key!r}: a hugging-face text tower needs a weights folder with tokenizer files")
        # caller kwargs override the config's tokenizer_kwargs, which could ask for custom code
        no_code = {"trust_remote_code": False} if text.get("hf_tokenizer_name") else {}
        # the folder's own tokenizer files, so no hub lookup of the text model's repository
        try:
            return open_clip.get_tokenizer(f"local-dir:{folder}", context_length=context, **no_code)
        except Exception as e:
            raise ModelError(f"cannot load the tokenizer of {spec.key!r} from {folder}: {e}") from None
    return open_clip.SimpleTokenizer(context_length=context or 77)  # BPE vocab ships with open_clip


def _image_encoder(model: torch.nn.Module, spec: ModelSpec, embed_dim: int) -> tuple[Callable, dict[str, int]]:
    """``encode_image`` (pre- and post-projection features) and the widths of both."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    if isinstance(visual, TimmModel) and len(visual.head) and not hasattr(visual.head, "pool"):
        dims = {"image": int(visual.trunk.num_features), "image_proj": embed_dim}

        # trunk output = pooled CLS after the final norm; head = the projection to the joint space
        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pre = visual.trunk(x)
            return pre, visual.head(pre)

    elif isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.proj is not None:
        dims = {"image": int(visual.proj.shape[0]), "image_proj": int(visual.proj.shape[1])}

        # VisionTransformer.forward with the projection held back: ln_post(CLS), then @ proj
        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pre, _ = visual._pool(visual.transformer(visual._embeds(x)))
            return pre, pre @ visual.proj

    else:
        raise ModelError(f"{spec.key!r}: unsupported open_clip image tower {type(visual).__name__}")

    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        pre, post = split(x)
        return {"image": pre, "image_proj": post}

    return encode_image, dims


def _text_encoder(model: torch.nn.Module, tokenizer: Callable, device: str) -> Callable[[list[str]], torch.Tensor]:
    @torch.inference_mode()
    def encode_text(prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(list(prompts)).to(device)
        return model.encode_text(tokens, normalize=True)

    return encode_text
