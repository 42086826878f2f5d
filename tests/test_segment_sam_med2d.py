"""SAM-Med2D (adapters) and FT-SAM (none) on tiny random-weight models saved like the releases.

The reference model is built here: segment_anything's ViT at 256 px whose blocks carry an
adapter written as SAM-Med2D's code writes it (``Adapter_Layer``, ``Block.forward`` with
``adapter=True``), and it is run end to end with ``Sam.forward`` on an image resized by the
rule of OpenCV's ``INTER_NEAREST``, as SAM-Med2D's predictor does. What is tested is that
fmcache's loader rebuilds that model from the file alone, and that encoding once and
decoding from the features gives its masks.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from helpers.tiny_sam import BOXES, DIM, POINTS, SIZES, blob_images
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

import fmcache
from fmcache.datasets import load_dataset
from fmcache.errors import ModelError
from fmcache.segment.features import FEATURES, cached_items, embed_features
from fmcache.segment.features import SIZES as SIZE_KIND
from fmcache.segment.models import SAM_MODELS
from fmcache.segment.sam import build_sam_for, decode, encode, feature_grid, load_sam, prepare, to_input_coords
from fmcache.segment.sam_med2d import Adapter, AdapterBlock

# 256 px input as the releases (a 16 x 16 grid; windows of 14 pad it to 28), small widths
TINY = {"img_size": 256, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 1, "mlp_ratio": 2.0,
        "out_chans": DIM, "qkv_bias": True, "window_size": 14, "global_attn_indexes": (1,)}
HIDDEN = 8  # embed_dim x 0.25, SAM-Med2D's mlp_ratio of the adapter


class UpstreamAdapter(nn.Module):
    """SAM-Med2D's ``Adapter_Layer`` (image_encoder.py), its computation as written there."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.channel = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, dim, bias=False), nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                                     nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1, bias=False), nn.ReLU())

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        b, c = x.shape[:2]
        x_channel = self.channel(self.avg_pool(x).view(b, c)).view(b, c, 1, 1) * x
        x = x + self.spatial(x_channel)
        return self.norm(x.permute(0, 2, 3, 1))


class UpstreamAdapterBlock(Block):
    """SAM-Med2D's ``Block`` built with ``adapter=True``: the adapter beside the MLP."""

    def __init__(self, hidden: int, **kw):
        super().__init__(**kw)
        self.Adapter = UpstreamAdapter(kw["dim"], hidden)

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        x_norm = self.norm2(x)
        return x + self.mlp(x_norm) + self.Adapter(x_norm)


def _upstream_encoder(geometry: dict, hidden: int | None) -> ImageEncoderViT:
    """SAM-Med2D's ImageEncoderViT(adapter_train=hidden is not None) at the given geometry."""
    enc = ImageEncoderViT(**geometry, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True)
    if hidden is not None:
        grid = geometry["img_size"] // geometry["patch_size"]
        enc.blocks = nn.ModuleList(
            UpstreamAdapterBlock(hidden, dim=geometry["embed_dim"], num_heads=geometry["num_heads"],
                                 mlp_ratio=geometry["mlp_ratio"], qkv_bias=True,
                                 norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                 window_size=0 if i in geometry["global_attn_indexes"] else geometry["window_size"],
                                 input_size=(grid, grid))
            for i in range(geometry["depth"]))
    return enc


def tiny_sam_med2d(adapters: bool, seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    grid = TINY["img_size"] // TINY["patch_size"]
    sam = Sam(
        image_encoder=_upstream_encoder(TINY, HIDDEN if adapters else None),
        prompt_encoder=PromptEncoder(embed_dim=DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(TINY["img_size"],) * 2, mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=8),
                                 transformer_dim=DIM, iou_head_depth=3, iou_head_hidden_dim=32),
    )
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(std=0.5)  # zero-initialised upstream; random ones make the geometry matter
    return sam.eval()


