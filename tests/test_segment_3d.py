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
                # float16 features: logits agree to their rounding, and so do the masks wherever a logit
                # is farther from the cut than that
                tol = 2e-2 * max(1.0, np.abs(logits).max())
                np.testing.assert_allclose(cached, logits, atol=tol)
                flipped = (cached > 0) != (logits > 0)
                assert not flipped[np.abs(logits) > tol].any()
                if not flipped.any():
                    again = to_original_grid(cached, geometries[c - 1], threshold=0.0).astype(bool)
                    np.testing.assert_array_equal(again, mask)
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
    labels = ds.mask_volume(0).array
    for c, g in enumerate(geometries, start=1):
        assert g.orientation == ("R", "A", "S") and g.original_shape == volume.shape
        np.testing.assert_allclose(g.original_spacing, s3.KITS_SPACING[::-1], atol=1e-9)
        np.testing.assert_allclose(g.original_affine, volume.affine, atol=1e-9)
        assert g.target_spacing == (0.5, 0.5, 0.5) and g.box_size == (64, 64, 64)
        # each block is centred on its class's bounding box (to the nearest resampled voxel)
        where = np.argwhere(labels == c)
        centre = (where.min(axis=0) + where.max(axis=0)) / 2.0
        assert np.abs(to_block_coords(centre, g) - 32).max() <= 0.5 + 1e-6


def test_a_volume_without_any_class_is_cached_and_scores_by_the_empty_rule(tmp_path):
    """No block to encode, no prompt to give: its features are zeros and every class counts 1
    (absent from truth and prediction), the volumes around it as usual."""
    from helpers import official_layouts as ol

    data = s3.write_kits23(tmp_path / "kits23")
    seg = tmp_path / "kits23" / "dataset" / "case_00001" / "segmentation.nii.gz"
    ol.write_nifti(seg, np.zeros(s3.KITS_SHAPE, np.uint8), s3.KITS_AFFINE)
    ds = load_dataset("kits23", data=data)
    model = _tiny_model("sam_med3d", TINY, tmp_path / "weights")
    embed_features(ds, "sam_med3d", root=tmp_path / "cache", sam=model, progress=False)
    run = run_segment(SegmentConfig(dataset="kits23", model="sam_med3d", prompts=["center"], split="all", n_boot=0),
                      data=data, root=tmp_path / "cache", sam=model)
    dsc = run.predictions["center.mask.sex"]["dsc"]
    np.testing.assert_array_equal(dsc[1], [1.0, 1.0, 1.0])
    assert (dsc[0] < 1).any()  # the others were decoded


def test_a_label_volume_moved_since_caching_is_refused(kits3d, tmp_path):
    """The cache fingerprints the table, not the voxels: a label volume rewritten on another grid
    would map every prediction onto the wrong voxels, so the sweep names it instead."""
    import shutil

    from helpers import official_layouts as ol

    from fmcache.errors import DatasetError

    data = tmp_path / "kits23"
    shutil.copytree(kits3d.data, data)
    shifted = s3.KITS_AFFINE.copy()
    shifted[2, 3] += 5.0
    seg = data / "dataset" / "case_00000" / "segmentation.nii.gz"
    ol.write_nifti(seg, s3.kits_labels(0, True), shifted)
    with pytest.raises(DatasetError, match="not on the voxel grid its blocks were cached from"):
        run_segment(SegmentConfig(dataset="kits23", model=kits3d.key, prompts=["center"], split="all"),
                    data=data, root=kits3d.root, sam=kits3d.model)


def test_groups_are_per_volume_including_bmi(kits3d):
    ds, run = kits3d.ds, kits3d.run
    bmi = run.predictions["center.mask.bmi"]
    np.testing.assert_array_equal(bmi["group"], ds.table["sa/bmi"].to_numpy())
    assert set(run.metrics["attribute"]) == {"sex", "bmi"}


