"""Loaders of blip, blip2 and medclip against tiny checkpoints in the real release formats."""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fmcache.embed.models import MODELS
from fmcache.embed.registry import load_model
from fmcache.embed.weights import sha256_file
from fmcache.errors import ModelError

from helpers import tiny_models as tm

PROMPTS = ["a chest x-ray with pleural effusion", "normal lung", ""]
TINY_DIMS = {
    "blip": {"image": 32, "image_proj": 16},
    "blip2": {"image": 32, "image_proj": 16},
    "medclip": {"image": 32, "image_proj": 24},
}
WEIGHTS_FILE = {"blip": "pytorch_model.bin", "blip2": "model.safetensors", "medclip": tm.MEDCLIP_ZIP}


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints) -> dict[str, str]:
    return {key: tiny_checkpoints[key] for key in tm.VLM_KEYS}


def _batch(key: str, n: int = 2) -> torch.Tensor:
    return tm.random_batch(n, MODELS[key].preprocess.size)


def _folder(weights: str) -> Path:
    return Path(weights) if Path(weights).is_dir() else Path(weights).parent


def _copy(weights: str, dst: Path) -> Path:
    """A copy of a tiny checkpoint's folder; returns the copy's weights path."""
    shutil.copytree(_folder(weights), dst)
    return dst / Path(weights).name if Path(weights).is_file() else dst


def _assert_matches(enc, key: str, weights: str, batch: torch.Tensor, dims: dict | None = None) -> None:
    dims = dims or TINY_DIMS[key]
    got = enc.encode_image(batch)
    want = tm.direct_features(key, weights, batch)
    assert set(got) == set(want) == set(dims)
    for kind, ref in want.items():
        assert np.abs(ref[0] - ref[1]).max() > 1e-3  # the tiny model tells images apart
        np.testing.assert_allclose(got[kind].numpy(), ref, atol=1e-5, rtol=0)
    assert enc.dims == dims == {k: v.shape[1] for k, v in got.items()}
    text = enc.encode_text(PROMPTS)
    assert tuple(text.shape) == (len(PROMPTS), enc.text_dim) and enc.text_dim == dims["image_proj"]
    np.testing.assert_allclose(text.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(text.numpy(), tm.direct_text(key, weights, PROMPTS), atol=1e-5, rtol=0)


# ---- features and text match the libraries' own calls ----------------------------------------


@pytest.mark.parametrize("key", tm.VLM_KEYS)
def test_tiny_checkpoint_matches_library(key, tiny):
    enc = load_model(key, weights=tiny[key])
    assert not enc.module.training
    _assert_matches(enc, key, tiny[key], _batch(key))
    ckpt = _folder(tiny[key]) / WEIGHTS_FILE[key]
    assert enc.weights_sha256 == sha256_file(ckpt)
    assert enc.weights_id == (ckpt.name if key == "medclip" else f"{key}/{ckpt.name}")


def test_blip_model_class(tmp_path):
    # BlipModel: CLIP-style projections of the (twice-normed) pooled CLS, and a logit scale
    weights = tm.build_blip_model_folder(tmp_path / "blip-model")
    enc = load_model("blip", weights=weights)
    _assert_matches(enc, "blip", weights, _batch("blip"), dims={"image": 32, "image_proj": 24})
    assert enc.logit_scale == pytest.approx(float(enc.module.logit_scale.detach().exp()))


def test_blip_other_architecture_is_refused(tmp_path, tiny):
    import json

    folder = _copy(tiny["blip"], tmp_path / "blip")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["BlipForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="BlipForConditionalGeneration.*BlipForImageTextRetrieval or BlipModel"):
        load_model("blip", weights=str(folder))


def test_blip2_pools_the_query_tokens(tiny):
    from fmcache.embed.loaders.hf_blip2 import query_outputs

    enc = load_model("blip2", weights=tiny["blip2"])
    x = _batch("blip2")
    with torch.inference_mode():
        q = query_outputs(enc.module, x)
        assert q.shape[1] == 32
        # image_proj . text = mean over queries of the per-query ITC cosine
        text = enc.encode_text(PROMPTS[:1])
        per_query = torch.nn.functional.normalize(enc.module.vision_projection(q), dim=-1) @ text[0]
    np.testing.assert_allclose((enc.encode_image(x)["image_proj"] @ text[0]).numpy(), per_query.mean(1).numpy(),
                               atol=1e-6)


# ---- medclip: the zip, the folder it unzips to, the bare .bin -------------------------------------


def _extract(zip_path: str, dst: Path) -> Path:
    dst.mkdir()
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(dst)
    shutil.copy(Path(zip_path).parent / "vocab.txt", dst)
    return dst


def test_medclip_extracted_folder_and_bin(tmp_path, tiny):
    x = _batch("medclip")
    want = tm.direct_features("medclip", tiny["medclip"], x)["image_proj"]
    folder = _extract(tiny["medclip"], tmp_path / "medclip-vit")
    for weights, wid in ((folder, "medclip-vit/pytorch_model.bin"), (folder / "pytorch_model.bin", "pytorch_model.bin")):
        enc = load_model("medclip", weights=str(weights))
        assert enc.weights_id == wid and enc.weights_sha256 == sha256_file(folder / "pytorch_model.bin")
        np.testing.assert_allclose(enc.encode_image(x)["image_proj"].numpy(), want, atol=1e-5, rtol=0)


def test_medclip_grey_input_and_logit_scale(tiny):
    enc = load_model("medclip", weights=tiny["medclip"])
    grey = _batch("medclip")[:, :1]
    one = enc.encode_image(grey)["image"]
    np.testing.assert_allclose(enc.encode_image(grey.expand(-1, 3, -1, -1))["image"].numpy(), one.numpy(), atol=1e-6)
    assert enc.logit_scale == pytest.approx(100.0, rel=1e-4)  # stored 4.7, clamped to ln 100 as MedCLIP does


def test_medclip_text_does_not_depend_on_the_batch(tiny):
    enc = load_model("medclip", weights=tiny["medclip"])
    together = enc.encode_text(PROMPTS)
    alone = torch.cat([enc.encode_text([p]) for p in PROMPTS])
    np.testing.assert_allclose(together.numpy(), alone.numpy(), atol=1e-6)


def test_medclip_without_legacy_buffers(tmp_path, tiny):
    # a re-save by new transformers drops position_ids and relative_position_index: still loads
    folder = _extract(tiny["medclip"], tmp_path / "m")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.endswith(("position_ids", "position_index"))},
               folder / "pytorch_model.bin")
    load_model("medclip", weights=str(folder))


