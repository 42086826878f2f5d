"""fmcache.embed.sam3d against SAM-Med3D's official modules (PyPI ``medim``), on tiny random models.

medim's model file is loaded on its own: the package's ``__init__`` imports its hub helpers,
which need ``requests`` (not among medim's declared dependencies) and nothing the model uses.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_sam3d import FAST, TINY
from helpers.tiny_sam3d import randomise as _randomise

from fmcache.embed.sam3d import ARCHS, Sam3D, build_sam3d, load_sam3d
from fmcache.errors import ModelError

NOMINAL_TINY = {"num_heads": 4}
NOMINAL_FAST = {"num_heads": 4, "block_style": "fastsam3d"}
TOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    """medim's ``models/sam_med3d.py`` with its two package imports stubbed."""
    spec = importlib.util.find_spec("medim")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("medim (SAM-Med3D's official code) is not installed")
    src = Path(list(spec.submodule_search_locations)[0]) / "models" / "sam_med3d.py"
    pkg = types.ModuleType("_medim_ref")
    pkg.__path__ = []
    registry = types.ModuleType("_medim_ref._registry")
    registry.register_model = lambda name: (lambda fn: fn)
    pretrain = types.ModuleType("_medim_ref._pretrain")
    pretrain.load_pretrained_weights = None
    saved = {k: sys.modules.get(k) for k in ("_medim_ref", "_medim_ref._registry", "_medim_ref._pretrain")}
    sys.modules.update({"_medim_ref": pkg, "_medim_ref._registry": registry, "_medim_ref._pretrain": pretrain})
    try:
        mspec = importlib.util.spec_from_file_location("_medim_ref.sam_med3d", src)
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def _official(ref, g: dict):
    """medim's SAM_Med3D with the small geometry ``g`` (its decoder fixes depth 2, 8 heads, MLP 2048)."""
    from functools import partial

    grid = g["img_size"] // g["patch_size"]
    enc = ref.ImageEncoderViT3D(
        depth=g["depth"], embed_dim=g["embed_dim"], img_size=g["img_size"], mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=g["num_heads"], patch_size=g["patch_size"],
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(g["global_attn_indexes"]),
        window_size=g["window_size"], out_chans=g["out_chans"],
    )
    prompt = ref.PromptEncoder3D(
        embed_dim=g["out_chans"], image_embedding_size=(grid,) * 3, input_image_size=(g["img_size"],) * 3,
        mask_in_chans=g["mask_in_chans"],
    )
    dec = ref.MaskDecoder3D(
        num_multimask_outputs=3, transformer_dim=g["out_chans"], iou_head_depth=3,
        iou_head_hidden_dim=g["iou_head_hidden_dim"],
    )
    return ref.SAM_Med3D(image_encoder=enc, prompt_encoder=prompt, mask_decoder=dec).eval()


@pytest.fixture(scope="module")
def pair(ref):
    ours = _randomise(Sam3D(**TINY))
    official = _official(ref, TINY)
    official.load_state_dict(ours.state_dict(), strict=True)  # also proves the key sets agree
    return ours, official


def _block(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 1, 64, 64, 64, generator=torch.Generator().manual_seed(seed))


