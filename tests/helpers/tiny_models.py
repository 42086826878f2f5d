"""Tiny random-weight models saved in the same file formats as the real releases.

Each builder makes a seeded, narrow, two-layer model of the real architecture family, with
the real input size (224) and patch size so the real preprocessing applies, and writes it
the way the real weights are published (file names, key nesting, legacy keys); the ResNets
are torchvision's real ones. The ``direct_*`` functions compute the expected outputs by
calling the libraries (open_clip, transformers, timm, torchvision, segment-anything)
themselves, as an independent reference for the loaders; they keep the reference models
they build per weights path, so a checkpoint must not be rewritten in place between calls.
"""

from __future__ import annotations

import functools
import gzip
import json
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from fmcache.embed.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

HUB_KEYS = ("clip", "biomedclip", "pubmedclip", "dinov2")
# single-file training checkpoints that the user places in the weights directory
FILE_KEYS = ("medmae", "lvmmed", "lvmmed_r50", "mococxr", "c2l")
# vision-language releases with their own layouts (transformers folders, a zip)
VLM_KEYS = ("blip", "blip2", "medclip")
KEYS = HUB_KEYS + FILE_KEYS + VLM_KEYS
SEED = 0

# OpenAI-CLIP geometry; the state-dict format implies one head per 64 channels
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
# stands in for microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract: a hub id that is never fetched
TINY_BERT_NAME = "tiny-random/BiomedBERT-uncased"
_WORDS = (
    "a an the of in with without no and or photo image scan chest x ray xray ct mri normal "
    "abnormal pneumonia effusion edema lung heart left right healthy disease malignant benign "
    "lesion skin fundus retina glaucoma male female patient view"
).split()


def build_tiny_checkpoint(key: str, out_dir: Path) -> str:
    """Write a tiny model for registry ``key`` under ``out_dir``; return the ``weights=`` string."""
    out = Path(out_dir) / key
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    builders = {"clip": _clip, "biomedclip": _biomedclip, "pubmedclip": _pubmedclip, "dinov2": _dinov2}
    return {**builders, **FILE_BUILDERS, **VLM_BUILDERS}[key](out)


class Checkpoints(dict):
    """``weights=`` strings by registry key, each checkpoint built under ``root`` on first use."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = Path(root)

    def __missing__(self, key: str) -> str:
        self[key] = build_tiny_checkpoint(key, self.root)
        return self[key]


# ---- clip: the timm/vit_base_patch32_clip_224.openai hub folder, or an OpenAI state-dict file --


def _tiny_open_clip() -> torch.nn.Module:
    from open_clip.model import CLIP

    torch.manual_seed(SEED)
    model = CLIP(**deepcopy(TINY_CLIP_CFG))
    _perturb_norms(model)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(100.0)))
    return model.eval()


def _clip(out: Path) -> str:
    from safetensors.torch import save_file

    model = _tiny_open_clip()
    cfg = {
        "model_cfg": TINY_CLIP_CFG,
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return str(out)


def build_openai_clip_file(out_dir: Path, nested: bool = False) -> str:
    """The tiny CLIP as an OpenAI-format state-dict file (flat, or nested like PubMedCLIP's)."""
    from open_clip.model import convert_weights_to_fp16

    model = _tiny_open_clip()
    convert_weights_to_fp16(model)  # OpenAI's files (and clip.model.convert_weights) mix fp16 and fp32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if nested:
        sd = {f"module.{k}": v for k, v in model.state_dict().items()}
        obj = {"best_epoch": 3, "state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []},
               "best_loss": 0.5}
        path = out / "PubMedCLIP_ViT32.pth"
    else:
        sd = dict(model.state_dict())
        # the entries OpenAI's archive carries besides the parameters
        sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77),
                  vocab_size=torch.tensor(49408))
        obj, path = sd, out / "ViT-B-32.pt"
    torch.save(obj, path)
    return str(path)


# ---- biomedclip: open_clip hub folder with a timm ViT and a BERT text tower ----------------------


def _tiny_bert_vocab() -> list[str]:
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789-.,")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters], *_WORDS]