def test_unsupported_prompt_type_is_refused_with_the_supported_ones(kits3d):
    with pytest.raises(SegmentInputError, match=f"{kits3d.key} takes the prompt types center, box_center, rand, rands, not bbox"):
        run_segment(SegmentConfig(dataset="kits23", model=kits3d.key, prompts=["center", "bbox"]),
                    data=kits3d.data, root=kits3d.root, sam=kits3d.model)


# ---------------------------------------------------------------------------------------------
# SegVol: one zoom-out block per volume, point and box prompts, the zoom-in pass on request

# grid (3, 2, 2) in (X, Y, Z): the block is (48, 32, 8), every axis different
SEGVOL_TINY = dict(spatial_size=(8, 32, 48), patch_size=(4, 16, 16), hidden_size=48, mlp_dim=96, num_layers=2,
                   num_heads=2, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=16,
                   with_text=False)
SEGVOL_KINDS = ["center", "rands", "bbox"]


@pytest.fixture(scope="module")
def kits_segvol(tmp_path_factory):
    from fmcache.embed import segvol
    from fmcache.segment.volumetric import VolumeModel

    cfg = segvol.SegVolConfig(**SEGVOL_TINY)
    torch.manual_seed(0)
    net = segvol.SegVol(cfg).eval()
    with torch.no_grad():  # SegVol's zero-initialised embeddings would make prompts alike
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("segvol")
    torch.save(segvol.to_release_keys(net), folder / "pytorch_model.bin")
    spec = dataclasses.replace(VOLUME_MODELS["segvol"], weights=str(folder), input=VolumeRule(size=(48, 32, 8),
                                                                                               intensity="segvol"))
    model = VolumeModel(spec, segvol.load_segvol(folder, config=cfg), "pytorch_model.bin", None)
    data = s3.write_kits23(tmp_path_factory.mktemp("kits23"))
    root = tmp_path_factory.mktemp("cache")
    ds = load_dataset("kits23", data=data)
    embed_features(ds, "segvol", root=root, sam=model, progress=False)
    run = run_segment(SegmentConfig(dataset="kits23", model="segvol", prompts=SEGVOL_KINDS, split="all", n_boot=0),
                      data=data, root=root, sam=model)
    return SimpleNamespace(ds=ds, data=data, root=root, model=model, run=run)


def _segvol_end_to_end(model, ds, v: int, prompt, zoom_in: bool) -> np.ndarray:
    from fmcache.embed.segvol import infer, normalise_intensity

    volume = normalise_intensity(ds.volume(v).array)
    with torch.no_grad():
        return infer(model.net, volume, prompt.points, prompt.point_labels, prompt.box, zoom_in=zoom_in,
                     generator=torch.Generator().manual_seed(0)).numpy()


def test_segvol_decoding_from_the_cache_equals_its_inference(kits_segvol):
    import fmcache
    from fmcache.segment.volumetric import decode_blocks

    ds, run, model = kits_segvol.ds, kits_segvol.run, kits_segvol.model
    emb = fmcache.open_cache(kits_segvol.root).embeddings("kits23", "segvol")
    assert emb.provenance["dims"]["features"] == [1, 48, 3, 2, 2]  # one block for every class
    prompts = run.predictions["prompts"]
    for v in (0, 3):
        features, geometries = cached_volume(emb, v)
        for kind in SEGVOL_KINDS:
            ps = [prompt_at(prompts, kind, v, c) for c in (1, 2, 3)]
            masks = decode_blocks(model, features, geometries, ps, ds.volume(v).shape)
            for p, mask in zip(ps, masks):
                if p.is_absent:
                    assert not mask.any()
                    continue
                logits = _segvol_end_to_end(model, ds, v, p, zoom_in=False)
                tol = 2e-2 * max(1.0, np.abs(logits).max())
                assert not (mask != (logits > 0))[np.abs(logits) > tol].any()


