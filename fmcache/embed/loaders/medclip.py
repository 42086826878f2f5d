"""MedCLIP-ViT (RyanWangZf/MedCLIP) without the ``medclip`` package.

The release is ``medclip-vit-pretrained.zip`` holding ``pytorch_model.bin``: a flat state dict
of ``MedCLIPModel(vision_cls=MedCLIPVisionModelViT)``. The weights source may be that zip,
the folder it was extracted to, or the ``.bin`` itself. The package builds its towers with
``AutoModel.from_pretrained`` (network); here they are built from configs read off the
checkpoint's tensor shapes (depths, widths, windows, vocabulary), every other setting fixed to
the published ``microsoft/swin-tiny-patch4-window7-224`` and ``emilyalsentzer/Bio_ClinicalBERT``
configs, BERT's head count being width / 64 as in BERT-base. The strict load then checks the
rest.

Keys: ``vision_model.model.*`` (transformers ``SwinModel``, saved by transformers 4.x, whose
Swin attention/MLP names transformers 5 renamed; mapped here), ``vision_model.projection_head``,
``text_model.model.*`` (``BertModel``), ``text_model.projection_head`` (both bias-free),
``logit_scale``. Buffers old transformers saved and new ones recompute (BERT
``position_ids``, MedCLIP issue #37; Swin ``relative_position_index``) are dropped.

The image input is single-channel. The embed stage hands over three channels normalised with
the same mean and std, so the loader takes their ITU-R 601 luma (what MedCLIP's
``Image.new('L')`` padding converts colour images to, and the identity on grey images) and
repeats it to three channels, as ``MedCLIPVisionModelViT`` does.

Text: Bio_ClinicalBERT tokenizer (77 tokens, as MedCLIP forces), embedding = mean over tokens
and over hidden states 1, 2 and last, projected, L2-normalised. MedCLIP averages padding
positions too, so its embedding of a prompt depends on the longest prompt of the batch; each
prompt is encoded here without padding, which equals MedCLIP run on that prompt alone.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from fmcache.embed.spec import Encoder, ModelSpec
from fmcache.embed.weights import (
    _corrupt,
    _is_torchscript,
    hub_snapshot,
    key_mismatch,
    local_path,
    read_state_dict,
    sha256_file,
)
from fmcache.errors import ModelError

WEIGHTS_NAME = "pytorch_model.bin"
TOKENIZER_REPO = "emilyalsentzer/Bio_ClinicalBERT"
CONTEXT = 77
LOGIT_SCALE_MAX = 4.6052  # MedCLIP clamps the stored log-scale to [0, ln 100] before use
_LUMA = (0.299, 0.587, 0.114)
_VISION, _TEXT = "vision_model.model.", "text_model.model."
# transformers 4.x Swin names -> transformers 5 (its own conversion table for "swin"); order
# matters: the attention output is renamed before the MLP output
_SWIN_RENAMES = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.relative_position_index", "attention.relative_position_bias.relative_position_index"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)


def load(spec: ModelSpec, weights: str | None, device: str, *, trust_code: bool = False) -> Encoder:
    source = weights or spec.weights
    path, weights_id = _resolve(spec, source)
    release_sd = _read(path, spec, trust_code)
    sd, renamed = _to_current_names(release_sd)
    model = _MedCLIP(*_swin_config(sd, spec), *_bert_config(sd))
    _load_strict(model, sd, renamed, spec, path)
    model = model.to(device).eval()
    tokenizer = _tokenizer(spec, path if path.is_dir() else path.parent)
    vision, text = model.vision_model, model.text_model
    proj_dim = int(vision.projection_head.out_features)
    return Encoder(
        spec=spec,
        module=model,
        encode_image=_image_encoder(model),
        dims={"image": int(vision.projection_head.in_features), "image_proj": proj_dim},
        weights_id=weights_id,
        weights_sha256=sha256_file(path if path.is_file() else path / WEIGHTS_NAME),
        encode_text=_text_encoder(model, tokenizer, device),
        text_dim=int(text.projection_head.out_features),
        logit_scale=float(model.logit_scale.detach().clamp(0, LOGIT_SCALE_MAX).exp()),
    )


# ---- the architecture -------------------------------------------------------------------------


class _Tower(torch.nn.Module):
    """A transformers backbone plus MedCLIP's bias-free projection, under MedCLIP's names."""

    def __init__(self, backbone: torch.nn.Module, width: int, proj_dim: int):
        super().__init__()
        self.model = backbone
        self.projection_head = torch.nn.Linear(width, proj_dim, bias=False)


class _MedCLIP(torch.nn.Module):
    def __init__(self, swin_cfg: Any, vision_proj: int, bert_cfg: Any, text_proj: int):
        from transformers import BertModel, SwinModel

        super().__init__()
        self.vision_model = _Tower(SwinModel(swin_cfg), swin_cfg.hidden_size, vision_proj)
        self.text_model = _Tower(BertModel(bert_cfg), bert_cfg.hidden_size, text_proj)
        self.logit_scale = torch.nn.Parameter(torch.zeros(()))


def _swin_config(sd: dict[str, torch.Tensor], spec: ModelSpec) -> tuple[Any, int]:
    from transformers import SwinConfig

    try:
        patch = sd[_VISION + "embeddings.patch_embeddings.projection.weight"]
        n_stages = _count(sd, _VISION + "encoder.layers.")
        depths = [_count(sd, f"{_VISION}encoder.layers.{i}.blocks.") for i in range(n_stages)]
        tables = [
            sd[f"{_VISION}encoder.layers.{i}.blocks.0.attention.relative_position_bias.relative_position_bias_table"]
            for i in range(n_stages)
        ]
        fc1 = sd[_VISION + "encoder.layers.0.blocks.0.mlp.fc1.weight"]
        cfg = SwinConfig(
            image_size=spec.preprocess.size,
            patch_size=int(patch.shape[-1]),
            num_channels=int(patch.shape[1]),
            embed_dim=int(patch.shape[0]),
            depths=depths,
            num_heads=[int(t.shape[1]) for t in tables],
            window_size=(round(tables[0].shape[0] ** 0.5) + 1) // 2,
            mlp_ratio=fc1.shape[0] / fc1.shape[1],
            use_absolute_embeddings=_VISION + "embeddings.position_embeddings" in sd,
        )
        return cfg, int(sd["vision_model.projection_head.weight"].shape[0])
    except (KeyError, IndexError):
        return SwinConfig(), 512  # swin-tiny-patch4-window7-224: the strict load names what is wrong


def _bert_config(sd: dict[str, torch.Tensor]) -> tuple[Any, int]:
    from transformers import BertConfig

    try:
        words = sd[_TEXT + "embeddings.word_embeddings.weight"]
        width = int(words.shape[1])
        cfg = BertConfig(
            vocab_size=int(words.shape[0]),
            hidden_size=width,
            num_hidden_layers=_count(sd, _TEXT + "encoder.layer."),
            num_attention_heads=max(1, width // 64),
            intermediate_size=int(sd[_TEXT + "encoder.layer.0.intermediate.dense.weight"].shape[0]),
            max_position_embeddings=int(sd[_TEXT + "embeddings.position_embeddings.weight"].shape[0]),
            type_vocab_size=int(sd[_TEXT + "embeddings.token_type_embeddings.weight"].shape[0]),
        )
        return cfg, int(sd["text_model.projection_head.weight"].shape[0])
    except KeyError:
        # Bio_ClinicalBERT: BERT-base with a 28996-token cased vocabulary
        return BertConfig(vocab_size=28996), 512


def _count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


# ---- where the weights are and how they are read -------------------------------------------


def _resolve(spec: ModelSpec, source: str) -> tuple[Path, str]:
    """(the zip, ``.bin`` or extracted folder, readable identity) for a weights source."""
    if source.startswith("hf-hub:"):
        raise ModelError(
            f"{spec.key!r} is not on the Hugging Face hub; pass --weights PATH to medclip-vit-pretrained.zip "
            f"(the URL is in MedCLIP's medclip/medclip_vit_weight.txt) or to the folder it unzips to"
        )
    p = local_path(source, spec.key)
    if p.is_dir():
        if not (p / WEIGHTS_NAME).is_file():
            raise ModelError(f"folder {p} given as weights for {spec.key!r} holds no {WEIGHTS_NAME}")
        return p, f"{p.name}/{WEIGHTS_NAME}"
    return p, p.name


def _read(path: Path, spec: ModelSpec, trust_code: bool) -> dict[str, torch.Tensor]:
    if path.is_dir():
        sd = read_state_dict(path / WEIGHTS_NAME, spec.key, trust_code=trust_code)
    elif path.suffix == ".zip" or _zip_member(path) is not None:
        sd = _read_release_zip(path, spec)
    else:
        sd = read_state_dict(path, spec.key, trust_code=trust_code)
    if not isinstance(sd, dict):
        raise ModelError(f"weights file {path} for {spec.key!r} holds a {type(sd).__name__}, not a state dict")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _zip_member(path: Path) -> str | None:
    """The ``pytorch_model.bin`` inside a release zip (a torch.save file is a zip too: it has none)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if Path(n).name == WEIGHTS_NAME and not n.startswith("__MACOSX")]
    except (zipfile.BadZipFile, OSError):
        return None
    return min(names, key=len) if names else None


