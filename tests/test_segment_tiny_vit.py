"""MobileSAM and TinySAM: the TinyViT image encoder against the official implementation.

Two independent references: MobileSAM's own code (the ``mobile_sam`` package, a test
dependency) run on the same random weights, end to end through its ``SamPredictor``; and
segment_anything's ``SamPredictor`` on the loaded model, which decoding from cached features
must reproduce. The official TinyViT only runs with a last stage 320, 448 or 576 wide (its
merging picks the stride by width), so the model compared with it keeps 320 there and
SAM's 256-channel neck; the faster model of the other tests is small throughout.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers.tiny_sam import (
    BOXES,
    DIM,
    POINTS,
    SIZES,
    TINY_TINY_VIT,
    blob_images,
    predictor_reference,
    randomise_norms,
    save_flat,
    tiny_mobile_sam,
)
from segment_anything import SamPredictor

from fmcache.embed.tiny_vit import TinyViT, geometry
from fmcache.errors import ModelError
from fmcache.segment.models import ARCHS, SAM_MODELS
from fmcache.segment.sam import build_sam_for, decode, encode, load_sam

# small, but the official code's constraints kept: four stages, the last 320 wide
OFFICIAL_TINY = {"embed_dims": [16, 32, 48, 320], "depths": [1, 2, 2, 1], "num_heads": [1, 2, 3, 5],
                 "window_sizes": [7, 5, 14, 7], "mlp_ratio": 2.0, "mbconv_expand_ratio": 2.0}


def _mobile_sam():
    """The ``mobile_sam`` package, imported without its timm registry and deprecation warnings."""
    with warnings.catch_warnings():
        # it re-registers timm's tiny_vit_* names and imports timm's old module paths
        warnings.filterwarnings("ignore", message="Overwriting .* in registry")
        warnings.filterwarnings("ignore", category=FutureWarning)
        import mobile_sam
        import mobile_sam.modeling
    return mobile_sam


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """MobileSAM's own ``Sam`` with a small TinyViT and random weights, and its file saved like mobile_sam.pt."""
    ms = _mobile_sam()
    m = ms.modeling
    torch.manual_seed(1)
    sam = m.Sam(
        image_encoder=m.TinyViT(img_size=1024, in_chans=3, num_classes=10, drop_rate=0.0, drop_path_rate=0.0,
                                **OFFICIAL_TINY),
        prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                       mask_in_chans=16),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3, transformer=m.TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=64, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    randomise_norms(sam.image_encoder)
    # its attention caches the biases at .eval(): after the weights are final, as its README does
    sam.eval()
    return ms, sam, save_flat(sam, tmp_path_factory.mktemp("mobilesam") / "mobile_sam.pt")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return save_flat(tiny_mobile_sam(), tmp_path_factory.mktemp("tinyvit") / "mobile_sam.pt")


@pytest.fixture(scope="module")
def model(tiny_file):
    return load_sam("mobilesam", weights=str(tiny_file))


@pytest.fixture(scope="module")
def encoded(model):
    images = blob_images(SIZES)
    features, meta = encode(model, images)
    return images, features, meta


@pytest.fixture(scope="module")
def reference(model, encoded):
    """segment_anything's SamPredictor end to end per image on the loaded model."""
    return predictor_reference(SamPredictor(model.sam), encoded[0], POINTS, BOXES)


def test_the_official_file_layout_loads_strictly_and_gives_the_official_masks(official):
    ms, sam, path = official
    sd = torch.load(path, weights_only=True)
    # the release's extras: the ImageNet classifier and BatchNorm counters; no bias index table
    assert {"image_encoder.norm_head.weight", "image_encoder.head.weight", "image_encoder.head.bias",
            "image_encoder.patch_embed.seq.0.bn.num_batches_tracked"} <= set(sd)
    assert not any("attention_bias_idxs" in k for k in sd)
    model = load_sam("mobilesam", weights=str(path))
    enc = model.sam.image_encoder
    assert isinstance(enc, TinyViT)
    assert [b.attn.num_heads for layer in enc.layers[1:] for b in layer.blocks] == [2, 2, 3, 3, 5]
    # MobileSAM's SamPredictor end to end on its own model is the reference
    img = blob_images(SIZES[:1])[0]
    (ref_feats, ref_point, ref_box), = predictor_reference(ms.SamPredictor(sam), [img], POINTS[:1], BOXES[:1])
    features, meta = encode(model, [img])
    assert features.shape == (1, 256, 64, 64)
    # measured: 1.4e-5 (float rounding: the attention and LayerNorm are written differently)
    np.testing.assert_allclose(features[0], ref_feats, rtol=0, atol=1e-4)
    point = {"points": POINTS[:1], "point_labels": np.ones((1, 1))}
    for kw, ref in ((point, ref_point), ({"boxes": BOXES[:1]}, ref_box)):
        out = decode(model, features, meta, **kw)
        mask, iou, low = ref
        assert 0 < mask.sum() < mask.size
        np.testing.assert_allclose(out.low_res_logits[0], low, rtol=0, atol=1e-3)
        assert out.scores[0] == pytest.approx(iou, abs=1e-4)
        assert np.mean(out.masks[0] != mask) <= 1e-3  # logits within 1e-3 of 0 may flip a pixel
    # TinySAM's file has the same layout and decoder keys
    assert isinstance(load_sam("tinysam", weights=str(path)).sam.image_encoder, TinyViT)