def _biomedclip(out: Path) -> str:
    from open_clip.model import CustomTextCLIP
    from transformers import BertConfig, BertTokenizer

    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(_tiny_bert_vocab()) + "\n")
    BertTokenizer(str(vocab), do_lower_case=True, model_max_length=256).save_pretrained(str(out))
    bert = BertConfig(vocab_size=len(_tiny_bert_vocab()), hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, pad_token_id=0)
    # the text config sits beside the open_clip files; the json names a hub id, like the release
    bert.save_pretrained(str(out))
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": TINY_BERT_NAME, "hf_tokenizer_name": TINY_BERT_NAME,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }
    cfg = {"model_cfg": model_cfg,
           "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(SEED)
    model = CustomTextCLIP(**_local_text_cfg(model_cfg, out))
    _perturb_norms(model)
    sd = dict(model.state_dict())
    sd["text.transformer.embeddings.position_ids"] = torch.arange(512)[None]  # legacy buffer
    torch.save(sd, out / "open_clip_pytorch_model.bin")
    return str(out)


def _local_text_cfg(model_cfg: dict, folder: Path) -> dict:
    cfg = deepcopy(model_cfg)
    cfg["text_cfg"].update(hf_model_name=str(folder), hf_model_pretrained=False)
    return cfg


# ---- pubmedclip: transformers CLIPModel save_pretrained folder with pytorch_model.bin -------------


def _tiny_bpe(out: Path, n_merges: int = 2000) -> tuple[Path, Path, int]:
    """vocab.json + merges.txt: the first merges of OpenAI's BPE, which ships with open_clip."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 1 + n_merges]
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out / "vocab.json", out / "merges.txt", len(vocab)


def _pubmedclip(out: Path) -> str:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab, merges, n = _tiny_bpe(out)
    tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    tok.save_pretrained(str(out))
    bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    cfg = CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=24,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(cfg).eval()
    _perturb_norms(model)
    model.config.save_pretrained(str(out))
    sd = dict(model.state_dict())
    # buffers that transformers < 4.31 saved and newer ones no longer register as persistent
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd["vision_model.embeddings.position_ids"] = torch.arange(50)[None]
    torch.save(sd, out / "pytorch_model.bin")  # the release has only the pickle format
    _processor_config(out, size=224, shortest_edge=224, mean=CLIP_MEAN, std=CLIP_STD,
                      processor="CLIPImageProcessor")
    return str(out)


# ---- dinov2: transformers Dinov2Model save_pretrained folder (safetensors) -----------------------


def _dinov2(out: Path) -> str:
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                       image_size=518, patch_size=14)
    torch.manual_seed(SEED)
    model = Dinov2Model(cfg).eval()
    _perturb_norms(model)
    model.save_pretrained(str(out))
    _processor_config(out, size=224, shortest_edge=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      processor="BitImageProcessor")
    return str(out)


def _processor_config(out: Path, size: int, shortest_edge: int, mean, std, processor: str) -> None:
    cfg = {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_normalize": True,
           "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "image_mean": list(mean),
           "image_std": list(std), "resample": 3, "size": {"shortest_edge": shortest_edge},
           "image_processor_type": processor}
    (out / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))


def _perturb_norms(model: torch.nn.Module) -> None:
    # fresh LayerNorms are identity maps; random ones make a dropped or swapped norm visible
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))


# ---- the independent reference ---------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _open_clip_model(key: str, weights: str) -> torch.nn.Module:
    import open_clip

    if Path(weights).is_file():  # OpenAI-format file
        return open_clip.load_openai_model(weights, precision="fp32", device="cpu").eval()
    if key == "biomedclip":
        cfg = json.loads((Path(weights) / "open_clip_config.json").read_text())["model_cfg"]
        text_cfg = _local_text_cfg(cfg, Path(weights))["text_cfg"]
        return open_clip.create_model(f"local-dir:{weights}", text_cfg=text_cfg).eval()
    return open_clip.create_model(f"local-dir:{weights}").eval()


@functools.lru_cache(maxsize=8)
def _hf_model(cls_name: str, weights: str) -> torch.nn.Module:
    import transformers

    return getattr(transformers, cls_name).from_pretrained(weights, local_files_only=True).eval()


def direct_features(key: str, weights: str, images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Expected features of a normalised (B, 3, H, W) batch, by the library's own calls."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if key in FILE_KEYS:
        return _direct_file_features(key, weights, x)
    if key in VLM_KEYS:
        return _direct_vlm_features(key, weights, x)
    with torch.no_grad():
        if key in ("clip", "biomedclip"):
            model = _open_clip_model(key, weights)
            if key == "biomedclip":
                trunk = model.visual.trunk
                pre = trunk.forward_head(trunk.forward_features(x), pre_logits=True)
            else:
                visual = deepcopy(model.visual)
                visual.proj = None  # VisionTransformer then returns ln_post(CLS)
                pre = visual(x)
            return {"image": pre.numpy(), "image_proj": model.encode_image(x).numpy()}
        if key == "pubmedclip":
            model = _hf_model("CLIPModel", weights)
            pre = model.vision_model(pixel_values=x).pooler_output
            proj = model.get_image_features(pixel_values=x).pooler_output
            return {"image": pre.numpy(), "image_proj": proj.numpy()}
        if key == "dinov2":
            out = _hf_model("Dinov2Model", weights)(pixel_values=x)
            return {"image": out.pooler_output.numpy()}
    raise KeyError(key)


def direct_text(key: str, weights: str, prompts: list[str]) -> np.ndarray:
    """Expected L2-normalised text embeddings of ``prompts``, by the library's own calls."""
    if key in VLM_KEYS:
        return _direct_vlm_text(key, weights, prompts)
    with torch.no_grad():
        if key in ("clip", "biomedclip"):
            import open_clip

            model = _open_clip_model(key, weights)
            tok = (open_clip.get_tokenizer(f"local-dir:{weights}") if Path(weights).is_dir()
                   else open_clip.get_tokenizer("ViT-B-32-quickgelu"))
            return model.encode_text(tok(prompts), normalize=True).numpy()
        if key == "pubmedclip":
            from transformers import AutoTokenizer

            model = _hf_model("CLIPModel", weights)
            tok = AutoTokenizer.from_pretrained(weights, local_files_only=True)
            batch = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            emb = model.get_text_features(**batch).pooler_output
            return torch.nn.functional.normalize(emb, dim=-1).numpy()
    raise KeyError(key)


def random_batch(n: int = 2, size: int = 224, seed: int = 0) -> torch.Tensor:
    """A normalised-looking random image batch (B, 3, size, size)."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- single-file training checkpoints: medmae, lvmmed, lvmmed_r50, mococxr, c2l -------------------

# ViT-B/16 geometry at 224 with two blocks and two 64-wide heads (MAE's head width)
TINY_MAE_VIT = {"embed_dim": 128, "depth": 2, "num_heads": 2}
# LVM-Med's SAM ViT-B geometry (built for 1024, windows of 14, relative positions only), narrowed
TINY_SAM_VIT = {"img_size": 1024, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0,
                "out_chans": 16, "qkv_bias": True, "use_abs_pos": False, "use_rel_pos": True, "window_size": 14,
                "global_attn_indexes": (1,)}
# MoCo's queue is 128 x 24576 in the release; its length does not matter to the backbone
TINY_QUEUE = 256
FILE_NAMES = {"medmae": "vit-b_CXR_0.5M_mae.pth", "lvmmed": "lvmmed_vit.pth", "lvmmed_r50": "lvmmed_resnet.torch",
              "mococxr": "r8w-00001-v2.pth.tar", "c2l": "res18_C2L.pth"}


def _perturb_batchnorms(model: torch.nn.Module, seed: int = SEED + 2) -> None:
    # fresh BatchNorms in eval mode are near-identity maps; random statistics make a dropped buffer visible
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(1000)


def _tiny_mae_vit() -> torch.nn.Module:
    import timm

    torch.manual_seed(SEED)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_MAE_VIT)
    _perturb_norms(vit)
    with torch.no_grad():
        vit.cls_token.normal_(std=0.5)  # timm starts it at ~1e-6
    return vit.eval()


def _mae_decoder(width: int = 64, patch: int = 16) -> dict[str, torch.Tensor]:
    """The keys of MAE's decoder (one block), which the release carries beside the encoder."""
    from timm.models.vision_transformer import Block

    sd = {"mask_token": torch.randn(1, 1, width), "decoder_pos_embed": torch.zeros(1, 197, width),
          "decoder_embed.weight": torch.randn(width, TINY_MAE_VIT["embed_dim"]), "decoder_embed.bias": torch.zeros(width),
          "decoder_norm.weight": torch.ones(width), "decoder_norm.bias": torch.zeros(width),
          "decoder_pred.weight": torch.randn(patch * patch * 3, width), "decoder_pred.bias": torch.zeros(patch * patch * 3)}
    sd.update({f"decoder_blocks.0.{k}": v for k, v in Block(width, 2, qkv_bias=True).state_dict().items()})
    return sd


def _medmae(out: Path) -> str:
    import argparse

    sd = {**_tiny_mae_vit().state_dict(), **_mae_decoder()}
    # MAE's misc.save_model: model, optimizer, epoch, scaler and the command-line arguments
    args = argparse.Namespace(model="mae_vit_base_patch16", input_size=224, mask_ratio=0.75, norm_pix_loss=True,
                              blr=1.5e-4, epochs=800, output_dir="./output_dir", device="cuda", dist_url="env://")
    ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0]}]},
            "epoch": 799, "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0}, "args": args}
    path = out / FILE_NAMES["medmae"]
    torch.save(ckpt, path)
    return str(path)


