"""`fmcache segment` on volumes: a 2D model slice by slice, its slices restacked into each volume
and scored per volume (Dice, IoU, NSD in mm) with fairness per volume."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import seg3d_layouts as s3

from fmcache.datasets import load_dataset
from fmcache.segment.demo_model import KEY, load_demo_sam
from fmcache.segment.features import cached_items
from fmcache.segment.prompts import prompt_at
from fmcache.segment.sam import decode
from fmcache.segment.slices import slice_dataset
from fmcache.segment.sweep import SegmentConfig, run_segment

PROMPTS = ["center", "bbox"]


@pytest.fixture(scope="module")
def kits_slices(tmp_path_factory):
    """KiTS23's fixture, its foreground slices cached by a tiny random SAM at 64 px, and a sweep
    over all volumes."""
    from fmcache.segment.features import embed_features

    data = s3.write_kits23(tmp_path_factory.mktemp("kits23"))
    root = tmp_path_factory.mktemp("kits-cache")
    ds = load_dataset("kits23", data=data)
    sam = load_demo_sam(tmp_path_factory.mktemp("weights"), size=64)
    embed_features(slice_dataset(ds), KEY, root=root, sam=sam, progress=False)
    run = run_segment(SegmentConfig(dataset="kits23", model=KEY, prompts=PROMPTS, split="all", n_boot=20,
                                    nsd_tolerance=1.0, save_masks=True), data=data, root=root, sam=sam)
    return SimpleNamespace(ds=ds, data=data, root=root, sam=sam, run=run)


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    total = truth.sum() + pred.sum()
    return 1.0 if total == 0 else 2.0 * (truth & pred).sum() / total


def test_items_are_volumes_with_their_groups(kits_slices):
    ds, run = kits_slices.ds, kits_slices.run
    stored = run.predictions["center.mask.sex"]
    assert run.config["items"] == "volumes (2D model, slice by slice)" and run.config["n_items"] == len(ds.table)
    np.testing.assert_array_equal(stored["id"], ds.table["id"].to_numpy(dtype=str))
    np.testing.assert_array_equal(stored["group"], ds.table["sa/sex"].to_numpy())
    assert stored["dsc"].shape == (len(ds.table), 3)  # kidney, tumor, cyst


def test_per_volume_dice_is_the_restacked_slices_scored_whole(kits_slices):
    """Each foreground slice decoded from the cache with its stored prompt, put back at its own
    slice index by hand, and the volume scored against the whole label volume."""
    import fmcache

    ds, run = kits_slices.ds, kits_slices.run
    emb = fmcache.open_cache(kits_slices.root).embeddings("kits23_slices", KEY)
    view_ids = emb.samples()["id"].to_numpy(dtype=str)
    prompts = run.predictions["prompts"]
    where = {i: k for k, i in enumerate(prompts["ids"])}
    for kind in PROMPTS:
        stored = run.predictions[f"{kind}.mask.sex"]
        for v in (0,):  # case_00000 has a kidney, a tumour and a cyst
            truth = ds.mask(v)
            pred = np.zeros((3, *truth.shape), bool)
            for row in np.flatnonzero(np.char.startswith(view_ids, f"{ds.table['id'][v]}/")):
                z = int(view_ids[row].rsplit("/z", 1)[1])
                features, meta = cached_items(emb, [row])
                for c in (1, 2, 3):
                    p = prompt_at(prompts, kind, where[view_ids[row]], c)
                    if p.is_absent:
                        continue
                    out = decode(kits_slices.sam, features, meta, boxes=p.box[None] if kind == "bbox" else None,
                                 points=None if kind == "bbox" else p.points[None],
                                 point_labels=None if kind == "bbox" else p.point_labels[None])
                    pred[c - 1, z] = out.masks[0]
            expected = [_dice(truth == c, pred[c - 1]) for c in (1, 2, 3)]
            np.testing.assert_allclose(stored["dsc"][v], expected, atol=1e-12)


def test_nsd_is_in_mm_of_the_volume(kits_slices):
    """The stored NSD of a volume equals MONAI's on the restacked prediction with the voxel
    spacing of the stack (slices 0.5 mm apart, pixels 0.92 mm), not with unit spacing."""
    import torch
    from monai.metrics import compute_surface_dice

    from fmcache.runs.masks import predicted_mask

    ds, run = kits_slices.ds, kits_slices.run
    v = 0
    truth = ds.mask(v)
    stored = run.predictions["bbox.mask.sex"]["nsd"][v]
    spacing = (0.5, 0.92, 0.92)  # (slices, rows, columns) of the axial stack
    for c in (1, 2):
        # the saved masks of a slice-by-slice run are the restacked volumes
        pred = predicted_mask(run, "bbox", ds.table["id"][v], c)
        assert pred.shape == truth.shape
        t = torch.from_numpy(np.stack([truth == c])[None])
        p = torch.from_numpy(np.stack([pred])[None])
        mm = float(compute_surface_dice(p, t, class_thresholds=[1.0], include_background=True, spacing=spacing)[0, 0])
        px = float(compute_surface_dice(p, t, class_thresholds=[1.0], include_background=True)[0, 0])
        assert stored[c - 1] == pytest.approx(mm, abs=1e-9)
        if abs(mm - px) > 1e-6:
            assert stored[c - 1] != pytest.approx(px, abs=1e-9)


def test_overlays_show_a_foreground_slice_of_chosen_volumes(kits_slices):
    from fmcache.runs.masks import read_overlays

    o = read_overlays(kits_slices.run.path)
    assert len(o["id"]) >= 2 and set(o["id"]) <= set(kits_slices.ds.table["id"])
    for truth in o["truth"]:
        assert truth.max() > 0  # the slice where the volume's truth is largest


@pytest.mark.slow  # the tiny SAM at SAM's own 1024 px input, on every foreground slice
def test_command_line_slice_by_slice(run_cli, sam_weights, tmp_path):
    """`fmcache embed -m sam -d kits23` caches the foreground slices as kits23_slices and says so;
    `fmcache segment` finds them under the dataset's own name and scores volumes."""
    import fmcache

    data = s3.write_kits23(tmp_path / "kits23")
    root = str(tmp_path / "cache")
    code, out, err = run_cli("embed", "-m", "sam", "-d", "kits23", "--data", str(data), "--root", root,
                             "--weights", sam_weights)
    assert code == 0, err
    assert "reads the axial slices of kits23 that hold foreground" in out + err
    assert "cached as dataset 'kits23_slices'" in out
    code, out, err = run_cli("segment", "-m", "sam", "-d", "kits23", "--data", str(data), "--root", root,
                             "--weights", sam_weights, "--prompts", "bbox", "--n-boot", "0", "--split", "all")
    assert code == 0 and "Traceback" not in err, err
    from fmcache.runs import list_runs

    (run,) = list_runs(root)["path"]
    assert fmcache.load_results(run).config["items"] == "volumes (2D model, slice by slice)"