def save_release(sam: Sam, path, optimizer_object: bool = False, drop: tuple[str, ...] = ()):
    """As SAM-Med2D's train.py saves: {'model': state_dict, 'optimizer': the optimizer}.

    The releases hold the optimizer object itself; ``optimizer_object=False`` stores its
    state dict instead, which is what a re-saved file can hold and fmcache reads.
    """
    opt = torch.optim.Adam(sam.parameters(), lr=1e-4)
    sd = {k: v for k, v in sam.state_dict().items() if k not in drop}
    torch.save({"model": sd, "optimizer": opt if optimizer_object else opt.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def reference_models():
    return {"sam_med2d": tiny_sam_med2d(adapters=True), "ft_sam": tiny_sam_med2d(adapters=False, seed=1)}


@pytest.fixture(scope="module")
def files(reference_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("sammed2d")
    return {"sam_med2d": save_release(reference_models["sam_med2d"], d / "sam-med2d_b.pth"),
            "ft_sam": save_release(reference_models["ft_sam"], d / "ft-sam_b.pth")}


@pytest.fixture(scope="module")
def models(files):
    return {k: load_sam(k, weights=str(p)) for k, p in files.items()}


def _opencv_nearest(image: np.ndarray, size: int = 256) -> np.ndarray:
    """The resize of SAM-Med2D's predictor (cv2 INTER_NEAREST) for sizes where it takes source
    index floor(i * n / size) exactly, which holds for the sizes used here (see the pin below)."""
    h, w = image.shape[:2]
    return image[(np.arange(size) * h) // size][:, (np.arange(size) * w) // size]


def test_the_adapter_block_computes_sam_med2d_formula():
    torch.manual_seed(3)
    geometry = {**TINY, "embed_dim": 8, "num_heads": 2, "depth": 2}
    upstream = _upstream_encoder(geometry, hidden=2)
    with torch.no_grad():
        for name, p in upstream.named_parameters():
            if "rel_pos" in name or "Adapter.norm" in name:
                p.normal_(std=0.5)
    ours = [AdapterBlock(b, hidden=2) for b in _upstream_encoder(geometry, None).blocks]
    for mine, ref in zip(ours, upstream.blocks):
        mine.load_state_dict(ref.state_dict(), strict=True)  # the same keys, Adapter.* included
    # block 0 windowed (16 x 16 grid in windows of 14, padded), block 1 global; and a small-
    # variance input, where the adapter norm's eps (1e-5, not the blocks' 1e-6) shows
    x = torch.randn(2, 16, 16, 8)
    for inp in (x, x * 1e-3):
        for mine, ref in zip(ours, upstream.blocks):
            assert mine.window_size == ref.window_size
            torch.testing.assert_close(mine(inp), ref(inp), rtol=1e-5, atol=1e-6)
    # the formula by hand on one token grid: norm(y + spatial(gate * y)), gate = sigmoid(W2 relu(W1 mean y))
    a = Adapter(8, 2)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    y = torch.randn(1, 6, 4, 8)
    c = y.permute(0, 3, 1, 2)
    gate = torch.sigmoid(torch.relu(c.mean(dim=(2, 3)) @ a.channel[0].weight.T) @ a.channel[2].weight.T)
    s = torch.relu(torch.nn.functional.conv2d(c * gate[:, :, None, None], a.spatial[0].weight, stride=2, padding=1))
    s = torch.relu(torch.nn.functional.conv_transpose2d(s, a.spatial[2].weight, stride=2, padding=1))
    z = (c + s).permute(0, 2, 3, 1)
    mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
    expected = (z - mu) / torch.sqrt(var + 1e-5) * a.norm.weight + a.norm.bias
    torch.testing.assert_close(a(y), expected, rtol=1e-5, atol=1e-5)


def test_the_release_layout_loads_strictly_with_or_without_adapters(models, files):
    med, ft = models["sam_med2d"], models["ft_sam"]
    for m in (med, ft):
        assert m.sam.image_encoder.img_size == 256 and feature_grid(m) == 16 and not m.sam.training
        assert m.weights_id == files[m.key].name and len(m.weights_sha256) == 64
    assert all(isinstance(b, AdapterBlock) for b in med.sam.image_encoder.blocks)
    assert not any(isinstance(b, AdapterBlock) for b in ft.sam.image_encoder.blocks)
    assert med.sam.image_encoder.blocks[0].Adapter.channel[0].weight.shape == (HIDDEN, TINY["embed_dim"])


def test_the_adapters_are_used(models, files):
    img = blob_images([(300, 200)])[0]
    features, _ = encode(models["sam_med2d"], [img])
    again = load_sam("sam_med2d", weights=str(files["sam_med2d"]))
    with torch.no_grad():
        for blk in again.sam.image_encoder.blocks:
            blk.Adapter.norm.weight.zero_()  # the adapter's output is its norm's: now 0
            blk.Adapter.norm.bias.zero_()
    silenced, _ = encode(again, [img])
    assert np.abs(features - silenced).max() > 1e-2
    # with a zero adapter the encoder is the plain ViT of the same weights
    plain = _upstream_encoder(TINY, None)
    plain.load_state_dict({k: v for k, v in again.sam.image_encoder.state_dict().items() if ".Adapter." not in k})
    with torch.no_grad():
        direct = plain(prepare(again, img)[0][None]).numpy()
    np.testing.assert_allclose(silenced, direct, rtol=1e-5, atol=1e-5)


def test_a_missing_adapter_key_is_named(reference_models, tmp_path):
    key = "image_encoder.blocks.1.Adapter.spatial.2.weight"
    path = save_release(reference_models["sam_med2d"], tmp_path / "sam-med2d_b.pth", drop=(key,))
    with pytest.raises(ModelError) as e:
        load_sam("sam_med2d", weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and key in msg and str(path) in msg and "missing" in msg


def test_the_release_with_its_optimizer_object_is_refused_with_the_command_to_resave(reference_models, tmp_path):
    path = save_release(reference_models["sam_med2d"], tmp_path / "sam-med2d_b.pth", optimizer_object=True)
    with pytest.raises(ModelError, match=r"refuses to unpickle.*weights_only=False\)\['model'\]") as e:
        load_sam("sam_med2d", weights=str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    # what the command does: the 'model' entry alone, which loads
    resaved = tmp_path / "sam-med2d_b.pth.weights.pth"
    torch.save(torch.load(path, weights_only=False)["model"], resaved)
    model = load_sam("sam_med2d", weights=str(resaved))
    assert all(isinstance(b, AdapterBlock) for b in model.sam.image_encoder.blocks)


@pytest.mark.parametrize("key", ["sam_med2d", "ft_sam"])
def test_decode_from_features_equals_the_model_end_to_end(models, reference_models, key):
    model, ref = models[key], reference_models[key]
    images = blob_images(SIZES)
    features, meta = encode(model, images)
    assert features.shape == (2, DIM, 16, 16) and meta.input_size.tolist() == [[256, 256]] * 2
    for kw in ({"points": POINTS, "point_labels": np.ones((2, 1))}, {"boxes": BOXES}):
        out = decode(model, features, meta, **kw)
        for i, (img, (h, w)) in enumerate(zip(images, SIZES)):
            scale = np.array([256 / w, 256 / h])
            item = {"image": torch.from_numpy(_opencv_nearest(img)).permute(2, 0, 1).float(),
                    "original_size": (h, w)}
            if "points" in kw:
                item["point_coords"] = torch.tensor(POINTS[i:i + 1] * scale, dtype=torch.float32)
                item["point_labels"] = torch.ones(1, 1, dtype=torch.int)
            else:
                item["boxes"] = torch.tensor(BOXES[i:i + 1] * np.tile(scale, 2), dtype=torch.float32)
            res = ref([item], multimask_output=True)[0]
            best = int(res["iou_predictions"][0].argmax())  # as SammedPredictor: the highest predicted IoU
            mask = res["masks"][0, best].numpy()
            assert out.masks[i].shape == (h, w) and 0 < mask.sum() < mask.size
            np.testing.assert_array_equal(out.masks[i], mask)
            np.testing.assert_allclose(out.low_res_logits[i], res["low_res_logits"][0, best].numpy(), rtol=0, atol=1e-4)
            assert out.low_res_logits[i].shape == (64, 64)
            assert out.scores[i] == pytest.approx(float(res["iou_predictions"][0, best]), abs=1e-5)


def test_the_input_is_opencv_nearest_then_imagenet(models):
    model = models["sam_med2d"]
    seen = []
    hook = model.sam.image_encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        img = blob_images([(186, 280)], seed=2)[0]
        encode(model, [img])
    finally:
        hook.remove()
    rows, cols = (np.arange(256) * 186) // 256, (np.arange(256) * 280) // 256
    # measured with OpenCV 5.0 cv2.resize(..., (256, 256), interpolation=cv2.INTER_NEAREST): its
    # double-precision scale takes row 92, not 93, for output row 128 of a 186-row image
    rows[128] = 92
    x = torch.from_numpy(img[rows][:, cols]).permute(2, 0, 1).float()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None] * 255
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    torch.testing.assert_close(seen[0][0], (x - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_allclose(to_input_coords(model, np.array([[280.0, 186.0], [70.0, 93.0]]), (186, 280)),
                               [[256, 256], [64, 128]])


def test_features_round_trip_through_the_cache(models, tmp_path):
    model = models["sam_med2d"]
    data = load_dataset("synthetic", options={"size": "4", "image_size": "48"})
    out = embed_features(data, "sam_med2d", root=tmp_path, sam=model, chunk_rows=2, batch_size=2, progress=False)
    assert out.encoded == 4 and f"features {DIM}x16x16" in out.line()
    emb = fmcache.open_cache(tmp_path).embeddings(data.name, "sam_med2d")
    images = [np.asarray(data.image(i).convert("RGB")) for i in range(4)]
    want, meta = encode(model, images, batch_size=2)
    got = emb.item_rows(FEATURES, np.arange(4))
    assert got.shape == (4, DIM, 16, 16)
    np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(emb.item_rows(SIZE_KIND, np.arange(4)), meta.sizes())
    assert tuple(meta.sizes()[0]) == (48, 48, 256, 256)
    features, cached_meta = cached_items(emb, np.array([1, 3]))
    box = np.array([[8.0, 8.0, 40.0, 40.0]] * 2)
    cached = decode(model, features, cached_meta, boxes=box)
    fresh = decode(model, want[[1, 3]], meta.select([1, 3]), boxes=box)
    for a, b in zip(cached.masks, fresh.masks):
        assert a.shape == (48, 48) and (a != b).mean() <= 0.01  # float16 features: a pixel at the threshold may flip


def test_the_registry_entries():
    for key, file in (("sam_med2d", "file:sam-med2d_b.pth"), ("ft_sam", "file:ft-sam_b.pth")):
        spec = SAM_MODELS[key]
        assert (spec.arch, spec.weights, spec.encoder, spec.container) == ("vit_b", file, "vit_adapter", "model")
        assert (spec.input.resize, spec.input.interpolation, spec.input.normalise, spec.input.size) == (
            "square", "nearest", "imagenet", 256)


@pytest.mark.parametrize("adapters", [True, False])
def test_the_released_architecture_is_rebuilt_from_its_keys(adapters):
    # SAM-Med2D's builder (vit_b, image_size 256) on the meta device: the release's keys and shapes
    from segment_anything import sam_model_registry

    vit_b = {"img_size": 256, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0,
             "out_chans": 256, "qkv_bias": True, "window_size": 14, "global_attn_indexes": (2, 5, 8, 11)}
    spec = SAM_MODELS["sam_med2d" if adapters else "ft_sam"]
    with torch.device("meta"):
        official = sam_model_registry["vit_b"]()
        official.image_encoder = _upstream_encoder(vit_b, 192 if adapters else None)
        sd = official.state_dict()
        ours, img_size = build_sam_for(sd, spec)
    assert img_size == 256
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert sd["image_encoder.pos_embed"].shape == (1, 16, 16, 768)
    assert sd["image_encoder.blocks.2.attn.rel_pos_h"].shape == (31, 64)
    assert sd["image_encoder.blocks.0.attn.rel_pos_h"].shape == (27, 64)
    assert [b.window_size for b in ours.image_encoder.blocks] == [b.window_size for b in official.image_encoder.blocks]
    if adapters:
        assert sd["image_encoder.blocks.0.Adapter.channel.0.weight"].shape == (192, 768)
        assert sd["image_encoder.blocks.0.Adapter.spatial.2.weight"].shape == (768, 768, 4, 4)