def _prompts(k: int, b: int = 2, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    points = torch.randint(0, 64, (b, k, 3), generator=g).float()
    labels = torch.ones(b, k, dtype=torch.long)
    if k > 1:
        labels[:, 1] = 0  # a negative click
    if k > 3:
        labels[0, -1] = -1  # a padded slot in one batch item
    return points, labels


def _official_decode(official, feats, block, points, labels):
    """SAM-Med3D's ``sam_model_infer`` (utils/infer_utils.py) from the image embedding on."""
    low_prev = torch.zeros(block.shape[0], 1, *(s // 4 for s in block.shape[-3:]))
    sparse, dense = official.prompt_encoder(points=[points, labels], boxes=None, masks=low_prev)
    low, _ = official.mask_decoder(
        image_embeddings=feats, image_pe=official.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
    )
    return F.interpolate(low, size=block.shape[-3:], mode="trilinear", align_corners=False)[:, 0]


def test_keys_equal_official(pair):
    ours, official = pair
    assert set(ours.state_dict()) == set(official.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in official.state_dict().items())


def test_release_geometry_keys_equal_official(ref):
    # the full-size vit_b_ori: same keys and shapes as the official builder, and the geometry is
    # recovered from those shapes alone
    official = ref.build_sam3D_vit_b_ori()
    sd = official.state_dict()
    ours = Sam3D(**ARCHS["vit_b_ori"])
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert build_sam3d(sd, "vit_b_ori").geometry == ours.geometry
    assert ours.state_dict()["image_encoder.blocks.0.attn.rel_pos_d"].shape == (27, 64)
    assert ours.state_dict()["image_encoder.blocks.2.attn.rel_pos_d"].shape == (15, 64)


def test_encoder_matches_official(pair):
    ours, official = pair
    x = _block()
    with torch.no_grad():
        a, b = ours.encode(x), official.image_encoder(x)
    assert a.shape == (2, 48, 4, 4, 4)
    assert b.abs().max() > 0.1
    assert (a - b).abs().max() < TOL


@pytest.mark.parametrize("k", [1, 5])
def test_decode_matches_official(pair, k):
    ours, official = pair
    x = _block()
    points, labels = _prompts(k)
    with torch.no_grad():
        feats = ours.encode(x)
        a = ours.decode(feats, points, labels)
        b = _official_decode(official, official.image_encoder(x), x, points, labels)
    assert a.shape == (2, 64, 64, 64) and a.dtype == torch.float32
    assert b.std() > 0.01
    # a deeper float32 path than the encoder's (transposed convolutions, trilinear upsampling):
    # 2e-5 apart on masks whose values reach 0.4, with the pip stack of December 2026
    assert (a - b).abs().max() < 1e-4


def test_decode_depends_on_prompts(pair):
    # the prompts (position and sign) reach the logits; a mask that ignored them would pass
    # nothing above only if the reference did the same
    ours, _ = pair
    x = _block(1)
    points, labels = _prompts(1, b=1)
    with torch.no_grad():
        feats = ours.encode(x)
        base = ours.decode(feats, points, labels)
        moved = ours.decode(feats, points.flip(-1), labels)
        negated = ours.decode(feats, points, 1 - labels)
    assert (base - moved).abs().max() > 1e-3
    assert (base - negated).abs().max() > 1e-3


def test_forward_is_decode_of_encode(pair):
    ours, _ = pair
    x = _block()
    points, labels = _prompts(3)
    with torch.no_grad():
        assert torch.equal(ours(x, points, labels), ours.decode(ours.encode(x), points, labels))


def test_encode_rejects_wrong_block_size(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="64, 64, 64"):
        ours.encode(torch.zeros(1, 1, 32, 64, 64))


# ---------------------------------------------------------------------------------------------
# FastSAM3D's encoder


def _ln(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, 1e-6)


def _mlp(x, mlp):
    return F.linear(F.gelu(F.linear(x, mlp.lin1.weight, mlp.lin1.bias)), mlp.lin2.weight, mlp.lin2.bias)


def test_fastsam3d_keys_skip_attention():
    sd = Sam3D(**FAST).state_dict()
    for i in (0, 1):
        assert not any(k.startswith((f"image_encoder.blocks.{i}.attn", f"image_encoder.blocks.{i}.norm1")) for k in sd)
        assert f"image_encoder.blocks.{i}.norm2.weight" in sd and f"image_encoder.blocks.{i}.mlp.lin1.weight" in sd
    assert "image_encoder.blocks.2.attn.qkv.weight" in sd and "image_encoder.blocks.2.norm1.weight" in sd
    # all global: every table spans the 4³ grid
    assert all(sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape == (7, 12) for i in (2, 3))
    built = build_sam3d(sd, NOMINAL_FAST)
    assert built.geometry["skip_layers"] == 2 and built.geometry["window_size"] == 0
    assert built.geometry["depth"] == 4


def test_fastsam3d_encoder_is_hand_composition(ref):
    """FastSAM3D's blocks (image_encoder3D.py): without attention x -> n + mlp(n), n = norm2(x);
    with attention x -> n + mlp(n), n = norm2(x + attn(norm1(x))). The attention is medim's."""
    ours = _randomise(Sam3D(**FAST), seed=3)
    enc = ours.image_encoder
    attn = {}
    for i in (2, 3):
        a = ref.Attention(48, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=(4, 4, 4))
        a.load_state_dict(enc.blocks[i].attn.state_dict())
        attn[i] = a
    x = _block(1, seed=4)
    with torch.no_grad():
        h = enc.patch_embed.proj(x).permute(0, 2, 3, 4, 1) + enc.pos_embed
        for i, blk in enumerate(enc.blocks):
            before = h
            if i < 2:
                n = _ln(h, blk.norm2)
            else:
                n = _ln(h + attn[i](_ln(h, blk.norm1)), blk.norm2)
            h = n + _mlp(n, blk.mlp)
            assert (blk(before) - h).abs().max() < TOL, i
        want = enc.neck(h.permute(0, 4, 1, 2, 3))
        got = ours.encode(x)
    assert (got - want).abs().max() < TOL
    # the block style is real: SAM-Med3D's residual order on the same weights gives other features
    sam_style = Sam3D(**dict(FAST, block_style="sam"))
    sam_style.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert (sam_style.encode(x) - got).abs().max() > 1e-2


def test_fastsam3d_decode_matches_official(ref):
    # prompt encoder and mask decoder are SAM-Med3D's: the official ones on our features agree
    ours = _randomise(Sam3D(**FAST), seed=5)
    official = _official(ref, TINY)
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("image_encoder.")}
    official.prompt_encoder.load_state_dict({k[15:]: v for k, v in sd.items() if k.startswith("prompt_encoder.")})
    official.mask_decoder.load_state_dict({k[13:]: v for k, v in sd.items() if k.startswith("mask_decoder.")})
    x = _block(1)
    points, labels = _prompts(5, b=1)
    with torch.no_grad():
        feats = ours.encode(x)
        a = ours.decode(feats, points, labels)
        b = _official_decode(official, feats, x, points, labels)
    assert (a - b).abs().max() < TOL


# ---------------------------------------------------------------------------------------------
# strict loading


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _same_outputs(a: Sam3D, b: Sam3D) -> None:
    x = _block(1)
    points, labels = _prompts(2, b=1)
    with torch.no_grad():
        assert torch.equal(a(x, points, labels), b(x, points, labels))


def test_load_release_layout(pair, tmp_path):
    ours, _ = pair
    p = _save(tmp_path / "sam.pth", {"model_state_dict": ours.state_dict(), "epoch": 3})
    loaded = load_sam3d(p, "sammed3d", NOMINAL_TINY)
    assert not loaded.training
    assert loaded.geometry == ours.geometry
    _same_outputs(loaded, ours)


def test_load_module_prefix_and_flat(pair, tmp_path):
    ours, _ = pair
    sd = {"module." + k: v for k, v in ours.state_dict().items()}
    _same_outputs(load_sam3d(_save(tmp_path / "dp.pth", {"model_state_dict": sd}), "sammed3d", NOMINAL_TINY), ours)
    _same_outputs(load_sam3d(_save(tmp_path / "flat.pth", ours.state_dict()), "sammed3d", NOMINAL_TINY), ours)


@pytest.mark.parametrize(
    "change, named",
    [
        ("missing", "prompt_encoder.not_a_point_embed.weight"),
        ("extra", "mask_decoder.extra_head.weight"),
        ("misshapen", "mask_decoder.iou_token.weight"),
    ],
)
def test_load_strict_names_the_key(pair, tmp_path, change, named):
    ours, _ = pair
    sd = dict(ours.state_dict())
    if change == "missing":
        del sd[named]
    elif change == "extra":
        sd[named] = torch.zeros(3)
    else:
        sd[named] = torch.zeros(1, 47)
    p = _save(tmp_path / "bad.pth", {"model_state_dict": sd})
    with pytest.raises(ModelError, match=named.replace(".", r"\.")):
        load_sam3d(p, "sammed3d", NOMINAL_TINY)


def test_load_fastsam3d_full_layout(tmp_path):
    # the layout FastSAM3D's users report: image_encoder.-prefixed, blocks 0-1 MLP-only, with the
    # training script's argparse.Namespace beside the weights (allowed: it holds only values)
    fast = _randomise(Sam3D(**FAST), seed=6)
    p = _save(tmp_path / "fast.pth", {"model_state_dict": fast.state_dict(), "args": argparse.Namespace(a=1)})
    loaded = load_sam3d(p, "fastsam3d", NOMINAL_FAST)
    assert loaded.geometry["skip_layers"] == 2
    _same_outputs(loaded, fast)


def test_load_pickled_extras(pair, tmp_path):
    # FastSAM3D's release pickles argparse.Namespace, collections.Counter and torch.device:
    # fmcache allows the first, torch's weights_only the other two
    ours, _ = pair
    extras = {"args": argparse.Namespace(a=1), "counts": collections.Counter("ab"), "device": torch.device("cpu")}
    p = _save(tmp_path / "extras.pth", {"model_state_dict": ours.state_dict(), **extras})
    _same_outputs(load_sam3d(p, "fastsam3d", NOMINAL_TINY), ours)
    # any other class is refused with the command that re-saves the weights alone
    p = _save(tmp_path / "pickled.pth", {"model_state_dict": ours.state_dict(), "cfg": types.SimpleNamespace(a=1)})
    with pytest.raises(ModelError, match=r"weights_only=False\)\['model_state_dict'\]"):
        load_sam3d(p, "fastsam3d", NOMINAL_TINY)


def test_load_bare_encoder(tmp_path):
    fast = _randomise(Sam3D(**FAST), seed=7)
    teacher = _randomise(Sam3D(**TINY), seed=8)
    bare = {k.removeprefix("image_encoder."): v for k, v in fast.state_dict().items() if k.startswith("image_encoder.")}
    p = _save(tmp_path / "student.pth", {"model_state_dict": bare})
    with pytest.raises(ModelError, match="only an image encoder.*decoder_from"):
        load_sam3d(p, "fastsam3d", NOMINAL_FAST)
    sd = {k: v for k, v in fast.state_dict().items() if k.startswith("image_encoder.")}
    sd |= {k: v for k, v in teacher.state_dict().items() if not k.startswith("image_encoder.")}
    want = Sam3D(**FAST)
    want.load_state_dict(sd)
    t = _save(tmp_path / "teacher.pth", {"model_state_dict": teacher.state_dict()})
    _same_outputs(load_sam3d(p, "fastsam3d", NOMINAL_FAST, decoder_from=t), want.eval())
