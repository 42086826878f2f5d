"""`fmcache segment`: prompts decoded from cached SAM features, Dice per item and class against
the release's masks, fairness with intervals, a run that `fmcache report` shows."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import seg_layouts

from fmcache.errors import FmcacheError
from fmcache.segment.prompts import make_prompt, prompt_at
from fmcache.segment.sam import decode, encode
from fmcache.segment.sweep import SegmentConfig, run_segment

PROMPTS = ["center", "bbox"]


@pytest.fixture(scope="module")
def weights(sam_weights):
    return sam_weights


@pytest.fixture(scope="module")
def montgomery(montgomery_sam):
    """The Montgomery fixture (two classes: left and right lung) cached by the tiny SAM, and a sweep."""
    ds, data, root, sam = montgomery_sam.ds, montgomery_sam.data, montgomery_sam.root, montgomery_sam.sam
    run = run_segment(SegmentConfig(dataset=ds.name, model="sam", prompts=PROMPTS, split="all", n_boot=20),
                      data=data, root=root, sam=sam)
    return ds, data, root, sam, run


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    total = truth.sum() + pred.sum()
    return 1.0 if total == 0 else 2.0 * (truth & pred).sum() / total


def test_each_items_dice_is_its_classes_mean_recomputed_from_the_image(montgomery):
    ds, _, _, sam, run = montgomery
    prompts = run.predictions["prompts"]
    assert run.config["mask_classes"] == ["left lung", "right lung"] and run.config["task"] == "segmentation"
    for kind in PROMPTS:
        stored = run.predictions[f"{kind}.mask.sex"]
        assert stored["dsc"].shape == (len(ds.table), 2)
        for i in (0, 5):
            image = np.asarray(ds.image(i).convert("RGB"))
            features, meta = encode(sam, [image])
            truth = ds.mask(i)
            by_class = []
            for c in (1, 2):
                p = prompt_at(prompts, kind, i, c)
                # the stored prompt is the one the generator makes for this item, class and seed
                again = make_prompt(truth == c, kind, seed=0, item_id=ds.table["id"].iloc[i], cls=c)
                np.testing.assert_array_equal(p.box if kind == "bbox" else p.points, again.box if kind == "bbox" else again.points)
                out = decode(sam, features, meta, boxes=p.box[None] if kind == "bbox" else None,
                             points=None if kind == "bbox" else p.points[None],
                             point_labels=None if kind == "bbox" else p.point_labels[None])
                by_class.append(_dice(truth == c, out.masks[0]))
            # cached features are float16: a pixel on the logit threshold may flip
            np.testing.assert_allclose(stored["dsc"][i], by_class, atol=0.02)


def test_the_run_holds_dice_fairness_per_prompt_with_intervals(montgomery):
    _, _, _, _, run = montgomery
    m = run.metrics
    assert set(m["prompt"]) == set(PROMPTS) and set(m["attribute"]) == {"sex", "age"}
    for kind in PROMPTS:
        per_item = run.predictions[f"{kind}.mask.sex"]["dsc"].mean(axis=1)
        overall = m.query("prompt == @kind and attribute == 'sex' and metric == 'dsc' and group == 'overall'")
        assert overall["value"].iloc[0] == pytest.approx(per_item.mean())
        gaps = set(m.query("prompt == @kind and group == 'gap'")["metric"])
        assert {"dsc_delta", "dsc_skew", "dsc_std", "dsc_es"} <= gaps
        delta = m.query("prompt == @kind and attribute == 'sex' and metric == 'dsc_delta'").iloc[0]
        assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]


def test_other_data_than_the_cached_is_refused(montgomery, tmp_path):
    ds, _, root, sam, _ = montgomery
    other = seg_layouts.write_montgomery(tmp_path / "other")
    (other / seg_layouts.MONTGOMERY_SET / "CXR_png" / "MCUCXR_0001_0.png").unlink()
    with pytest.raises(FmcacheError):
        run_segment(SegmentConfig(dataset=ds.name, model="sam", prompts=["center"]), data=other, root=root, sam=sam)
    with pytest.raises(FmcacheError, match="unknown prompt type 'centre'"):
        run_segment(SegmentConfig(dataset=ds.name, model="sam", prompts=["centre"]), root=root, sam=sam)


def test_embed_and_segment_commands_and_the_report(montgomery, weights, run_cli, tmp_path):
    ds, data, root, _, _ = montgomery
    code, out, err = run_cli("embed", "-m", "sam", "-d", "montgomery", "--data", str(data), "--weights", weights,
                             "--root", str(tmp_path / "cli-cache"))
    assert code == 0, err
    assert f"{ds.name}/sam: {len(ds.table)} images cached (features 64x64x64, pooled 64-d, sizes 4-d)" in out
    code, _, err = run_cli("embed", "-m", "sam", "-d", "montgomery", "--data", str(data), "--preprocess", "paper",
                           "--root", str(tmp_path / "cli-cache"))
    assert code == 2 and "switches of the classification protocols" in err
    code, out, err = run_cli("segment", "-m", "sam", "-d", ds.name, "--data", str(data), "--prompts", "center",
                             "--split", "all", "--n-boot", "20", "--weights", weights, "--root", str(root))
    assert code == 0, err
    assert "Dice per group and prompt" in out and "dsc_delta" in out
    # a SAM entry holds image features, not embeddings: probe says where they belong
    for model in ("sam", "all"):
        code, _, err = run_cli("probe", "-d", ds.name, "-m", model, "--root", str(root))
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert ("fmcache segment" if model == "sam" else "no embeddings to probe") in err
    run = sorted(p for p in (root / "runs").iterdir() if p.is_dir() and "segment" in p.name)[-1]
    code, out, err = run_cli("results", str(run), "--root", str(root))
    assert code == 0 and "Dice per group and prompt" in out, err
    code, _, err = run_cli("report", str(run), "--out", str(tmp_path / "seg.html"), "--root", str(root))
    assert code == 0, err
    page = (tmp_path / "seg.html").read_text()
    assert '<section id="segmentation"' in page
    # the representation analyses read the entry's pooled image features
    assert f'id="f-tsne-{ds.name}-sam-sex"' in page
