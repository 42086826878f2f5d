"""Loaders of clip, biomedclip, pubmedclip and dinov2 against tiny checkpoints in the real formats."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fmcache.embed.models import MODELS
from fmcache.embed.registry import load_model
from fmcache.embed.weights import sha256_file
from fmcache.errors import FmcacheError, ModelError

from helpers import tiny_models as tm

VLMS = ("clip", "biomedclip", "pubmedclip")
PROMPTS = ["a chest x-ray with pleural effusion", "normal lung", ""]
# widths of the tiny models (pre-projection, post-projection)
TINY_DIMS = {
    "clip": {"image": 64, "image_proj": 32},
    "biomedclip": {"image": 192, "image_proj": 32},
    "pubmedclip": {"image": 48, "image_proj": 24},
    "dinov2": {"image": 32},
}
# torch.jit is deprecated, but OpenAI's CLIP release is a TorchScript archive
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints) -> dict[str, str]:
    return {key: tiny_checkpoints[key] for key in tm.HUB_KEYS}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return tm.random_batch(2)


def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _weights_file(folder: Path) -> Path:
    return next(folder / n for n in WEIGHT_FILES if (folder / n).is_file())


def _rewrite(path: Path, edit) -> None:
    """Apply ``edit`` to the state dict in ``path`` and save it back in the same format."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        sd = load_file(str(path))
        edit(sd)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        sd = torch.load(path, weights_only=True)
        edit(sd)
        torch.save(sd, path)


def _assert_features(enc, key: str, weights: str, batch: torch.Tensor) -> None:
    got = enc.encode_image(batch)
    want = tm.direct_features(key, weights, batch)
    assert set(got) == set(want) == set(TINY_DIMS[key])
    for kind, arr in want.items():
        np.testing.assert_allclose(got[kind].numpy(), arr, atol=1e-5, rtol=0)
    assert enc.dims == TINY_DIMS[key] == {k: v.shape[1] for k, v in got.items()}


# ---- features and text match the libraries' own calls ----------------------------------------


@pytest.mark.parametrize("key", tm.HUB_KEYS)
def test_tiny_checkpoint_matches_library(key, tiny, batch):
    enc = load_model(key, weights=tiny[key])
    assert not enc.module.training
    _assert_features(enc, key, tiny[key], batch)
    ckpt = _weights_file(Path(tiny[key]))
    assert enc.weights_sha256 == sha256_file(ckpt)
    assert enc.weights_id == f"{key}/{ckpt.name}"
    if key not in VLMS:
        assert enc.encode_text is None and enc.text_dim is None
        return
    text = enc.encode_text(PROMPTS)
    assert tuple(text.shape) == (len(PROMPTS), enc.text_dim) and enc.text_dim == TINY_DIMS[key]["image_proj"]
    np.testing.assert_allclose(text.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(text.numpy(), tm.direct_text(key, tiny[key], PROMPTS), atol=1e-5, rtol=0)
    assert enc.logit_scale == pytest.approx(float(enc.module.logit_scale.detach().exp()))


def test_clip_logit_scale_is_exp_of_stored(tiny):
    assert load_model("clip", weights=tiny["clip"]).logit_scale == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize("nested", [False, True], ids=["openai-flat", "pubmedclip-nested-fp16"])
def test_clip_openai_state_dict_file(nested, tmp_path, batch):
    path = tm.build_openai_clip_file(tmp_path, nested=nested)
    enc = load_model("clip", weights=path)
    got = enc.encode_image(batch)
    want = tm.direct_features("clip", path, batch)
    for kind in want:
        np.testing.assert_allclose(got[kind].numpy(), want[kind], atol=1e-5, rtol=0)
    assert enc.weights_id == Path(path).name
    np.testing.assert_allclose(enc.encode_text(PROMPTS).numpy(), tm.direct_text("clip", path, PROMPTS), atol=1e-5)


def test_clip_torchscript_archive(tmp_path, batch):
    model = tm._tiny_open_clip()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(model).save(str(path))
    with pytest.raises(ModelError, match=r"TorchScript archive.*--trust-code"):
        load_model("clip", weights=str(path))
    enc = load_model("clip", weights=str(path), trust_code=True)
    with torch.no_grad():
        np.testing.assert_allclose(enc.encode_image(batch)["image_proj"].numpy(), model.encode_image(batch).numpy(),
                                   atol=1e-5)


def test_biomedclip_text_config_from_local_path(tmp_path, tiny, batch):
    # hf_model_name rewritten by the user to a folder elsewhere holding the text config
    folder = _copy(tiny["biomedclip"], tmp_path / "bmc")
    text_dir = tmp_path / "bert"
    text_dir.mkdir()
    (folder / "config.json").rename(text_dir / "config.json")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["hf_model_name"] = str(text_dir)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    got = load_model("biomedclip", weights=str(folder)).encode_image(batch)
    want = tm.direct_features("biomedclip", tiny["biomedclip"], batch)
    np.testing.assert_allclose(got["image_proj"].numpy(), want["image_proj"], atol=1e-5)


def test_biomedclip_unresolvable_text_tower_names_the_repo(tmp_path, tiny):
    folder = _copy(tiny["biomedclip"], tmp_path / "bmc")
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match=r"tiny-random/BiomedBERT-uncased.*HF_HUB_OFFLINE.*config\.json"):
        load_model("biomedclip", weights=str(folder))


