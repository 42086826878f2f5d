"""Loaders of medmae, lvmmed, lvmmed_r50, mococxr and c2l against tiny training checkpoints in the real formats."""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmcache.embed.models import MODELS
from fmcache.embed.registry import load_model
from fmcache.embed.weights import sha256_file, weights_dir
from fmcache.errors import ModelError

from helpers import tiny_models as tm

# widths of the tiny models: the ResNets are the real torchvision ones, the ViTs are narrowed
TINY_DIMS = {
    "medmae": {"image": 128},
    "lvmmed": {"image": 64},
    "lvmmed_r50": {"image": 2048},
    "mococxr": {"image": 512},
    "c2l": {"image": 512, "image_proj": 128},
}


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints) -> dict[str, str]:
    return {key: tiny_checkpoints[key] for key in tm.FILE_KEYS}


def _batch(key: str) -> torch.Tensor:
    return tm.random_batch(2, size=MODELS[key].preprocess.size)


def _load_ckpt(path: Path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def _edit(src: str, dst: Path, key: str, edit) -> Path:
    """Copy ``src`` to ``dst`` with ``edit`` applied to its (nested) state dict, in the same format."""
    ckpt = _load_ckpt(Path(src))
    entry = MODELS[key].config.get("container")
    edit(ckpt[entry] if entry else ckpt)
    torch.save(ckpt, dst, _use_new_zipfile_serialization=key != "mococxr")
    return dst


# ---- features equal the authors' way of running the model ---------------------------------


@pytest.mark.parametrize("key", tm.FILE_KEYS)
def test_features_match_direct_computation(key, tiny):
    enc = load_model(key, weights=tiny[key])
    assert not enc.module.training and enc.encode_text is None and enc.text_dim is None
    x = _batch(key)
    got, want = enc.encode_image(x), tm.direct_features(key, tiny[key], x)
    assert set(got) == set(want) == set(TINY_DIMS[key])
    for kind, ref in want.items():
        np.testing.assert_allclose(got[kind].numpy(), ref, atol=1e-5, rtol=0)
    assert enc.dims == TINY_DIMS[key] == {k: v.shape[1] for k, v in got.items()}
    assert enc.weights_id == tm.FILE_NAMES[key] == MODELS[key].weights.removeprefix("file:")
    assert enc.weights_sha256 == sha256_file(tiny[key])


def test_resnet_entries_have_the_real_widths():
    # the tiny ResNets are the real architectures, so their widths are the entries' nominal ones
    for key in ("lvmmed_r50", "mococxr", "c2l"):
        assert dict(MODELS[key].dims) == TINY_DIMS[key]


def test_real_vit_geometry_is_read_off_the_tensors():
    from functools import partial

    import timm
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    from fmcache.embed.loaders import sam_vit, timm_vit_mae

    with torch.device("meta"):  # full-size shapes without the memory
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        sam = ImageEncoderViT(**sam_vit.SAM_VIT_B, use_abs_pos=False, use_rel_pos=True,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    assert timm_vit_mae.geometry(vit.state_dict()) == timm_vit_mae.VIT_B16
    assert sam_vit.geometry(sam.state_dict()) == sam_vit.SAM_VIT_B
    assert sam.state_dict()["blocks.2.attn.rel_pos_h"].shape == (127, 64)  # the release's global tables


def test_default_weights_come_from_the_weights_directory(tiny):
    weights_dir().mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny["c2l"], weights_dir() / "res18_C2L.pth")
    enc = load_model("c2l")
    assert enc.weights_id == "res18_C2L.pth"
    with pytest.raises(ModelError, match=r"lvmmed_vit\.pth.*not found|not found.*lvmmed_vit\.pth"):
        load_model("lvmmed")


# ---- pickled extras ---------------------------------------------------------------------------


@pytest.mark.parametrize("key,entry", [("c2l", "opt"), ("medmae", "args")])
def test_namespace_file_loads_with_weights_only(key, entry, tiny, monkeypatch):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tiny[key], weights_only=True)  # the file really pickles a Namespace
    assert isinstance(_load_ckpt(Path(tiny[key]))[entry], argparse.Namespace)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(key, weights=tiny[key])
    assert calls == [True]


def test_other_pickled_classes_are_refused_with_a_resave_hint(tiny, tmp_path):
    path = tmp_path / "res18_C2L.pth"
    ckpt = _load_ckpt(Path(tiny["c2l"]))
    torch.save({**ckpt, "save_dir": Path("/runs/c2l")}, path)  # any class but Namespace
    with pytest.raises(ModelError, match=r"refuses to unpickle.*weights_only=False\)\['model'\]") as info:
        load_model("c2l", weights=str(path))
    assert "\n" not in str(info.value)
    # what the hint says to do: the weights alone, still prefixed, load to the same features
    resaved = tmp_path / "res18_C2L.pth.weights.pth"
    torch.save(ckpt["model"], resaved)
    x = _batch("c2l")
    got = load_model("c2l", weights=str(resaved)).encode_image(x)
    np.testing.assert_allclose(got["image_proj"].numpy(), tm.direct_features("c2l", tiny["c2l"], x)["image_proj"],
                               atol=1e-5)


