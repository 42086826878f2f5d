"""The model registry: a plain dict of :class:`ModelSpec` entries and one loader per family."""

from __future__ import annotations

import importlib

from fmcache.embed.models import MODELS
from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.errors import UnknownNameError, did_you_mean

# family -> module in fmcache.embed.loaders exposing `load(spec, weights, device, *, trust_code) -> Encoder`
FAMILIES = {
    "open_clip": "open_clip_family",
    "hf_clip": "hf_clip",
    "hf_dinov2": "hf_dinov2",
    "efficientnet_lite": "efficientnet_lite",
    "timm_vit_mae": "timm_vit_mae",
    "sam_vit": "sam_vit",
    "torchvision_resnet": "torchvision_resnet",
    "hf_blip": "hf_blip",
    "hf_blip2": "hf_blip2",
    "medclip": "medclip",
}

# family -> the modules LoRA adapts (a regular expression peft matches against the whole module
# name), or why the family takes none. Attention projections of the image tower, as the
# benchmark's configurations name them (``qkv``; query / key / value where they are separate);
# the CNNs take their convolutions, which peft adapts as well.
LORA_TARGETS: dict[str, str] = {
    # open_clip's own ViT (CLIP) keeps q, k and v inside nn.MultiheadAttention, which peft adapts by
    # adding the update to the frozen weights before every forward and subtracting it after: the frozen
    # weights would drift in their last bits. There the MLP's linear layers take the adapters; a timm
    # trunk (BiomedCLIP) has a plain qkv layer.
    "open_clip": r"visual\.(transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)|trunk\.blocks\.\d+\.attn\.qkv)",
    "hf_clip": r"vision_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)",
    "hf_dinov2": r"encoder\.layer\.\d+\.attention\.(attention\.)?(q_proj|k_proj|v_proj|query|key|value)",
    "timm_vit_mae": r"blocks\.\d+\.attn\.qkv",
    "sam_vit": r"blocks\.\d+\.attn\.qkv",
    "hf_blip": r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv",
    "hf_blip2": r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv",
    "medclip": r"vision_model\.model\.encoder\.layers\.\d+\.blocks\.\d+\.attention\.(q_proj|k_proj|v_proj|query|key|value)",
    "torchvision_resnet": r"layer\d\.\d+\.conv\d",
    # the 1 x 1 convolutions hold nearly all of an EfficientNet's weights; the depthwise ones stay frozen
    "efficientnet_lite": r"(blocks\.\d+\.\d+\.conv_(pw|pwl)|conv_head)",
}


def get_model(key: str) -> ModelSpec:
    try:
        return MODELS[key]
    except KeyError:
        listed = [k for k, m in MODELS.items() if not m.hidden]
        raise UnknownNameError(
            f"unknown model {key!r}{did_you_mean(key, listed)}; `fmcache models` lists them"
        ) from None


def load_model(
    key: str | ModelSpec, weights: str | None = None, device: str = "cpu", *, trust_code: bool = False
) -> Encoder:
    """Load a registered model for inference.

    Parameters
    ----------
    key
        Registry key (``fmcache models``) or a :class:`ModelSpec`.
    weights
        Override of the entry's weights source: a local file or folder, or ``hf-hub:<repo>``.
    device
        torch device string.
    trust_code
        Also load weights files whose loading runs code they carry (TorchScript archives, such
        as OpenAI's CLIP ``.pt`` releases). Only for files from a source you trust.
    """
    spec = key if isinstance(key, ModelSpec) else get_model(key)
    module = importlib.import_module(f"fmcache.embed.loaders.{FAMILIES[spec.family]}")
    enc = module.load(spec, weights, device, trust_code=trust_code)
    enc.module.eval()
    return enc