def test_segvol_zoom_in_sweep_equals_its_inference(kits_segvol):
    ds, model = kits_segvol.ds, kits_segvol.model
    run = run_segment(SegmentConfig(dataset="kits23", model="segvol", prompts=["bbox"], split="all", n_boot=0,
                                    zoom_in=True), data=kits_segvol.data, root=kits_segvol.root, sam=model)
    prompts = run.predictions["prompts"]
    stored = run.predictions["bbox.mask.sex"]["dsc"]
    for v in (0,):
        truth = ds.mask_volume(v).array
        expected = []
        for c in (1, 2, 3):
            p = prompt_at(prompts, "bbox", v, c)
            if p.is_absent:
                expected.append(1.0)
                continue
            mask = _segvol_end_to_end(model, ds, v, p, zoom_in=True) > 0
            expected.append(2 * ((truth == c) & mask).sum() / ((truth == c).sum() + mask.sum()))
        np.testing.assert_allclose(stored[v], expected, atol=0.02)


def test_zoom_in_is_segvols_alone(kits3d):
    with pytest.raises(Exception, match="--zoom-in is SegVol's second pass"):
        run_segment(SegmentConfig(dataset="kits23", model=kits3d.key, prompts=["center"], zoom_in=True),
                    data=kits3d.data, root=kits3d.root, sam=kits3d.model)


def test_report_says_volumes_are_scored_whole_and_shows_slices(kits3d, tmp_path):
    from fmcache.report import build_report

    page = build_report([kits3d.run.path], tmp_path / "seg3d.html", representation=False).read_text()
    assert f"kits23 is scored per volume, on its own voxels: {kits3d.key} (3D model, NSD within 1 mm)" in page
    assert "the axial slice where each volume&#x27;s truth is largest" in page or \
        "the axial slice where each volume's truth is largest" in page


def test_release_file_is_found_in_the_hub_cache_offline(tmp_path):
    """The registered source hf-hub:blueyo0/SAM-Med3D/sam_med3d_turbo.pth, read from a Hugging
    Face cache snapshot with the hub offline; without it, one error naming the repository."""
    import os
    import shutil

    from fmcache.errors import ModelError

    with pytest.raises(ModelError, match="blueyo0/SAM-Med3D"):
        load_volume_model("sam_med3d")
    commit = "0123456789abcdef0123456789abcdef01234567"
    model = tiny_sam3d(dict(TINY, img_size=128, num_heads=12))  # the release's block, small widths
    src = save_release(model, tmp_path / "snap" / "sam_med3d_turbo.pth").parent
    base = os.path.join(os.environ["HF_HOME"], "hub", "models--blueyo0--SAM-Med3D")
    shutil.copytree(src, os.path.join(base, "snapshots", commit))
    os.makedirs(os.path.join(base, "refs"))
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(commit)
    loaded = load_volume_model("sam_med3d")
    assert loaded.weights_id == f"blueyo0/SAM-Med3D@{commit}" and loaded.net.geometry["num_heads"] == 12
    # a file built for another block size is refused, naming both
    small = save_release(tiny_sam3d(), tmp_path / "small.pth")
    with pytest.raises(ModelError, match="built for 64 x 64 x 64 input blocks but 'sam_med3d' feeds 128 x 128 x 128"):
        load_volume_model("sam_med3d", weights=str(small))
    block = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.net.encode(block).numpy(), model.encode(block).numpy())