def _read_release_zip(path: Path, spec: ModelSpec) -> Any:
    import zlib

    member = _zip_member(path)
    if member is None:
        if zipfile.is_zipfile(path):
            raise ModelError(f"zip {path} given as weights for {spec.key!r} holds no {WEIGHTS_NAME}")
        raise _corrupt(path, spec.key, zipfile.BadZipFile("not a readable zip archive"))
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(member)
        if _is_torchscript(io.BytesIO(data)):
            raise ModelError(
                f"{member} in {path} is a TorchScript archive, whose loading runs the code it carries; "
                f"fmcache reads only plain state dicts from inside a zip. If you trust its source, extract it "
                f"and pass that file with --weights and --trust-code"
            )
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ModelError(
                f"{member} in {path} holds Python objects other than tensors, which fmcache refuses to "
                f"unpickle (torch.load weights_only=True); re-save its state dict"
            ) from None
        raise _corrupt(path, spec.key, e) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise _corrupt(path, spec.key, e) from None


def _to_current_names(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict under transformers 5 Swin names, and current name -> name in the file."""
    out, renamed = {}, {}
    for k, v in sd.items():
        new = k
        if k.startswith(_VISION):
            rest = k[len(_VISION):]
            for old, cur in _SWIN_RENAMES:
                if old in rest:
                    rest = rest.replace(old, cur)
                    break
            new = _VISION + rest
        out[new] = v
        renamed[new] = k
    return out, renamed


def _release_name(key: str) -> str:
    # how a key of the model is spelled in a release file, for error messages
    if not key.startswith(_VISION):
        return key
    rest = key[len(_VISION):]
    for old, cur in _SWIN_RENAMES:
        if cur in rest:
            return _VISION + rest.replace(cur, old)
    return key


def _load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], renamed: dict[str, str],
                 spec: ModelSpec, path: Path) -> None:
    if "logit_scale" in sd:
        sd["logit_scale"] = sd["logit_scale"].reshape(())
    own = model.state_dict()
    computed = {name for name, _ in model.named_buffers()} - set(own)
    for k in list(sd):
        if k not in own and (k in computed or k.endswith(".position_ids")):
            del sd[k]
    missing = [_release_name(k) for k in own if k not in sd]
    unexpected = [renamed.get(k, k) for k in sd if k not in own]
    err = key_mismatch(spec.key, path, missing, unexpected)
    if err is not None:
        raise err
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # shapes that differ
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ModelError(f"weights {path} do not match the architecture of {spec.key!r}: {detail}") from None


# ---- text and images ----------------------------------------------------------------------------


def _tokenizer(spec: ModelSpec, folder: Path) -> Any:
    """Bio_ClinicalBERT's tokenizer: files beside the weights, else the hub (or its cache)."""
    from transformers import BertTokenizer

    repo = spec.config.get("tokenizer", TOKENIZER_REPO)
    if not (folder / "vocab.txt").is_file():
        try:
            folder = hub_snapshot(repo, ["*.json", "*.txt"], spec.key)
        except ModelError:
            raise ModelError(
                f"the text tower of {spec.key!r} needs the tokenizer of hf-hub:{repo}, which is neither "
                f"beside the weights ({folder}) nor in the Hugging Face cache; put that repository's "
                f"vocab.txt next to the weights"
            ) from None
    try:
        return BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of {spec.key!r} from {folder}: {e}") from None


def _image_encoder(model: _MedCLIP) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    vision = model.vision_model

    def encode_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 3:
            luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(dim=1, keepdim=True)
        x = x.expand(-1, 3, -1, -1)  # MedCLIPVisionModelViT repeats the grey channel
        pre = vision.model(pixel_values=x).pooler_output  # mean of the last stage's tokens, after its norm
        return {"image": pre, "image_proj": vision.projection_head(pre)}

    return encode_image


def _text_encoder(model: _MedCLIP, tokenizer: Any, device: str) -> Callable[[list[str]], torch.Tensor]:
    text = model.text_model

    @torch.inference_mode()
    def encode_text(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(list(prompts), truncation=True, max_length=CONTEXT)["input_ids"]
        out = torch.empty(len(ids), text.projection_head.out_features, device=device)
        # prompts of one length form an unpadded batch
        for length in sorted({len(t) for t in ids}):
            rows = [i for i, t in enumerate(ids) if len(t) == length]
            batch = torch.tensor([ids[i] for i in rows], device=device)
            hidden = text.model(input_ids=batch, attention_mask=torch.ones_like(batch),
                                output_hidden_states=True).hidden_states
            pooled = torch.stack([hidden[1], hidden[2], hidden[-1]]).mean(dim=(0, 2))
            out[rows] = text.projection_head(pooled)
        return torch.nn.functional.normalize(out, dim=-1)

    return encode_text