def _tiny_sam_vit() -> torch.nn.Module:
    from functools import partial

    from segment_anything.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(SEED)
    enc = ImageEncoderViT(**TINY_SAM_VIT, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    _perturb_norms(enc)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.5)  # SAM zero-initialises them; random ones make a wrong interpolation visible
    return enc.eval()


def _lvmmed(out: Path) -> str:
    path = out / FILE_NAMES["lvmmed"]
    torch.save(dict(_tiny_sam_vit().state_dict()), path)  # flat, no "image_encoder." prefix
    return str(path)


def _tiny_resnet(arch: str, num_classes: int = 1000, seed: int = SEED) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    _perturb_batchnorms(model, seed + 2)
    return model.eval()


def _lvmmed_r50(out: Path) -> str:
    # the real torchvision ResNet-50, flat, without fc (LVM-Med removes it)
    sd = {k: v for k, v in _tiny_resnet("resnet50").state_dict().items() if not k.startswith("fc.")}
    path = out / FILE_NAMES["lvmmed_r50"]
    torch.save(sd, path)
    return str(path)


def _moco_encoder(seed: int) -> torch.nn.Module:
    model = _tiny_resnet("resnet18", num_classes=128, seed=seed)
    # MoCo v2 --mlp: fc becomes Linear(512, 512), ReLU, Linear(512, 128)
    model.fc = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), model.fc)
    return model