def test_medclip_tokenizer_must_be_somewhere(tmp_path, tiny):
    path = _copy(tiny["medclip"], tmp_path / "m")
    (path.parent / "vocab.txt").unlink()
    with pytest.raises(ModelError, match=r"emilyalsentzer/Bio_ClinicalBERT.*vocab\.txt next to the weights"):
        load_model("medclip", weights=str(path))


def test_medclip_zip_without_weights_and_hub_source(tmp_path):
    path = tmp_path / tm.MEDCLIP_ZIP
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("README.txt", "no weights here")
    with pytest.raises(ModelError, match="holds no pytorch_model.bin"):
        load_model("medclip", weights=str(path))
    with pytest.raises(ModelError, match="not on the Hugging Face hub"):
        load_model("medclip", weights="hf-hub:someone/medclip")


def test_medclip_missing_default_file_names_it():
    with pytest.raises(ModelError, match=r"medclip-vit-pretrained\.zip.*not found|not found.*medclip-vit-pretrained\.zip"):
        load_model("medclip")


# ---- the hub path, offline -------------------------------------------------------------------


def _into_hub_cache(src: str, repo: str, commit: str) -> None:
    import os

    base = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("key", ("blip", "blip2"))
def test_hub_offline_from_cache(key, tiny):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = MODELS[key].weights.removeprefix("hf-hub:")
    _into_hub_cache(tiny[key], repo, commit)
    enc = load_model(key)
    assert enc.weights_id == f"{repo}@{commit}"
    x = _batch(key)
    np.testing.assert_allclose(enc.encode_image(x)["image"].numpy(), tm.direct_features(key, tiny[key], x)["image"],
                               atol=1e-5)


@pytest.mark.parametrize("key", ("blip", "blip2"))
def test_hub_offline_not_cached(key):
    repo = MODELS[key].weights.removeprefix("hf-hub:")
    with pytest.raises(ModelError) as info:
        load_model(key)
    msg = str(info.value)
    assert repo in msg and "HF_HUB_OFFLINE" in msg and "--weights PATH" in msg
    assert "\n" not in msg and info.value.__cause__ is None