def test_load_reads_the_geometry_off_the_tensors(model, tiny_file):
    assert model.key == "mobilesam" and model.weights_id == tiny_file.name
    enc = model.sam.image_encoder
    assert [len(layer.blocks) for layer in enc.layers] == list(TINY_TINY_VIT["depths"])
    assert [layer.blocks[0].attn.num_heads for layer in enc.layers[1:]] == list(TINY_TINY_VIT["num_heads"][1:])
    assert [layer.blocks[0].window for layer in enc.layers[1:]] == list(TINY_TINY_VIT["window_sizes"][1:])
    assert enc.head.out_features == 10 and enc.img_size == 1024


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_decode_from_features_equals_the_predictor_end_to_end(model, encoded, reference, prompt):
    _, features, meta = encoded
    assert features.shape == (2, DIM, 64, 64)
    kw = {"points": POINTS, "point_labels": np.ones((2, 1))} if prompt == "point" else {"boxes": BOXES}
    which = 1 if prompt == "point" else 2
    out = decode(model, features, meta, **kw)
    for i, ref in enumerate(reference):
        np.testing.assert_allclose(features[i], ref[0], rtol=1e-4, atol=1e-5)
        mask, iou, low = ref[which]
        assert out.masks[i].shape == SIZES[i]
        assert 0 < mask.sum() < mask.size
        np.testing.assert_array_equal(out.masks[i], mask)
        np.testing.assert_allclose(out.low_res_logits[i], low, rtol=0, atol=1e-5)
        assert out.scores[i] == pytest.approx(iou, abs=1e-5)


@pytest.mark.parametrize("change, key, tensor", [
    ("missing", "image_encoder.layers.2.blocks.1.attn.attention_biases", None),
    ("missing", "image_encoder.layers.2.blocks.0.attn.attention_biases", None),
    ("missing", "image_encoder.layers.0.blocks.0.conv3.bn.num_batches_tracked", None),
    ("missing", "image_encoder.head.weight", None),
    ("unexpected", "image_encoder.layers.3.downsample.conv1.c.weight", torch.zeros(4, 4, 1, 1)),
    ("another shape", "image_encoder.layers.1.blocks.0.attn.attention_biases", torch.zeros(2, 24)),  # not a square
    ("another shape", "image_encoder.layers.2.blocks.0.attn.attention_biases", torch.zeros(5, 64)),  # 5 heads of 24
    ("another shape", "image_encoder.neck.2.weight", torch.zeros(DIM, DIM, 1, 1)),
])
def test_a_damaged_file_is_refused_naming_the_key(tmp_path, change, key, tensor):
    sam = tiny_mobile_sam()
    drop, extra = ((key,), None) if tensor is None else ((), {key: tensor})
    path = save_flat(sam, tmp_path / "mobile_sam.pt", drop=drop, extra=extra)
    with pytest.raises(ModelError) as e:
        load_sam("mobilesam", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and change in msg
    # the geometry is read off the other blocks' tensors, so the damaged key is the only one named
    assert key in msg and msg.count("image_encoder.") == 1, msg


def test_the_release_architecture_is_rebuilt_from_its_keys():
    # MobileSAM's own builder (random weights, no file): every key and shape, the heads and windows
    official = _mobile_sam().build_sam_vit_t()
    sd = official.state_dict()
    ours, size = build_sam_for(sd, SAM_MODELS["mobilesam"])  # tinysam's entry names the same encoder
    assert size == 1024
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    ours.load_state_dict(sd, strict=True)
    heads = [[b.attn.num_heads for b in layer.blocks] for layer in ours.image_encoder.layers[1:]]
    assert heads == [[b.attn.num_heads for b in layer.blocks] for layer in official.image_encoder.layers[1:]]
    windows = [layer.blocks[0].window for layer in ours.image_encoder.layers[1:]]
    assert windows == [layer.blocks[0].window_size for layer in official.image_encoder.layers[1:]]
    # with no tensors to read, the nominal geometry is the release's
    nominal = TinyViT(**geometry({}, ARCHS["tiny_vit_5m"]))
    enc = {k.removeprefix("image_encoder."): v.shape for k, v in sd.items() if k.startswith("image_encoder.")}
    assert {k: v.shape for k, v in nominal.state_dict().items()} == enc


def test_the_registry_entries():
    for key, weights in (("mobilesam", "file:mobile_sam.pt"), ("tinysam", "file:tinysam.pth")):
        spec = SAM_MODELS[key]
        assert (spec.encoder, spec.arch, spec.weights, spec.container) == ("tiny_vit", "tiny_vit_5m", weights, None)
        assert spec.input == SAM_MODELS["sam"].input  # ResizeLongestSide(1024), ImageNet statistics, as SAM