def _mococxr(out: Path) -> str:
    q, k = _moco_encoder(SEED), _moco_encoder(SEED + 10)  # the momentum encoder has drifted from the query one
    sd = {f"module.encoder_q.{n}": v for n, v in q.state_dict().items()}
    sd.update({f"module.encoder_k.{n}": v for n, v in k.state_dict().items()})
    sd["module.queue"] = torch.nn.functional.normalize(torch.randn(128, TINY_QUEUE), dim=0)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    opt = torch.optim.SGD(q.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    path = out / FILE_NAMES["mococxr"]
    # MoCo's save_checkpoint; written in the pre-1.6 (non-zip) format of the time
    torch.save({"epoch": 20, "arch": "resnet18", "state_dict": sd, "optimizer": opt.state_dict()}, path,
               _use_new_zipfile_serialization=False)
    return str(path)


def _c2l(out: Path) -> str:
    import argparse

    model, ema = _tiny_resnet("resnet18", num_classes=128), _tiny_resnet("resnet18", num_classes=128, seed=SEED + 20)

    def wrap(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        # InsResNet18 holds nn.DataParallel(resnet18) as `encoder`
        return {f"encoder.module.{n}": v for n, v in m.state_dict().items()}

    opt = argparse.Namespace(model="resnet18", batch_size=128, learning_rate=0.03, lr_decay_epochs=[120, 160, 200],
                             nce_k=16384, nce_t=0.07, alpha=0.999, data_folder="./data", model_path="./save")
    ckpt = {"opt": opt, "model": wrap(model), "contrast": {"memory": torch.randn(64, 128), "params": torch.ones(5)},
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9).state_dict(), "epoch": 240,
            "model_ema": wrap(ema)}
    path = out / FILE_NAMES["c2l"]
    torch.save(ckpt, path)
    return str(path)


FILE_BUILDERS = {"medmae": _medmae, "lvmmed": _lvmmed, "lvmmed_r50": _lvmmed_r50, "mococxr": _mococxr, "c2l": _c2l}


def _load_any(path: str) -> dict:
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=8)
def _file_model(key: str, weights: str) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(trunk returning the image feature, projection head or None), loaded the authors' way."""
    import torchvision

    ckpt = _load_any(weights)
    if key == "medmae":
        import timm

        # MAE's linear probe: load non-strictly, then only the head may be missing
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_MAE_VIT)
        missing, _ = vit.load_state_dict(ckpt["model"], strict=False)
        assert not missing, missing
        return vit.eval(), None
    if key == "lvmmed":
        from functools import partial

        from segment_anything.modeling.image_encoder import ImageEncoderViT

        enc = ImageEncoderViT(**TINY_SAM_VIT, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        enc.load_state_dict(ckpt)
        enc.neck = torch.nn.Identity()  # forward then returns the last block's tokens as (B, C, H, W)
        return enc.eval(), None
    if key == "lvmmed_r50":
        model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
        model.load_state_dict(ckpt)
        return model.eval(), None
    if key == "mococxr":
        # MoCo's main_lincls: keep encoder_q except its fc, strip the prefix
        sd = {k[len("module.encoder_q."):]: v for k, v in ckpt["state_dict"].items()
              if k.startswith("module.encoder_q.") and not k.startswith("module.encoder_q.fc")}
        model = torchvision.models.resnet18(weights=None)
        model.fc = torch.nn.Identity()
        model.load_state_dict(sd)
        return model.eval(), None
    if key == "c2l":
        model = torchvision.models.resnet18(weights=None, num_classes=128)
        model.load_state_dict({k.removeprefix("encoder.module."): v for k, v in ckpt["model"].items()})
        head, model.fc = model.fc, torch.nn.Identity()
        return model.eval(), head.eval()
    raise KeyError(key)


def _direct_file_features(key: str, weights: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    trunk, head = _file_model(key, weights)
    with torch.no_grad():
        feats = trunk(x)
        if key == "lvmmed":
            feats = feats.mean(dim=(2, 3))
        out = {"image": feats.numpy()}
        if head is not None:
            out["image_proj"] = head(feats).numpy()
    return out


# ---- vision-language releases: blip, blip2 (transformers folders), medclip (zip) -----------------

MEDCLIP_ZIP = "medclip-vit-pretrained.zip"
# three BERT layers, so that MedCLIP's hidden states 1, 2 and last are three different ones; one
# 64-wide head, as the MedCLIP loader assumes of a BERT release
TINY_MEDCLIP_BERT = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 1, "intermediate_size": 128,
                     "max_position_embeddings": 512, "type_vocab_size": 2}
# Swin-T's patch 4 and window 7 at 224, two stages of two blocks (the second one shifted)
TINY_MEDCLIP_SWIN = {"image_size": 224, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2],
                     "window_size": 7}