# ---- the hub path, offline -------------------------------------------------------------------


def _into_hub_cache(src: str, repo: str, commit: str) -> None:
    """Lay a folder out as a Hugging Face cache snapshot of ``repo`` under $HF_HOME."""
    import os

    base = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("key", tm.HUB_KEYS)
def test_hub_offline_from_cache(key, tiny, batch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = MODELS[key].weights.removeprefix("hf-hub:")
    _into_hub_cache(tiny[key], repo, commit)
    enc = load_model(key)
    assert enc.weights_id == f"{repo}@{commit}"
    np.testing.assert_allclose(enc.encode_image(batch)["image"].numpy(),
                               tm.direct_features(key, tiny[key], batch)["image"], atol=1e-5)


@pytest.mark.parametrize("key", tm.HUB_KEYS)
def test_hub_offline_not_cached(key):
    repo = MODELS[key].weights.removeprefix("hf-hub:")
    with pytest.raises(ModelError) as info:
        load_model(key)
    msg = str(info.value)
    assert repo in msg and "HF_HUB_OFFLINE" in msg and "--weights PATH" in msg
    assert "\n" not in msg and info.value.__cause__ is None


def test_explicit_hub_id_offline_not_cached():
    with pytest.raises(ModelError, match="someone/absent-repo.*HF_HUB_OFFLINE"):
        load_model("dinov2", weights="hf-hub:someone/absent-repo")


# ---- strict loading ----------------------------------------------------------------------------


def _rename_one(sd: dict) -> tuple[str, str]:
    old = sorted(k for k in sd if k.endswith(".weight"))[-1]
    sd[old + "_renamed"] = sd.pop(old)
    return old, old + "_renamed"


@pytest.mark.parametrize("key", tm.HUB_KEYS)
def test_renamed_key_is_an_error_naming_both(key, tmp_path, tiny):
    folder = _copy(tiny[key], tmp_path / key)
    names = {}
    _rewrite(_weights_file(folder), lambda sd: names.update(zip(("old", "new"), _rename_one(sd))))
    with pytest.raises(ModelError) as info:
        load_model(key, weights=str(folder))
    msg = str(info.value)
    assert "1 missing key(s)" in msg and names["old"] in msg
    assert "1 unexpected key(s)" in msg and names["new"] in msg


@pytest.mark.parametrize("key", tm.HUB_KEYS)
def test_extra_and_missing_keys_are_errors(key, tmp_path, tiny):
    folder = _copy(tiny[key], tmp_path / key)

    def edit(sd):
        sd["extra.head.weight"] = torch.zeros(3)
        for k in sorted(k for k in sd if k.endswith(".bias"))[:7]:
            del sd[k]

    _rewrite(_weights_file(folder), edit)
    with pytest.raises(ModelError, match=r"7 missing key\(s\): .*\(7 in all\).*1 unexpected key\(s\): extra\.head\.weight"):
        load_model(key, weights=str(folder))


def test_wrong_shape_is_an_error(tmp_path, tiny):
    folder = _copy(tiny["clip"], tmp_path / "clip")
    _rewrite(_weights_file(folder), lambda sd: sd.__setitem__("visual.proj", torch.zeros(64, 16)))
    with pytest.raises(ModelError, match="visual.proj"):
        load_model("clip", weights=str(folder))


def test_openai_file_with_foreign_keys_lists_them(tmp_path):
    path = tmp_path / "not-clip.pt"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match=r"missing key\(s\).*unexpected key\(s\): decoder\.bias, encoder\.weight"):
        load_model("clip", weights=str(path))


# ---- unreadable files --------------------------------------------------------------------------


@pytest.mark.parametrize("key", tm.HUB_KEYS)
def test_truncated_weights_file_names_it(key, tmp_path, tiny):
    folder = _copy(tiny[key], tmp_path / key)
    ckpt = _weights_file(folder)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=str(ckpt).replace(".", r"\.")) as info:
        load_model(key, weights=str(folder))
    assert "corrupt" in str(info.value)


def test_pickled_objects_are_refused(tmp_path):
    path = tm.build_openai_clip_file(tmp_path)
    obj = torch.load(path, weights_only=True)
    torch.save({"state_dict": obj, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ModelError, match="refuses to unpickle"):
        load_model("clip", weights=path)


def test_missing_local_path_and_bad_folder(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model("clip", weights=str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="open_clip_config.json"):
        load_model("biomedclip", weights=str(tmp_path))
    with pytest.raises(ModelError, match="save_pretrained"):
        load_model("pubmedclip", weights=str(tmp_path))


def test_errors_are_fmcache_errors():
    assert issubclass(ModelError, FmcacheError)
