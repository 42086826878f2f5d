"""3D models from the cache: each volume's blocks encoded once (SAM-Med3D: one 128³ block per
class at 1.5 mm; here tiny ones), every prompt decoded from the cached features and mapped back
onto the volume's voxels, equal to the model run end to end on the volume."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import seg3d_layouts as s3
from helpers.tiny_sam3d import FAST, TINY, save_release, tiny_sam3d

from fmcache.datasets import load_dataset
from fmcache.errors import SegmentInputError
from fmcache.segment.features import cached_volume, embed_features
from fmcache.segment.models import VOLUME_MODELS, VolumeRule
from fmcache.segment.prompts import prompt_at
from fmcache.segment.sweep import SegmentConfig, run_segment
from fmcache.segment.volume_input import to_block_coords, to_original_grid
from fmcache.segment.volumetric import load_volume_model, prepare_blocks

# the tiny models read 64³ blocks; at 0.5 mm the fixture's 16 x 16 x 8 volume of 0.92 x 0.92 x 0.5 mm
# voxels lies inside one block, resampled finer in-plane
TINY_INPUT = VolumeRule(size=(64, 64, 64), intensity="znorm_positive", spacing=(0.5, 0.5, 0.5))
KINDS = ["center", "rand", "rands"]


def _tiny_model(key: str, geometry: dict, folder):
    path = save_release(tiny_sam3d(geometry), folder / f"{key}.pth")
    spec = dataclasses.replace(VOLUME_MODELS[key], weights=str(path), input=TINY_INPUT, decoder_from=None)
    return load_volume_model(spec)


@pytest.fixture(scope="module", params=[("sam_med3d", TINY), ("fastsam3d", FAST)], ids=["sam_med3d", "fastsam3d"])
def kits3d(request, tmp_path_factory):
    key, geometry = request.param
    data = s3.write_kits23(tmp_path_factory.mktemp("kits23"))
    root = tmp_path_factory.mktemp("cache")
    ds = load_dataset("kits23", data=data)
    model = _tiny_model(key, geometry, tmp_path_factory.mktemp("weights"))
    embed_features(ds, key, root=root, sam=model, progress=False)
    run = run_segment(SegmentConfig(dataset="kits23", model=key, prompts=KINDS, split="all", n_boot=20,
                                    attributes=["sex", "bmi"], nsd_tolerance=1.0), data=data, root=root, sam=model)
    return SimpleNamespace(key=key, ds=ds, data=data, root=root, model=model, run=run)


def _end_to_end(model, volume, labels, prompt, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The model run on the volume: its class-c block, the prompt in block voxels, the network's
    forward, the logits mapped back. Returns (logits on the block, mask on the volume)."""
    blocks, geometries = prepare_blocks(model, volume, labels, 3)
    g = geometries[c - 1]
    points = torch.as_tensor(to_block_coords(prompt.points, g), dtype=torch.float32)[None]
    with torch.no_grad():
        logits = model.net(torch.from_numpy(blocks[c - 1])[None, None], points,
                           torch.as_tensor(prompt.point_labels)[None])[0].numpy()
    return logits, to_original_grid(logits, g, threshold=0.0).astype(bool)


def test_decoding_from_the_cache_equals_the_model_end_to_end(kits3d):
    import fmcache

    from fmcache.segment.volumetric import decode_block

    ds, run, model = kits3d.ds, kits3d.run, kits3d.model
    emb = fmcache.open_cache(kits3d.root).embeddings("kits23", kits3d.key)
    prompts = run.predictions["prompts"]
    checked = 0
    for v in (0, 3):
        volume, labels = ds.volume(v), ds.mask_volume(v)
        features, geometries = cached_volume(emb, v)
        for kind in KINDS:
            for c in (1, 2, 3):
                p = prompt_at(prompts, kind, v, c)
                if p.is_absent:
                    assert geometries[c - 1] is None  # no block for an absent class
                    continue
                logits, mask = _end_to_end(model, volume, labels.array, p, c)
                cached = decode_block(model, features[c - 1], geometries[c - 1], p)
                # float16 features: logits agree to their rounding, and the masks wherever a logit is not on the cut
                np.testing.assert_allclose(cached, logits, atol=2e-2 * max(1.0, np.abs(logits).max()))
                again = to_original_grid(cached, geometries[c - 1], threshold=0.0).astype(bool)
                assert (again != mask).mean() < 1e-3
                checked += 1
    assert checked >= 12


def test_per_volume_scores_are_the_end_to_end_masks_scored(kits3d):
    ds, run, model = kits3d.ds, kits3d.run, kits3d.model
    prompts = run.predictions["prompts"]
    stored = run.predictions["center.mask.sex"]
    assert run.config["items"] == "volumes (3D model)" and stored["dsc"].shape == (len(ds.table), 3)
    for v in (0, 1):
        volume, labels = ds.volume(v), ds.mask_volume(v)
        expected = []
        for c in (1, 2, 3):
            p = prompt_at(prompts, "center", v, c)
            truth = labels.array == c
            if p.is_absent:
                expected.append(1.0)  # absent from both: counts 1 under the default empty rule
                continue
            _, mask = _end_to_end(model, volume, labels.array, p, c)
            expected.append(2 * (truth & mask).sum() / (truth.sum() + mask.sum()))
        np.testing.assert_allclose(stored["dsc"][v], expected, atol=0.02)


def test_geometry_is_recorded_per_block(kits3d):
    import fmcache

    ds = kits3d.ds
    emb = fmcache.open_cache(kits3d.root).embeddings("kits23", kits3d.key)
    assert emb.provenance["preprocess"] == TINY_INPUT.to_attrs()
    _, geometries = cached_volume(emb, 0)
    volume = ds.volume(0)
    for g in geometries:
        assert g.orientation == ("R", "A", "S") and g.original_shape == volume.shape
        np.testing.assert_allclose(g.original_spacing, s3.KITS_SPACING[::-1], atol=1e-9)
        np.testing.assert_allclose(g.original_affine, volume.affine, atol=1e-9)
        assert g.target_spacing == (0.5, 0.5, 0.5) and g.box_size == (64, 64, 64)


def test_groups_are_per_volume_including_bmi(kits3d):
    ds, run = kits3d.ds, kits3d.run
    bmi = run.predictions["center.mask.bmi"]
    np.testing.assert_array_equal(bmi["group"], ds.table["sa/bmi"].to_numpy())
    assert set(run.metrics["attribute"]) == {"sex", "bmi"}


def test_unsupported_prompt_type_is_refused_with_the_supported_ones(kits3d):
    with pytest.raises(SegmentInputError, match=f"{kits3d.key} takes the prompt types center, rand, rands, not bbox"):
        run_segment(SegmentConfig(dataset="kits23", model=kits3d.key, prompts=["center", "bbox"]),
                    data=kits3d.data, root=kits3d.root, sam=kits3d.model)