# transformers 4.x Swin names (the MedCLIP release) <- transformers 5 names
_SWIN_V4_NAMES = (
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table"),
    ("attention.o_proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
)


def _bert_tokenizer_files(out: Path, bos: str | None = None, max_length: int = 512):
    from transformers import BertTokenizer

    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(_tiny_bert_vocab()) + "\n")
    tok = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=max_length)
    if bos is not None:
        tok.add_special_tokens({"bos_token": bos})  # BLIP's [DEC], an added token past the vocabulary
    tok.save_pretrained(str(out))
    return tok


def _blip(out: Path, arch: str = "BlipForImageTextRetrieval") -> str:
    import transformers
    from transformers import BlipConfig

    tok = _bert_tokenizer_files(out, bos="[DEC]")
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, bos_token_id=len(tok) - 1, sep_token_id=3,
                         pad_token_id=0),
        # BLIP's vision initialiser (std 1e-10) would leave the tower a near-constant map
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=384, patch_size=16, initializer_range=0.02),
        image_text_hidden_size=16,
        projection_dim=24,
    )
    torch.manual_seed(SEED)
    model = getattr(transformers, arch)(cfg).eval()
    _perturb_norms(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "proj" in name and name.endswith("weight"):  # projections large enough to compare at 1e-5
                param.normal_(std=0.3)
    model.config.architectures = [arch]
    model.config.save_pretrained(str(out))
    sd = dict(model.state_dict())
    # the release was converted with transformers 4.2x, which saved this buffer
    text = "text_encoder" if arch == "BlipForImageTextRetrieval" else "text_model"
    sd[f"{text}.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(sd, out / "pytorch_model.bin")  # the release's main branch has only the pickle format
    _processor_config(out, size=384, shortest_edge=384, mean=CLIP_MEAN, std=CLIP_STD, processor="BlipImageProcessor")
    return str(out)


def build_blip_model_folder(out_dir: Path) -> str:
    """The tiny BLIP as a CLIP-style ``BlipModel`` save_pretrained folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _blip(out, arch="BlipModel")


def _blip2(out: Path) -> str:
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    tok = _bert_tokenizer_files(out, bos="[DEC]")
    cfg = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=14, initializer_range=0.02),
        qformer_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=2,
                            use_qformer_text_input=True, initializer_range=0.15),  # queries that see the image
        num_query_tokens=32,
        image_text_hidden_size=16,
    )
    torch.manual_seed(SEED)
    model = Blip2ForImageTextRetrieval(cfg).eval()
    _perturb_norms(model)
    with torch.no_grad():
        model.query_tokens.normal_(std=0.5)  # starts at zero: all queries would be alike
    model.save_pretrained(str(out))  # config.json + model.safetensors, like the hub repository
    _processor_config(out, size=224, shortest_edge=224, mean=CLIP_MEAN, std=CLIP_STD, processor="BlipImageProcessor")
    return str(out)


def _medclip_state_dict() -> dict[str, torch.Tensor]:
    """MedCLIPModel's flat state dict, spelled as transformers 4.x saved it."""
    from transformers import BertConfig, BertModel, SwinConfig, SwinModel

    torch.manual_seed(SEED)
    swin = SwinModel(SwinConfig(**TINY_MEDCLIP_SWIN)).eval()
    bert = BertModel(BertConfig(vocab_size=len(_tiny_bert_vocab()), **TINY_MEDCLIP_BERT)).eval()
    for m in (swin, bert):
        _perturb_norms(m)
    sd: dict[str, torch.Tensor] = {}
    for k, v in swin.state_dict().items():
        for new, old in _SWIN_V4_NAMES:
            if new in k:
                k = k.replace(new, old)
                break
        sd[f"vision_model.model.{k}"] = v
    for name, mod in swin.named_modules():
        if hasattr(mod, "relative_position_index"):  # a persistent buffer in 4.x, 2-d
            n = mod.relative_position_bias_table.shape[0]
            w = (round(n ** 0.5) + 1) // 2
            index = mod.relative_position_index.reshape(w * w, w * w)
            block = name.removesuffix(".relative_position_bias")
            sd[f"vision_model.model.{block}.self.relative_position_index"] = index.clone()
    sd["vision_model.projection_head.weight"] = torch.randn(24, swin.config.hidden_size) * 0.2
    sd.update({f"text_model.model.{k}": v for k, v in bert.state_dict().items()})
    sd["text_model.model.embeddings.position_ids"] = torch.arange(512)[None]  # MedCLIP issue #37
    sd["text_model.projection_head.weight"] = torch.randn(24, TINY_MEDCLIP_BERT["hidden_size"]) * 0.2
    sd["logit_scale"] = torch.tensor(4.7)  # above MedCLIP's clamp at ln 100
    return sd


def _medclip(out: Path) -> str:
    import io
    import zipfile

    _bert_tokenizer_files(out, max_length=77)
    buf = io.BytesIO()
    torch.save(_medclip_state_dict(), buf)
    path = out / MEDCLIP_ZIP
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("pytorch_model.bin", buf.getvalue())
    return str(path)


VLM_BUILDERS = {"blip": _blip, "blip2": _blip2, "medclip": _medclip}


# ---- their independent references: the transformers classes run directly ---------------------

_LUMA = (0.299, 0.587, 0.114)  # PIL's "L" conversion, which MedCLIP's padding applies


@functools.lru_cache(maxsize=4)
def _medclip_reference(weights: str):
    """Swin and BERT loaded by transformers' own from_pretrained (which maps the 4.x names)."""
    import tempfile
    import zipfile

    from transformers import BertConfig, BertModel, SwinConfig, SwinModel

    path = Path(weights)
    if path.is_dir():
        path = path / "pytorch_model.bin"
    if zipfile.is_zipfile(path) and "pytorch_model.bin" in zipfile.ZipFile(path).namelist():
        import io

        sd = torch.load(io.BytesIO(zipfile.ZipFile(path).read("pytorch_model.bin")), weights_only=True)
    else:
        sd = torch.load(path, weights_only=True)
    towers = {}
    for prefix, cls, cfg in (("vision_model.", SwinModel, SwinConfig(**TINY_MEDCLIP_SWIN)),
                             ("text_model.", BertModel,
                              BertConfig(vocab_size=len(_tiny_bert_vocab()), **TINY_MEDCLIP_BERT))):
        part = {k[len(prefix) + len("model."):]: v for k, v in sd.items() if k.startswith(prefix + "model.")}
        with tempfile.TemporaryDirectory(prefix="medclip-ref-") as tmp:
            cfg.save_pretrained(tmp)
            torch.save(part, Path(tmp) / "pytorch_model.bin")
            model, info = cls.from_pretrained(tmp, local_files_only=True, output_loading_info=True)
        assert not info["missing_keys"], info["missing_keys"]
        towers[prefix] = (model.eval(), sd[prefix + "projection_head.weight"])
    return towers["vision_model."], towers["text_model."]


def _direct_vlm_features(key: str, weights: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    import transformers

    with torch.no_grad():
        if key == "medclip":
            (swin, proj), _ = _medclip_reference(weights)
            grey = sum(w * x[:, i : i + 1] for i, w in enumerate(_LUMA))
            pre = swin(pixel_values=grey.repeat(1, 3, 1, 1)).pooler_output
            return {"image": pre.numpy(), "image_proj": (pre @ proj.T).numpy()}
        arch = json.loads((Path(weights) / "config.json").read_text())["architectures"][0]
        model = _hf_model(arch, weights)
        ids = torch.tensor([[2, 5, 3]])
        if arch == "BlipModel":
            pre = model.vision_model(pixel_values=x).last_hidden_state[:, 0]
            return {"image": pre.numpy(), "image_proj": model.get_image_features(pixel_values=x).pooler_output.numpy()}
        if key == "blip":
            out = model(input_ids=ids, pixel_values=x, use_itm_head=False)
            cls = out.last_hidden_state[:, 0]
            return {"image": cls.numpy(), "image_proj": model.vision_proj(cls).numpy()}
        # BLIP-2: the retrieval forward's per-query unit projections; the 768-d query outputs by the
        # same Q-Former call it makes
        out = model(pixel_values=x, input_ids=ids, use_image_text_matching_head=False)
        image = out.vision_model_output.last_hidden_state
        q = model.qformer(query_embeds=model.query_tokens.expand(len(x), -1, -1), encoder_hidden_states=image,
                          encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long)).last_hidden_state
        assert isinstance(model, transformers.Blip2ForImageTextRetrieval)
        return {"image": q.mean(1).numpy(), "image_proj": out.image_embeds.mean(1).numpy()}


def _direct_vlm_text(key: str, weights: str, prompts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer, BertTokenizer

    with torch.no_grad():
        if key == "medclip":
            _, (bert, proj) = _medclip_reference(weights)
            folder = Path(weights) if Path(weights).is_dir() else Path(weights).parent
            tok = BertTokenizer.from_pretrained(str(folder))
            rows = []
            for p in prompts:  # one prompt at a time: no padding enters MedCLIP's token mean
                hs = bert(**tok(p, truncation=True, max_length=77, return_tensors="pt"),
                          output_hidden_states=True).hidden_states
                emb = torch.stack([hs[1], hs[2], hs[-1]]).permute(1, 0, 2, 3).mean(2).mean(1) @ proj.T
                rows.append(torch.nn.functional.normalize(emb, dim=-1))
            return torch.cat(rows).numpy()
        arch = json.loads((Path(weights) / "config.json").read_text())["architectures"][0]
        model = _hf_model(arch, weights)
        tok = AutoTokenizer.from_pretrained(weights, local_files_only=True)
        batch = tok(prompts, padding=True, return_tensors="pt")
        if arch == "BlipModel":
            emb = model.get_text_features(**batch).pooler_output
            return torch.nn.functional.normalize(emb, dim=-1).numpy()
        size = model.config.vision_config.image_size
        pixels = torch.zeros(1, 3, size, size)
        if key == "blip":
            out = model(pixel_values=pixels, use_itm_head=False, **batch)
            return torch.nn.functional.normalize(model.text_proj(out.question_embeds[:, 0]), dim=-1).numpy()
        return model(pixel_values=pixels, use_image_text_matching_head=False, **batch).text_embeds.numpy()