def test_segvol_text_prompt_is_the_class_name(kits_segvol, tmp_path):
    """`--prompts text`: each class present is segmented from its name through SegVol's text tower,
    as its own inference does; without the release's tokenizer files, one error saying so."""
    from helpers.tiny_segvol import TINY_TEXT, write_tiny_tokenizer

    from fmcache.embed import segvol
    from fmcache.errors import ModelError
    from fmcache.segment.volumetric import VolumeModel

    cfg = segvol.SegVolConfig(**dict(SEGVOL_TINY, with_text=True, text=TINY_TEXT))
    torch.manual_seed(1)
    net = segvol.SegVol(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path / "release"
    folder.mkdir()
    torch.save(segvol.to_release_keys(net), folder / "pytorch_model.bin")
    model = VolumeModel(kits_segvol.model.spec, segvol.load_segvol(folder, config=cfg), "pytorch_model.bin", None)
    with pytest.raises(ModelError, match="tokenizer"):
        run_segment(SegmentConfig(dataset="kits23", model="segvol", prompts=["text"], split="all", n_boot=0),
                    data=kits_segvol.data, root=kits_segvol.root, sam=model)
    write_tiny_tokenizer(folder)
    model = VolumeModel(kits_segvol.model.spec, segvol.load_segvol(folder, config=cfg), "pytorch_model.bin", None)
    # the entry was cached by another network: decode this one's own zoom-out features
    ds = kits_segvol.ds
    emb_root = tmp_path / "cache"
    embed_features(ds, "segvol", root=emb_root, sam=model, progress=False)
    run = run_segment(SegmentConfig(dataset="kits23", model="segvol", prompts=["text", "bbox"], split="all",
                                    n_boot=0), data=kits_segvol.data, root=emb_root, sam=model)
    stored = run.predictions["text.mask.sex"]["dsc"]
    truth = ds.mask_volume(0).array
    volume = segvol.normalise_intensity(ds.volume(0).array)
    expected = []
    for c, name in enumerate(ds.spec.mask_classes, start=1):
        with torch.no_grad():
            mask = segvol.infer(model.net, volume, text=name, zoom_in=False).numpy() > 0
        expected.append(2 * ((truth == c) & mask).sum() / ((truth == c).sum() + mask.sum()))
    np.testing.assert_allclose(stored[0], expected, atol=0.02)
    assert not np.allclose(stored, run.predictions["bbox.mask.sex"]["dsc"])


def test_an_interrupted_3d_embedding_resumes_to_the_same_entry(kits3d, tmp_path):
    """Killed after its first chunk of volumes, the rerun encodes only the rest; the entry equals
    the uninterrupted one, geometry included."""
    import fmcache

    model = _tiny_model(kits3d.key, TINY if kits3d.key == "sam_med3d" else FAST, tmp_path / "weights")

    def stop(chunk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_features(kits3d.ds, kits3d.key, root=tmp_path / "cache", sam=model, progress=False, on_chunk=stop)
    summary = embed_features(kits3d.ds, kits3d.key, root=tmp_path / "cache", sam=model, progress=False)
    assert 0 < summary.encoded < len(kits3d.ds.table)
    a = fmcache.open_cache(tmp_path / "cache").embeddings("kits23", kits3d.key)
    b = fmcache.open_cache(kits3d.root).embeddings("kits23", kits3d.key)
    rows = np.arange(len(kits3d.ds.table))
    kinds = ("features", "crops", "geometry", "pooled")
    got, want = a.items(rows, kinds), b.items(rows, kinds)
    for k in kinds:
        np.testing.assert_array_equal(got[k], want[k])


def test_a_fastsam3d_encoder_file_is_completed_by_sam_med3ds_decoder(tmp_path):
    """FastSAM3D's distillation saves the encoder alone; its evaluation takes the prompt encoder
    and mask decoder from SAM-Med3D's checkpoint, here found where sam_med3d's source points."""
    teacher = tiny_sam3d(dict(TINY, img_size=128), seed=1)
    save_release(teacher, tmp_path / "w" / "sam_med3d_turbo.pth")
    student = tiny_sam3d(dict(FAST, img_size=128), seed=2)
    bare = {k.removeprefix("image_encoder."): v for k, v in student.state_dict().items()
            if k.startswith("image_encoder.")}
    torch.save({"model_state_dict": bare}, tmp_path / "FastSAM3D.pth")
    spec = dataclasses.replace(VOLUME_MODELS["fastsam3d"], weights=str(tmp_path / "FastSAM3D.pth"))
    teacher_spec = dataclasses.replace(VOLUME_MODELS["sam_med3d"], weights=str(tmp_path / "w" / "sam_med3d_turbo.pth"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(VOLUME_MODELS, "sam_med3d", teacher_spec)
        loaded = load_volume_model(spec)
    sd = loaded.net.state_dict()
    for k, v in student.state_dict().items():
        if k.startswith("image_encoder."):
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
    for k, v in teacher.state_dict().items():
        if k.startswith(("prompt_encoder.", "mask_decoder.")):
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
