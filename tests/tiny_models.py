"""Tiny random-weight models saved in the same file formats as the real releases.

Each builder makes a seeded, narrow, two-layer model of the real architecture family, with
the real input size (224) and patch size so the real preprocessing applies, and writes it
the way the real weights are published (file names, key nesting, legacy keys). The
``direct_*`` functions compute the expected outputs by calling open_clip / transformers
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

KEYS = ("clip", "biomedclip", "pubmedclip", "dinov2")
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
    return {"clip": _clip, "biomedclip": _biomedclip, "pubmedclip": _pubmedclip, "dinov2": _dinov2}[key](out)


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