def test_medclip_tokenizer_from_hub_cache(tmp_path, tiny):
    path = _copy(tiny["medclip"], tmp_path / "m")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for f in path.parent.glob("*.*"):
        if f.name != tm.MEDCLIP_ZIP:
            f.rename(tok_dir / f.name)
    _into_hub_cache(str(tok_dir), "emilyalsentzer/Bio_ClinicalBERT", "f" * 40)
    enc = load_model("medclip", weights=str(path))
    np.testing.assert_allclose(enc.encode_text(PROMPTS).numpy(), tm.direct_text("medclip", tiny["medclip"], PROMPTS),
                               atol=1e-5)


# ---- strict loading ----------------------------------------------------------------------------


def _edit(path: Path, edit) -> None:
    """Apply ``edit`` to the state dict in ``path`` (bin, safetensors or the MedCLIP zip), in place."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        sd = load_file(str(path))
        edit(sd)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            sd = torch.load(io.BytesIO(z.read("pytorch_model.bin")), weights_only=True)
        edit(sd)
        buf = io.BytesIO()
        torch.save(sd, buf)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("pytorch_model.bin", buf.getvalue())
    else:
        sd = torch.load(path, weights_only=True)
        edit(sd)
        torch.save(sd, path)


def _weights(key: str, copy: Path) -> tuple[str, Path]:
    """(weights argument, file holding the state dict) of a copied tiny checkpoint."""
    return str(copy), _folder(str(copy)) / WEIGHTS_FILE[key]


# a key per model whose file spelling matters: MedCLIP's Swin keys are transformers 4.x names
RENAMED = {
    "blip": "vision_proj.weight",
    "blip2": "text_projection.weight",
    "medclip": "vision_model.model.encoder.layers.1.blocks.1.attention.self.query.weight",
}


@pytest.mark.parametrize("key", tm.VLM_KEYS)
def test_renamed_key_is_an_error_naming_both(key, tmp_path, tiny):
    weights, ckpt = _weights(key, _copy(tiny[key], tmp_path / key))
    old = RENAMED[key]
    _edit(ckpt, lambda sd: sd.__setitem__(old + "_renamed", sd.pop(old)))
    with pytest.raises(ModelError) as info:
        load_model(key, weights=weights)
    msg = str(info.value)
    assert "1 missing key(s)" in msg and f" {old}" in msg
    assert "1 unexpected key(s)" in msg and f"{old}_renamed" in msg


@pytest.mark.parametrize("key", tm.VLM_KEYS)
def test_extra_and_missing_keys_are_errors(key, tmp_path, tiny):
    weights, ckpt = _weights(key, _copy(tiny[key], tmp_path / key))

    def edit(sd):
        sd["extra.head.weight"] = torch.zeros(3)
        for k in sorted(k for k in sd if k.endswith(".bias"))[:7]:
            del sd[k]

    _edit(ckpt, edit)
    with pytest.raises(ModelError, match=r"7 missing key\(s\): .*\(7 in all\).*1 unexpected key\(s\): extra\.head\.weight"):
        load_model(key, weights=weights)


def test_medclip_wrong_shape_is_an_error(tmp_path, tiny):
    weights, ckpt = _weights("medclip", _copy(tiny["medclip"], tmp_path / "m"))
    _edit(ckpt, lambda sd: sd.__setitem__("text_model.projection_head.weight", torch.zeros(24, 8)))
    with pytest.raises(ModelError, match="text_model.projection_head.weight"):
        load_model("medclip", weights=weights)


# ---- unreadable files --------------------------------------------------------------------------


@pytest.mark.parametrize("key", tm.VLM_KEYS)
def test_truncated_weights_file_names_it(key, tmp_path, tiny):
    weights, ckpt = _weights(key, _copy(tiny[key], tmp_path / key))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=str(ckpt).replace(".", r"\.")) as info:
        load_model(key, weights=weights)
    assert "corrupt" in str(info.value)


def test_medclip_truncated_bin_names_it(tmp_path, tiny):
    folder = _extract(tiny["medclip"], tmp_path / "m")
    ckpt = folder / "pytorch_model.bin"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(ModelError, match=str(ckpt).replace(".", r"\.") + ".*corrupt"):
        load_model("medclip", weights=str(folder))


def test_medclip_pickled_objects_are_refused(tmp_path, tiny):
    weights, ckpt = _weights("medclip", _copy(tiny["medclip"], tmp_path / "m"))
    _edit(ckpt, lambda sd: sd.__setitem__("args", argparse.Namespace(lr=1)))
    with pytest.raises(ModelError, match="refuses to unpickle"):
        load_model("medclip", weights=weights)
