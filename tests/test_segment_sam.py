"""SAM-family segmentation on a tiny random-weight SAM saved like the official files.

The reference is segment_anything's own ``SamPredictor`` run end to end on the image; what is
tested is that encoding once and decoding from the features gives its masks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_sam import BOXES, DIM, POINTS, SIZES, blob_images, predictor_reference, save_flat, tiny_sam
from segment_anything import SamPredictor

from fmcache.errors import ModelError, SegmentInputError
from fmcache.segment.models import SAM_MODELS
from fmcache.segment.sam import (
    build_sam_for,
    decode,
    encode,
    load_sam,
    to_input_coords,
    valid_cells,
)


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    return save_flat(tiny_sam(), tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")


@pytest.fixture(scope="module")
def model(sam_file):
    return load_sam("sam", weights=str(sam_file))


@pytest.fixture(scope="module")
def encoded(model):
    images = blob_images(SIZES)
    features, meta = encode(model, images)
    return images, features, meta


@pytest.fixture(scope="module")
def reference(model, encoded):
    """SamPredictor end to end per image: (features, point result, box result), best IoU of 3."""
    return predictor_reference(SamPredictor(model.sam), encoded[0], POINTS, BOXES)


def test_load_reads_the_geometry_and_records_the_file(model, sam_file):
    assert model.key == "sam" and model.weights_id == sam_file.name and len(model.weights_sha256) == 64
    assert model.sam.image_encoder.img_size == 1024
    assert not model.sam.training


def test_encode_shapes_sizes_and_pooled_over_the_image_cells(encoded, reference):
    _, features, meta = encoded
    assert features.dtype == np.float32 and features.shape == (2, DIM, 64, 64)
    assert meta.original_size.tolist() == [list(s) for s in SIZES]
    # ResizeLongestSide(1024): 300x200 -> 1024x683, 120x480 -> 256x1024
    assert meta.input_size.tolist() == [[1024, 683], [256, 1024]]
    assert meta.sizes().tolist() == [[300, 200, 1024, 683], [120, 480, 256, 1024]]
    assert valid_cells((1024, 683), 16) == (64, 43) and valid_cells((256, 1024), 16) == (16, 64)
    np.testing.assert_allclose(meta.pooled[0], features[0, :, :64, :43].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(meta.pooled[1], features[1, :, :16, :].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # the same features as SamPredictor.set_image (batched here, one by one there)
    for i, ref in enumerate(reference):
        np.testing.assert_allclose(features[i], ref[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_decode_from_features_equals_the_predictor_end_to_end(model, encoded, reference, prompt):
    _, features, meta = encoded
    kw = {"points": POINTS, "point_labels": np.ones((2, 1))} if prompt == "point" else {"boxes": BOXES}
    which = 1 if prompt == "point" else 2
    for feats in (features, np.stack([r[0] for r in reference])):  # ours, and the predictor's own features
        out = decode(model, feats, meta, **kw)
        for i, ref in enumerate(reference):
            mask, iou, low = ref[which]
            assert out.masks[i].shape == SIZES[i] and out.masks[i].dtype == bool
            assert 0 < mask.sum() < mask.size  # a mask that is neither empty nor full, so equality means something
            np.testing.assert_array_equal(out.masks[i], mask)
            np.testing.assert_allclose(out.low_res_logits[i], low, rtol=0, atol=1e-5)  # measured 1e-7
            assert out.scores[i] == pytest.approx(iou, abs=1e-5)


def test_decode_from_float16_features_keeps_the_masks(model, encoded, reference):
    _, features, meta = encoded
    half = features.astype(np.float16).astype(np.float32)  # what the cache stores and reads back
    for kw, which in (({"points": POINTS, "point_labels": np.ones((2, 1))}, 1), ({"boxes": BOXES}, 2)):
        out = decode(model, half, meta, **kw)
        for i, ref in enumerate(reference):
            differ = np.mean(out.masks[i] != ref[which][0])
            # measured: 1 to 3 of ~60,000 pixels differ, logits by <= 5e-5 (random weights put every
            # logit within 0.2 of the threshold, a harder case than real SAM's); allowed: 0.1 %, 1e-3
            assert differ <= 1e-3, differ
            np.testing.assert_allclose(out.low_res_logits[i], ref[which][2], rtol=0, atol=1e-3)


def test_items_of_different_sizes_decode_to_their_own_sizes(model):
    sizes = [(64, 64), (37, 211), (500, 90)]
    images = blob_images(sizes, seed=1)
    features, meta = encode(model, images, batch_size=2)
    boxes = np.array([[5, 5, 50, 50], [10, 3, 200, 30], [10, 100, 80, 400]], dtype=float)
    out = decode(model, features, meta, boxes=boxes)
    assert [m.shape for m in out.masks] == sizes
    assert out.scores.shape == (3,) and out.low_res_logits.shape == (3, 256, 256)
    # a subset decodes to the same masks as in the full batch
    sub = decode(model, features[[2, 0]], meta.select([2, 0]), boxes=boxes[[2, 0]])
    np.testing.assert_array_equal(sub.masks[0], out.masks[2])
    np.testing.assert_array_equal(sub.masks[1], out.masks[0])


def test_medsam_input_is_a_square_bicubic_resize_scaled_to_0_1(sam_file):
    medsam = load_sam("medsam", weights=str(sam_file))
    assert medsam.input.resize == "square" and medsam.input.normalise == "minmax"
    seen = []
    hook = medsam.sam.image_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        img = blob_images([(300, 200)])[0]
        features, meta = encode(medsam, [img])
    finally:
        hook.remove()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(1024, 1024), mode="bicubic", align_corners=False)
    expected = (x - x.min()) / (x.max() - x.min())
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)
    imagenet = (x - medsam.sam.pixel_mean) / medsam.sam.pixel_std
    assert not torch.allclose(seen[0], imagenet, atol=0.1)
    assert float(seen[0].min()) == 0.0 and float(seen[0].max()) == pytest.approx(1.0)
    assert meta.input_size.tolist() == [[1024, 1024]]
    # prompts scale straight to 1024 x 1024, and the masks come back at the original size
    np.testing.assert_allclose(to_input_coords(medsam, np.array([[200.0, 300.0], [50.0, 75.0]]), (300, 200)),
                               [[1024, 1024], [256, 256]])
    out = decode(medsam, features, meta, boxes=np.array([[20.0, 30.0, 150.0, 250.0]]))
    assert out.masks[0].shape == (300, 200)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_a_checkpoint_with_a_wrong_key_is_refused_in_one_line(tmp_path, change):
    sam = tiny_sam()
    if change == "missing":
        path = save_flat(sam, tmp_path / "sam_missing.pth", drop=("image_encoder.blocks.1.norm2.weight",))
        key = "image_encoder.blocks.1.norm2.weight"
    else:
        path = save_flat(sam, tmp_path / "sam_extra.pth", extra={"mask_decoder.extra.weight": torch.zeros(2)})
        key = "mask_decoder.extra.weight"
    with pytest.raises(ModelError) as e:
        load_sam("sam", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and key in msg and change in msg


def test_the_registry_and_bad_inputs(model, encoded, sam_file):
    # the entries of SAM's own layout; other families' entries are checked in their own test files
    assert {k: (s.arch, s.weights) for k, s in SAM_MODELS.items() if s.encoder == "vit" and not s.container} == {
        "sam": ("vit_b", "file:sam_vit_b_01ec64.pth"),
        "sam_vit_l": ("vit_l", "file:sam_vit_l_0b3195.pth"),
        "sam_vit_h": ("vit_h", "file:sam_vit_h_4b8939.pth"),
        "medsam": ("vit_b", "file:medsam_vit_b.pth"),
    }
    _, features, meta = encoded
    with pytest.raises(SegmentInputError, match="needs a prompt"):
        decode(model, features, meta)
    with pytest.raises(SegmentInputError, match="boxes must be"):
        decode(model, features, meta, boxes=BOXES[:1])
    with pytest.raises(SegmentInputError, match="uint8 RGB"):
        encode(model, [np.zeros((10, 10), np.uint8)])
    # a file of another input size than the entry's rule is refused, not silently resized
    small = dataclasses.replace(SAM_MODELS["sam"], input=dataclasses.replace(SAM_MODELS["sam"].input, size=512))
    with pytest.raises(ModelError, match="1024 px"):
        load_sam(small, weights=str(sam_file))


@pytest.mark.parametrize("key", ["sam", "sam_vit_l", "sam_vit_h", "medsam"])
def test_the_official_architectures_are_rebuilt_from_their_keys(key):
    # segment_anything's builder on the meta device: the official files' keys and shapes, no memory
    from segment_anything import sam_model_registry

    spec = SAM_MODELS[key]
    with torch.device("meta"):
        official = sam_model_registry[spec.arch]()
        sd = official.state_dict()
        ours, img_size = build_sam_for(sd, spec)
    assert img_size == 1024
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert ours.image_encoder.blocks[0].attn.num_heads == official.image_encoder.blocks[0].attn.num_heads
    assert [b.window_size for b in ours.image_encoder.blocks] == [b.window_size for b in official.image_encoder.blocks]
    heads = [(a.self_attn.num_heads, a.cross_attn_token_to_image.num_heads) for a in ours.mask_decoder.transformer.layers]
    assert heads == [(a.self_attn.num_heads, a.cross_attn_token_to_image.num_heads)
                     for a in official.mask_decoder.transformer.layers]