def test_c2l_without_its_head_has_no_projection(tiny, tmp_path):
    path = _edit(tiny["c2l"], tmp_path / "c2l.pth", "c2l",
                 lambda sd: [sd.pop(k) for k in ("encoder.module.fc.weight", "encoder.module.fc.bias")])
    enc = load_model("c2l", weights=str(path))
    assert enc.dims == {"image": 512} and set(enc.encode_image(_batch("c2l"))) == {"image"}


# ---- strict loading ------------------------------------------------------------------------------


def _backbone_key(sd: dict, key: str) -> str:
    keep = {"mococxr": "module.encoder_q.layer4", "c2l": "encoder.module.layer4", "lvmmed_r50": "layer4",
            "medmae": "blocks.1", "lvmmed": "blocks.1"}[key]
    return max(k for k in sd if k.startswith(keep) and k.endswith(".weight"))


@pytest.mark.parametrize("key", tm.FILE_KEYS)
def test_mismatched_checkpoint_names_missing_and_unexpected_keys(key, tiny, tmp_path):
    names = {}

    def edit(sd):
        old = names["old"] = _backbone_key(sd, key)
        sd[old + "_renamed"] = sd.pop(old)
        sd["extra.head.weight"] = torch.zeros(3)

    path = _edit(tiny[key], tmp_path / tm.FILE_NAMES[key], key, edit)
    with pytest.raises(ModelError) as info:
        load_model(key, weights=str(path))
    msg = str(info.value)
    stripped = names["old"].removeprefix("module.encoder_q.").removeprefix("encoder.module.")
    assert str(path) in msg and "1 missing key(s)" in msg and stripped in msg
    assert "2 unexpected key(s)" in msg and stripped + "_renamed" in msg and "extra.head.weight" in msg


@pytest.mark.parametrize("key,other", [("c2l", "medmae"), ("medmae", "lvmmed"), ("lvmmed", "c2l"),
                                       ("mococxr", "lvmmed_r50")])
def test_another_models_checkpoint_is_refused(key, other, tiny, tmp_path):
    src = Path(tiny[other])
    path = tmp_path / src.name
    shutil.copy(src, path)
    with pytest.raises(ModelError, match=r"do not match the architecture|is not a( flat)? state dict"):
        load_model(key, weights=str(path))


def test_misshapen_tensor_is_named(tiny, tmp_path):
    path = _edit(tiny["c2l"], tmp_path / "c2l.pth", "c2l",
                 lambda sd: sd.__setitem__("encoder.module.conv1.weight", torch.zeros(64, 3, 3, 3)))
    with pytest.raises(ModelError, match=r"conv1\.weight \(64, 3, 3, 3\) \(expected \(64, 3, 7, 7\)\)"):
        load_model("c2l", weights=str(path))


def test_undroppable_non_backbone_entry_is_an_error(tiny, tmp_path):
    # only the listed MoCo parts are dropped: an unknown module-level buffer is reported
    path = _edit(tiny["mococxr"], tmp_path / "moco.pth.tar", "mococxr",
                 lambda sd: sd.__setitem__("module.queue_labels", torch.zeros(4)))
    with pytest.raises(ModelError, match=r"1 unexpected key\(s\): module\.queue_labels"):
        load_model("mococxr", weights=str(path))


def test_unsupported_architecture_is_named(tiny, tmp_path):
    path = tmp_path / "d1w-00001.pth.tar"
    ckpt = _load_ckpt(Path(tiny["mococxr"]))
    torch.save({**ckpt, "arch": "densenet121"}, path)
    with pytest.raises(ModelError, match="densenet121"):
        load_model("mococxr", weights=str(path))


def test_checkpoint_without_the_expected_nesting(tmp_path):
    path = tmp_path / "res18_C2L.pth"
    torch.save({"epoch": 3, "model": [1, 2]}, path)
    with pytest.raises(ModelError, match=r"not a state dict under 'model'.*epoch, model"):
        load_model("c2l", weights=str(path))


def test_missing_segment_anything_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything.modeling.image_encoder", None)
    with pytest.raises(ModelError, match="pip install segment-anything"):
        load_model("lvmmed", weights=tiny["lvmmed"])


# ---- unreadable files ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", tm.FILE_KEYS)
def test_truncated_file_is_named(key, tiny, tmp_path):
    path = tmp_path / tm.FILE_NAMES[key]
    data = Path(tiny[key]).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=str(path).replace(".", r"\.")) as info:
        load_model(key, weights=str(path))
    assert "truncated or corrupt" in str(info.value)
