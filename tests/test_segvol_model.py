"""SegVol in plain torch: release key layout, strict loading, the (X, Y, Z) interface, zoom-out-zoom-in."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

segvol = pytest.importorskip("fmcache.embed.segvol")
pytest.importorskip("monai")
pytest.importorskip("transformers")

from helpers.tiny_segvol import TINY, write_tiny_tokenizer  # noqa: E402

from fmcache.errors import ModelError  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = segvol.SegVol(TINY).eval()
    # SegVol's zero-initialised embeddings would make some prompts indistinguishable
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def block(model):
    torch.manual_seed(1)
    return torch.rand(2, 1, *model.input_shape)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


# ---------------------------------------------------------------------------------------------
# release layout and strict loading


def expected_release_keys(cfg, text=True):
    """The HF file's tensor names, written out from SegVol's module tree (SegVolModel.model)."""
    keys = ["image_encoder.patch_embedding.position_embeddings",
            "image_encoder.patch_embedding.patch_embeddings.1.weight",
            "image_encoder.patch_embedding.patch_embeddings.1.bias", "image_encoder.norm.weight",
            "image_encoder.norm.bias"]
    for i in range(cfg.num_layers):
        for part in ("mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias",
                     "norm1.weight", "norm1.bias", "attn.out_proj.weight", "attn.out_proj.bias", "attn.qkv.weight",
                     "norm2.weight", "norm2.bias"):
            keys.append(f"image_encoder.blocks.{i}.{part}")
    keys += ["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.not_a_point_embed.weight",
             "prompt_encoder.no_mask_embed.weight"]
    keys += [f"prompt_encoder.point_embeddings.{i}.weight" for i in range(4)]
    for i in (0, 1, 3, 4, 6):
        keys += [f"prompt_encoder.mask_downscaling.{i}.weight", f"prompt_encoder.mask_downscaling.{i}.bias"]
    attn = [f"{p}_proj.{w}" for p in "qkv" + "o" for w in ("weight", "bias")]
    attn = [a.replace("o_proj", "out_proj") for a in attn]
    for i in range(cfg.decoder_depth):
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            keys += [f"mask_decoder.transformer.layers.{i}.{a}.{x}" for x in attn]
        for n in ("norm1", "norm2", "norm3", "norm4"):
            keys += [f"mask_decoder.transformer.layers.{i}.{n}.weight", f"mask_decoder.transformer.layers.{i}.{n}.bias"]
        keys += [f"mask_decoder.transformer.layers.{i}.mlp.{x}" for x in
                 ("lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias")]
    keys += [f"mask_decoder.transformer.final_attn_token_to_image.{x}" for x in attn]
    keys += ["mask_decoder.transformer.norm_final_attn.weight", "mask_decoder.transformer.norm_final_attn.bias",
             "mask_decoder.iou_token.weight", "mask_decoder.mask_tokens.weight",
             "mask_decoder.txt_align_upscaled_embedding.weight", "mask_decoder.txt_align_upscaled_embedding.bias"]
    for i in (0, 1, 3):
        keys += [f"mask_decoder.output_upscaling.{i}.weight", f"mask_decoder.output_upscaling.{i}.bias"]
    for m in range(cfg.num_multimask_outputs + 1):
        for j in range(3):
            keys += [f"mask_decoder.output_hypernetworks_mlps.{m}.layers.{j}.weight",
                     f"mask_decoder.output_hypernetworks_mlps.{m}.layers.{j}.bias"]
    for j in range(3):
        keys += [f"mask_decoder.iou_prediction_head.layers.{j}.weight",
                 f"mask_decoder.iou_prediction_head.layers.{j}.bias"]
    if text:
        t = "text_encoder.clip_text_model.text_model."
        keys += [t + "embeddings.token_embedding.weight", t + "embeddings.position_embedding.weight",
                 t + "embeddings.position_ids", t + "final_layer_norm.weight", t + "final_layer_norm.bias",
                 "text_encoder.dim_align.weight", "text_encoder.dim_align.bias"]
        for i in range(cfg.text["num_hidden_layers"]):
            for p in ("k_proj", "v_proj", "q_proj", "out_proj"):
                keys += [f"{t}encoder.layers.{i}.self_attn.{p}.{w}" for w in ("weight", "bias")]
            for p in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
                keys += [f"{t}encoder.layers.{i}.{p}.{w}" for w in ("weight", "bias")]
    return {"model." + k for k in keys}


def test_release_key_names_are_segvols(model):
    sd = segvol.to_release_keys(model)
    assert set(sd) == expected_release_keys(TINY)
    # SegVol's upscaling LayerNorm normalises over channels and the doubled (D, H, W) grid
    assert tuple(sd["model.mask_decoder.output_upscaling.1.weight"].shape) == (12, 4, 4, 6)
    assert tuple(sd["model.image_encoder.patch_embedding.patch_embeddings.1.weight"].shape) == (48, 4 * 16 * 16)
    assert tuple(sd["model.mask_decoder.txt_align_upscaled_embedding.weight"].shape) == (6, 48)
    assert tuple(sd["model.text_encoder.dim_align.weight"].shape) == (48, 16)


def _outputs(m, block):
    pts = torch.tensor([[[3.0, 4.0, 5.0]], [[40.0, 20.0, 2.0]]])
    lab = torch.tensor([[1.0], [0.0]])
    box = torch.tensor([[1.0, 2.0, 1.0, 20.0, 25.0, 6.0], [0.0, 0.0, 0.0, 47.0, 31.0, 7.0]])
    with torch.no_grad():
        return m(block, pts, lab, box)


def test_hf_file_loads_strictly_and_reproduces_outputs(model, block, tmp_path):
    torch.save(segvol.to_release_keys(model), tmp_path / "pytorch_model.bin")
    loaded = segvol.load_segvol(tmp_path, config=TINY)
    assert not loaded.training
    assert torch.equal(_outputs(loaded, block), _outputs(model, block))


def test_github_checkpoint_loads(model, block, tmp_path):
    sd = {"module." + k.removeprefix("model."): v for k, v in segvol.to_release_keys(model).items()}
    path = tmp_path / "medsam_model_e500.pth"
    torch.save({"model": sd, "epoch": 499, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, path)
    loaded = segvol.load_segvol(path, config=TINY)
    assert torch.equal(_outputs(loaded, block), _outputs(model, block))


@pytest.mark.parametrize("change, named", [
    ("drop", "mask_decoder.iou_token.weight"),
    ("add", "mask_decoder.extra.weight"),
    ("reshape", "prompt_encoder.no_mask_embed.weight"),
])
def test_mismatched_keys_raise_naming_them(model, tmp_path, change, named):
    sd = segvol.to_release_keys(model)
    if change == "drop":
        del sd["model." + named]
    elif change == "add":
        sd["model." + named] = torch.zeros(3)
    else:
        sd["model." + named] = torch.zeros(2, 48)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match=named.replace(".", r"\.")):
        segvol.load_segvol(tmp_path, config=TINY)


def test_position_ids_must_be_a_range(model, tmp_path):
    sd = segvol.to_release_keys(model)
    sd["model." + segvol.RELEASE_DROPPED[0]] = torch.arange(40).flip(0)[None]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="position_ids"):
        segvol.load_segvol(tmp_path, config=TINY)


def test_checkpoint_without_text_tower_builds_without_text(model, block, tmp_path):
    sd = {k: v for k, v in segvol.to_release_keys(model).items() if ".text_encoder." not in k}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    loaded = segvol.load_segvol(tmp_path, config=TINY)
    assert not loaded.has_text
    assert torch.equal(_outputs(loaded, block), _outputs(model, block))
    with pytest.raises(ModelError, match="text prompts are unavailable"):
        loaded.decode(loaded.encode(block), text="liver")


# ---------------------------------------------------------------------------------------------
# the cacheable split and the encoder


@pytest.mark.parametrize("kind", ["points", "boxes", "both"])
def test_forward_equals_decode_of_encode(model, block, kind):
    pts = torch.tensor([[[3.0, 4.0, 5.0], [10.0, 1.0, 0.0]], [[40.0, 20.0, 2.0], [0.0, 0.0, 7.0]]])
    lab = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    box = torch.tensor([[1.0, 2.0, 1.0, 20.0, 25.0, 6.0], [5.0, 3.0, 0.0, 47.0, 31.0, 7.0]])
    kw = {"points": {"points": pts, "labels": lab}, "boxes": {"boxes": box},
          "both": {"points": pts, "labels": lab, "boxes": box}}[kind]
    with torch.no_grad():
        full = model(block, **kw)
        split = model.decode(model.encode(block), **kw)
        other = model.decode(model.encode(block.flip(2)), **kw)
    assert full.shape == (2, 48, 32, 8) and full.dtype == torch.float32
    assert torch.equal(full, split)
    assert not torch.allclose(full, other)  # the image matters


def test_image_encoder_equals_monai_vit(model, block):
    from monai.networks.nets import ViT

    vit = ViT(in_channels=1, img_size=(8, 32, 48), patch_size=(4, 16, 16), hidden_size=48, mlp_dim=96, num_layers=2,
              num_heads=2, proj_type="perceptron", classification=False).eval()
    missing, unexpected = vit.load_state_dict(model.image_encoder.state_dict(), strict=False)
    assert not unexpected and all("norm_cross_attn" in k for k in missing)
    with torch.no_grad():
        tokens, _ = vit(block.permute(0, 1, 4, 3, 2))  # (X, Y, Z) -> (Z, Y, X) = (D, H, W)
        grid = tokens.transpose(1, 2).reshape(2, 48, 2, 2, 3)  # (D, H, W) token grid
        feats = model.encode(block)
    assert feats.shape == (2, 48, 3, 2, 2)
    assert torch.allclose(feats, grid.permute(0, 1, 4, 3, 2), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# axes


def test_internal_layout_is_segvols_swap():
    vol = torch.arange(4 * 5 * 6).reshape(4, 5, 6)  # value encodes the (x, y, z) voxel
    internal = segvol.to_internal(vol)
    assert internal.shape == (6, 5, 4)
    # SegVol's DimTranspose on a nibabel (X, Y, Z) array: np.swapaxes(a, -1, -3)
    assert np.array_equal(internal.numpy(), np.swapaxes(vol.numpy(), -1, -3))
    x, y, z = 3, 1, 5
    d, h, w = segvol.points_to_internal(torch.tensor([x, y, z])).tolist()
    assert internal[d, h, w] == vol[x, y, z]
    box = segvol.boxes_to_internal(torch.tensor([1, 2, 3, 3, 4, 5]))
    assert box.tolist() == [3, 2, 1, 5, 4, 3]
    slab = torch.zeros(4, 5, 6)
    slab[:, :, 2] = 1  # one axial slice
    assert torch.nonzero(segvol.to_internal(slab))[:, 0].unique().tolist() == [2]  # depth axis = Z


def test_decode_hands_segvol_internal_coordinates(model, block, monkeypatch):
    seen = []
    coords = model.prompt_encoder.pe_layer.coords
    monkeypatch.setattr(model.prompt_encoder.pe_layer, "coords", lambda p, s: seen.append(p.clone()) or coords(p, s))
    with torch.no_grad():
        feats = model.encode(block[:1])
        model.decode(feats, points=torch.tensor([[[40.0, 20.0, 2.0]]]), labels=torch.ones(1, 1),
                     boxes=torch.tensor([[1.0, 2.0, 3.0, 20.0, 25.0, 6.0]]))
    points, corners = seen
    assert points[0, 0].tolist() == [2.5, 20.5, 40.5]  # (z, y, x) + half a voxel, no padding point with a box
    assert corners[0].tolist() == [[3.5, 2.5, 1.5], [6.5, 25.5, 20.5]]


def test_point_encoding_uses_segvols_normalisation(model):
    pe = model.prompt_encoder.pe_layer
    g = pe.positional_encoding_gaussian_matrix
    p = torch.tensor([[[1.5, 2.5, 3.5]]])
    # SegVol divides (d, h, w) by (H, D, W) of the (8, 32, 48) block
    unit = torch.tensor([1.5 / 32, 2.5 / 8, 3.5 / 48])
    proj = 2 * math.pi * ((2 * unit - 1) @ g)
    assert torch.allclose(pe.coords(p, (8, 32, 48))[0, 0], torch.cat([proj.sin(), proj.cos()]), atol=1e-5)
    dense = pe.grid((2, 2, 3))
    # cell (i, j, k) carries the coordinates (j, i, k) of SAM's 2D order
    unit = torch.tensor([1.5 / 2, 0.5 / 2, 2.5 / 3])
    proj = 2 * math.pi * ((2 * unit - 1) @ g)
    assert torch.allclose(dense[:, 0, 1, 2], torch.cat([proj.sin(), proj.cos()]), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# zoom-out-zoom-in


def _nearest_exact_source(n_in, n_out):
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)


def test_zoom_out_input_is_monais_nearest_exact_resize():
    from monai.transforms import Resize

    vol = np.random.default_rng(0).random((40, 50, 12)).astype(np.float32)
    ours = segvol.zoom_out_input(vol, (48, 32, 8))
    theirs = Resize(spatial_size=(48, 32, 8), mode="nearest-exact")(vol[None])
    assert ours.shape == (1, 1, 48, 32, 8)
    assert torch.equal(ours[0], torch.as_tensor(np.asarray(theirs)))
    sx, sy, sz = (_nearest_exact_source(a, b) for a, b in zip((40, 50, 12), (48, 32, 8)))
    assert np.array_equal(ours[0, 0].numpy(), vol[np.ix_(sx, sy, sz)])


def test_prompts_map_into_the_resized_grid():
    shape, block = (40, 50, 12), (48, 32, 8)
    # x: voxel 10 is copied by resized 12; y: 20 is copied by none (19 at 12, 21 at 13), nearest centre 13;
    # z: 5 is copied by 3
    assert segvol.points_to_block([[10, 20, 5]], shape, block).tolist() == [[12.0, 13.0, 3.0]]
    box = segvol.box_to_block([10, 20, 2, 14, 30, 5], shape, block)
    want = []
    for a, (lo, hi) in enumerate([(10, 14), (20, 30), (2, 5)]):
        src = _nearest_exact_source(shape[a], block[a])
        idx = np.nonzero((src >= lo) & (src <= hi))[0]
        want.append((idx.min(), idx.max()))
    assert box.tolist() == [want[0][0], want[1][0], want[2][0], want[0][1], want[1][1], want[2][1]]
    assert box.tolist() == [12, 13, 1, 17, 19, 3]


def test_zoom_in_roi_is_segvols_rule():
    logits = torch.full((40, 50, 12), -5.0)
    logits[10:15, 20:40, 3:5] = 5.0
    roi = segvol.zoom_in_roi(logits, (48, 32, 8))
    # x: 5 wide, short 43 -> 21 each side, clipped to [0, 40]; y: 20 wide, short 12 -> 6: 14..45;
    # z: 2 wide, short 6 -> 3: 0..7
    assert roi == (slice(0, 36), slice(14, 46), slice(0, 8))
    assert segvol.zoom_in_roi(torch.full((40, 50, 12), -1.0), (48, 32, 8)) is None


@pytest.mark.parametrize("prompt", [
    {"points": [[12, 20, 5], [30, 40, 2]], "labels": [1, 0]},
    {"box": [8, 10, 2, 30, 40, 9]},
])
def test_infer_is_the_composition_of_its_parts(model, prompt):
    vol = np.random.default_rng(2).random((60, 50, 12)).astype(np.float32)
    with torch.no_grad():
        feats = model.encode(segvol.zoom_out_input(vol, model.input_shape))
    glob = segvol.zoom_out_logits(model, feats, vol.shape, **prompt)
    assert glob.shape == (60, 50, 12)
    out = segvol.infer(model, vol, **prompt, zoom_in=False)
    assert torch.equal(out, glob)
    # plant a foreground so the zoom-in runs whatever the random network predicts
    glob = torch.full_like(glob, -3.0)
    glob[20:30, 10:20, 4:6] = 3.0
    a = segvol.zoom_in(model, vol, glob, **prompt, generator=torch.Generator().manual_seed(3))
    b = segvol.zoom_in(model, vol, glob, **prompt, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    roi = segvol.zoom_in_roi(glob, model.input_shape)
    outside = torch.ones_like(glob, dtype=torch.bool)
    outside[roi] = False
    assert torch.equal(a[outside], glob[outside]) and not torch.equal(a[roi], glob[roi])
    # end to end equals zoom_out_logits then zoom_in
    full = segvol.infer(model, vol, **prompt, generator=torch.Generator().manual_seed(4))
    glob = segvol.zoom_out_logits(model, feats, vol.shape, **prompt)
    ref = segvol.zoom_in(model, vol, glob, **prompt, generator=torch.Generator().manual_seed(4))
    assert torch.equal(full, ref)


def test_zoom_in_windows_get_segvols_prompts(model, monkeypatch):
    vol = np.random.default_rng(5).random((48, 32, 8)).astype(np.float32)  # one window
    glob = torch.full((48, 32, 8), -3.0)
    glob[20:30, 10:20, 2:6] = 3.0
    calls = []
    monkeypatch.setattr(type(model), "forward", lambda self, x, p=None, lab=None, b=None, t=None:
                        calls.append((p, lab, b)) or torch.zeros(x.shape[0], *x.shape[2:]))
    # region: x 20..29 widened by 19 -> 1..47, y 10..19 by 11 -> 0..30, z 2..5 by 2 -> 0..7; window
    # coordinates are relative to its start (1, 0, 0)
    assert segvol.zoom_in_roi(glob, model.input_shape) == (slice(1, 49), slice(0, 31), slice(0, 8))
    segvol.zoom_in(model, vol, glob, box=[4, 5, 1, 40, 30, 6])
    (p, lab, b), = calls
    # a single window: the prompt box itself (drawn on the resized grid, which is the volume here)
    assert p is None and b.tolist() == [[3, 5, 1, 39, 30, 6]]
    calls.clear()
    segvol.zoom_in(model, vol, glob, points=[[3, 4, 5], [7, 7, 7]], labels=[1, 0])
    (p, lab, b), = calls
    # only the positive point: drawn once, then once more among "up to four others", padded to five
    # with ignored points; and the zoom-out foreground's box
    assert p[0].tolist() == [[2, 4, 5]] * 2 + [[-1, -1, -1]] * 3 and lab.tolist() == [[1, 1, -1, -1, -1]]
    assert b.tolist() == [[19, 10, 2, 28, 19, 5]]


def test_normalise_intensity_by_hand():
    a = np.array([0, 0, 0, 0, 10, 20, 30, 40], dtype=np.float32).reshape(2, 2, 2)
    # mean 12.5 -> foreground 20, 30, 40: percentiles 20.01 and 39.99, clip, z-score, min-max:
    # (v - 20.01) / (39.99 - 20.01)
    want = np.array([0, 0, 0, 0, 0, 0, 9.99 / 19.98, 1.0]).reshape(2, 2, 2)
    got = segvol.normalise_intensity(a)
    assert got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-6)
    assert not np.allclose(segvol.normalise_intensity(a * np.array([1, 2]).reshape(1, 1, 2)), want, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# text prompts


def test_text_prompts_run_with_the_release_tokenizer_files(model, block, tokenizer_dir, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tokenizer_dir / name).read_bytes())
    torch.save(segvol.to_release_keys(model), tmp_path / "pytorch_model.bin")
    loaded = segvol.load_segvol(tmp_path, config=TINY)
    with torch.no_grad():
        feats = loaded.encode(block)
        pts, lab = torch.tensor([[[3.0, 4.0, 5.0]]] * 2), torch.ones(2, 1)
        plain = loaded.decode(feats, pts, lab)
        liver = loaded.decode(feats, pts, lab, text="liver")
        kidney = loaded.decode(feats, pts, lab, text=["kidney", "kidney"])
        only_text = loaded.decode(feats, text=["liver", "kidney"])
    assert not torch.allclose(plain, liver) and not torch.allclose(liver, kidney)
    assert only_text.shape == (2, 48, 32, 8)
    ids = loaded.text_encoder.tokenizer([segvol.TEXT_TEMPLATE.format("liver")])["input_ids"][0]
    assert ids[0] == 516 and ids[-1] == 517 and 515 in ids  # start, end, and "liver" merged to one token


def test_text_prompts_without_tokenizer_files_raise(model, block, tmp_path):
    torch.save(segvol.to_release_keys(model), tmp_path / "pytorch_model.bin")
    loaded = segvol.load_segvol(tmp_path, config=TINY)
    assert loaded.has_text
    with pytest.raises(ModelError, match="tokenizer"):
        loaded.decode(loaded.encode(block), text="liver")
    with pytest.raises(ModelError, match="no CLIP tokenizer"):
        segvol.load_tokenizer(tmp_path)
    with pytest.raises(ModelError, match="no CLIP tokenizer"):
        segvol.load_segvol(tmp_path, config=TINY, tokenizer=tmp_path)


def test_tokenizer_loads_from_vocab_and_merges(tokenizer_dir, tmp_path):
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(data["model"]["vocab"]))
    merges = data["model"]["merges"]
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    tok = segvol.load_tokenizer(tmp_path)
    assert 515 in tok(["a liver."])["input_ids"][0]
