"""What a segmentation sweep can keep beyond Dice: the normalised surface distance, every
predicted mask, and the thumbnails of the report's overlays."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fmcache.errors import FmcacheError
from fmcache.fairness import dice_per_sample, evaluate_dice
from fmcache.report import build_report
from fmcache.runs import has_masks, load_results, new_run_dir, predicted_mask, read_overlays, write_run
from fmcache.segment.features import cached_items
from fmcache.segment.prompts import prompt_at
from fmcache.segment.sam import decode
from fmcache.segment.surface import nsd_per_class, nsd_per_sample
from fmcache.segment.sweep import SegmentConfig, run_segment
from fmcache.segment.thumbnails import choose_items, thumbnail

PROMPTS = ["center", "bbox"]


def _squares(shift: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two 10 x 10 squares, the second ``shift`` columns to the right of the first."""
    a = np.zeros((size, size), bool)
    a[5:15, 5:15] = True
    b = np.zeros_like(a)
    b[5:15, 5 + shift:15 + shift] = True
    return a, b


# Two 10 x 10 squares 3 columns apart. Each has 36 boundary pixels (100 minus the 8 x 8 inside).
# From A's boundary to B's: the 7 + 7 pixels of the top and bottom rows in columns 8..14 lie on
# B's boundary (0); columns 7, 6, 5 of those rows are 1, 2, 3 away; A's left column (8 pixels
# between the corners) is 3 from B's; A's right column (column 14, inside B) is min(3, distance to
# B's top or bottom row) = 1, 2, 3, 3, 3, 3, 2, 1 away. B to A is the mirror image. So within
# 0.5: 14 + 14 of 72; within 2: (14 + 2 + 2 + 4) * 2 = 44 of 72; within 3: all.
@pytest.mark.parametrize("tolerance, expected", [(0.5, 28 / 72), (2.0, 44 / 72), (2.9, 44 / 72), (3.0, 1.0)])
def test_nsd_of_two_offset_squares_by_hand(tolerance, expected):
    a, b = _squares(3)
    assert nsd_per_sample([a], [b], tolerance=tolerance)[0] == pytest.approx(expected)
    # symmetric, and a label map of two classes averages them
    assert nsd_per_sample([b], [a], tolerance=tolerance)[0] == pytest.approx(expected)
    other = np.zeros_like(a)
    other[20:28, 20:28] = True  # class 2: the same square in both
    truth, pred = a + 2 * other, b + 2 * other
    assert nsd_per_class([truth], [pred], tolerance=tolerance)[0] == pytest.approx([expected, 1.0])
    # not Dice: the squares overlap by 70 of 100 pixels each
    assert dice_per_sample([a], [b])[0] == pytest.approx(0.7)


def test_nsd_empty_masks_follow_the_dice_rule():
    a, _ = _squares(0)
    z = np.zeros_like(a)
    # truth/prediction: both empty, prediction empty, truth empty, both the same square
    truth, pred = [z, a, z, a], [z, z, a, a]
    assert nsd_per_sample(truth, pred, tolerance=1.0).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert dice_per_sample(truth, pred).tolist() == [1.0, 0.0, 0.0, 1.0]
    skip = nsd_per_sample(truth, pred, tolerance=1.0, empty="skip")
    assert np.isnan(skip[0]) and skip[1:].tolist() == [0.0, 0.0, 1.0]
    # a class absent from both counts 1 in the mean, or is left out of it
    label = a.astype(np.int64)  # class 1 only; class 2 absent from both
    shifted = _squares(3)[1].astype(np.int64)
    assert nsd_per_sample([label], [shifted], tolerance=0.5, n_classes=2)[0] == pytest.approx((28 / 72 + 1) / 2)
    assert nsd_per_sample([label], [shifted], tolerance=0.5, n_classes=2, empty="skip")[0] == pytest.approx(28 / 72)
    with pytest.raises(Exception, match="tolerance"):
        nsd_per_sample([a], [a], tolerance=-1.0)


def test_evaluate_dice_takes_nsd_as_a_second_score():
    rng = np.random.default_rng(0)
    dice, nsd = rng.uniform(0.5, 1.0, 40), rng.uniform(0.2, 0.9, 40)
    groups = np.repeat([0, 1], 20)
    plain = evaluate_dice(dice, {"sex": groups}, n_boot=50, seed=3)
    both = evaluate_dice(dice, {"sex": groups}, nsd=nsd, n_boot=50, seed=3)
    assert not plain["metric"].str.startswith("nsd").any()
    assert {"nsd", "nsd_delta", "nsd_skew", "nsd_std", "nsd_es"} <= set(both["metric"])
    # Dice's rows are untouched by the extra score (same resamples)
    key = ["metric", "group"]
    pd.testing.assert_frame_equal(both[both["metric"].str.startswith("dsc")].reset_index(drop=True),
                                  plain[plain["metric"].str.startswith("dsc")].reset_index(drop=True))
    rows = both.set_index(key)["value"]
    g = [nsd[groups == 0].mean(), nsd[groups == 1].mean()]
    assert rows[("nsd", "0")] == pytest.approx(g[0]) and rows[("nsd", "overall")] == pytest.approx(nsd.mean())
    assert rows[("nsd_delta", "gap")] == pytest.approx(abs(g[0] - g[1]))
    assert rows[("nsd_es", "gap")] == pytest.approx(nsd.mean() / (1 + np.std(g)))
    with pytest.raises(Exception, match="nsd has shape"):
        evaluate_dice(dice, {"sex": groups}, nsd=nsd[:5])


def test_thumbnails_keep_classes_and_fit_the_box():
    truth = np.zeros((400, 300), np.uint8)
    truth[50:200, 40:120] = 1
    truth[250:380, 150:280] = 2
    image = np.random.default_rng(0).integers(0, 255, (400, 300, 3), dtype=np.uint8)
    im, t, p = thumbnail(image, truth, truth)
    assert im.shape == (192, 144, 3) and t.shape == (192, 144)
    assert set(np.unique(t)) == {0, 1, 2} and (t == p).all()
    # nearest neighbour: the scaled class 1 box is where the original is
    assert t[100 * 192 // 400, 80 * 144 // 300] == 1
    # small images are kept as they are
    _, t, _ = thumbnail(image[:24, :20], truth[:24, :20], truth[:24, :20])
    assert t.shape == (24, 20)


def test_the_chosen_items_are_each_groups_lowest_median_and_highest():
    dice = np.array([0.5, 0.9, 0.1, 0.7, np.nan, 0.3, 0.8])
    groups = np.array([0, 0, 0, 0, 0, 1, -1])
    assert choose_items(dice, groups, 2) == [(2, "lowest"), (0, "median"), (1, "highest"), (5, "lowest")]


@pytest.fixture(scope="module")
def outputs(montgomery_sam, tmp_path_factory):
    """Two sweeps of the shared Montgomery entry: NSD and masks asked for, and neither."""
    m = montgomery_sam
    runs = tmp_path_factory.mktemp("outputs-runs")
    full = run_segment(SegmentConfig(dataset=m.ds.name, model="sam", prompts=PROMPTS, split="all", n_boot=20,
                                     nsd_tolerance=2.0, save_masks=True),
                       data=m.data, root=m.root, runs=runs, sam=m.sam)
    plain = run_segment(SegmentConfig(dataset=m.ds.name, model="sam", prompts=["center"], split="all", n_boot=0),
                        data=m.data, root=m.root, runs=runs, sam=m.sam)
    return m, full, plain


def test_saved_masks_are_what_decode_gives(outputs):
    m, run, plain = outputs
    assert run.config["save_masks"] is True and run.config["nsd_tolerance"] == 2.0
    assert has_masks(run) and not has_masks(plain)
    with pytest.raises(FmcacheError, match="--save-masks"):
        predicted_mask(plain, "center", m.ds.table["id"].iloc[0], 1)
    prompts = run.predictions["prompts"]
    ids = m.ds.table["id"].to_numpy(dtype=str)
    batch = np.arange(8)  # the sweep's first batch, decoded as it was: one call per class
    features, meta = cached_items(run.cache_entry(), batch)
    for kind in PROMPTS:
        stored = run.predictions[f"{kind}.mask.sex"]
        for c, name in ((1, "left lung"), (2, "right lung")):
            assert prompts["present"][batch, c - 1].all()
            ps = [prompt_at(prompts, kind, int(i), c) for i in batch]
            out = decode(m.sam, features, meta, boxes=np.stack([p.box for p in ps]) if kind == "bbox" else None,
                         points=None if kind == "bbox" else np.stack([p.points for p in ps]),
                         point_labels=None if kind == "bbox" else np.stack([p.point_labels for p in ps]))
            for i in batch:
                truth = m.ds.mask(int(i))
                mask = predicted_mask(run, kind, ids[i], c)
                assert mask.dtype == bool and mask.shape == truth.shape
                np.testing.assert_array_equal(mask, out.masks[i])
                np.testing.assert_array_equal(predicted_mask(run.path, kind, ids[i], name), mask)
                # the stored scores are those of the saved masks
                assert stored["dsc"][i, c - 1] == pytest.approx(dice_per_sample([truth == c], [mask])[0])
                assert stored["nsd"][i, c - 1] == pytest.approx(
                    nsd_per_sample([truth == c], [mask], tolerance=2.0)[0])
    with pytest.raises(FmcacheError, match="no prompt type 'rand'"):
        predicted_mask(run, "rand", ids[0], 1)
    with pytest.raises(FmcacheError, match="no class 'heart'"):
        predicted_mask(run, "bbox", ids[0], "heart")
    with pytest.raises(FmcacheError, match="not in run"):
        predicted_mask(run, "bbox", "no-such-item", 1)


def test_nsd_fairness_rows_only_when_asked(outputs):
    _, run, plain = outputs
    assert not plain.metrics["metric"].str.startswith("nsd").any() and "nsd" not in plain.predictions["center.mask.sex"]
    m = run.metrics
    for kind in PROMPTS:
        per_item = run.predictions[f"{kind}.mask.sex"]["nsd"].mean(axis=1)
        overall = m.query("prompt == @kind and attribute == 'sex' and metric == 'nsd' and group == 'overall'")
        assert overall["value"].iloc[0] == pytest.approx(per_item.mean())
        gaps = set(m.query("prompt == @kind and group == 'gap'")["metric"])
        assert {"nsd_delta", "nsd_skew", "nsd_std", "nsd_es"} <= gaps
        delta = m.query("prompt == @kind and attribute == 'sex' and metric == 'nsd_delta'").iloc[0]
        assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]


def test_overlay_thumbnails_are_the_chosen_items(outputs):
    m, run, plain = outputs
    ov = read_overlays(run)
    assert ov is not None and read_overlays(plain) is not None  # kept by every run
    attr = run.config["attributes"][0]  # the first attribute's groups
    assert str(ov["attribute"]) == attr and str(ov["prompt"]) in PROMPTS
    best = max(PROMPTS, key=lambda k: np.nanmean(run.predictions[f"{k}.mask.{attr}"]["dsc"]))
    assert str(ov["prompt"]) == best
    stored = run.predictions[f"{best}.mask.{attr}"]
    dice, groups = stored["dsc"].mean(axis=1), stored["group"]
    ids = list(stored["id"])
    for g in np.unique(groups[groups >= 0]):
        in_group = sorted(np.flatnonzero(groups == g), key=lambda k: (dice[k], k))
        want = list(dict.fromkeys([in_group[0], in_group[(len(in_group) - 1) // 2], in_group[-1]]))
        assert [ids.index(i) for i in ov["id"][ov["group"] == g]] == want
    for k, item in enumerate(ov["id"]):
        i = ids.index(item)
        h, w = ov["size"][k]
        truth = m.ds.mask(i)
        assert (h, w) == truth.shape and max(h, w) <= 192  # the fixture's images are small: not scaled
        np.testing.assert_array_equal(ov["truth"][k][:h, :w], truth)
        pred = np.zeros(truth.shape, np.uint8)
        for c in (1, 2):
            pred[predicted_mask(run, best, item, c)] = c
        np.testing.assert_array_equal(ov["pred"][k][:h, :w], pred)
        np.testing.assert_array_equal(ov["image"][k][:h, :w], np.asarray(m.ds.image(i).convert("RGB")))


def test_the_report_shows_an_overlay_per_group(outputs, tmp_path):
    _, run, _ = outputs
    ov = read_overlays(run)
    page = build_report([run.path], tmp_path / "seg.html", representation=False).read_text()
    shown = re.findall(r'<figure id="(f-seg-examples-[^"]+)"', page)
    names = [str(ov["group_names"][g]) for g in dict.fromkeys(ov["group"].tolist())]
    assert len(shown) == len(names) >= 2
    assert all(s.endswith("-" + n.lower()) for s, n in zip(shown, names))
    fig = page.split(f'id="{shown[0]}"')[1].split("</figure>")[0]
    assert "ground-truth outline" in fig and "data:image/png;base64," in fig
    # the NSD joins the Dice table
    assert "NSD gap" in page.split('id="t-montgomery-sex-dice"')[1].split("</table>")[0]


def test_a_segmentation_run_without_thumbnails_renders_without_examples(tmp_path):
    rows = [{"metric": "dsc", "group": g, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 10,
             "attribute": "sex", "prompt": "bbox"} for g, v in (("F", 0.8), ("M", 0.7), ("overall", 0.75))]
    seg = pd.DataFrame(rows).assign(label="mask", head="bbox", dataset="polyp", model="sam", convention="paper")
    path = new_run_dir("polyp-sam-segment", tmp_path)
    write_run(path, config={"dataset": "polyp", "model": "sam", "task": "segmentation", "attributes": ["sex"]},
              metrics=seg, sweep=pd.DataFrame(), predictions={})
    assert read_overlays(path) is None
    page = build_report([path], tmp_path / "old.html", representation=False).read_text()
    assert '<section id="segmentation"' in page and "seg-examples" not in page


def test_segment_command_options(montgomery_sam, sam_weights, run_cli, tmp_path):
    m = montgomery_sam
    code, out, _ = run_cli("segment", "--help")
    assert code == 0
    text = re.sub(r"[\s│]+", " ", out)
    assert "--nsd" in text and "normalised surface distance" in text and "--save-masks" in text
    runs = tmp_path / "runs"
    code, out, err = run_cli("segment", "-m", "sam", "-d", m.ds.name, "--data", str(m.data), "--prompts", "bbox",
                             "--split", "all", "--n-boot", "0", "--nsd", "1.5", "--save-masks",
                             "--weights", sam_weights, "--root", str(m.root), "--runs", str(runs))
    assert code == 0, err
    run = load_results(next(p for p in runs.iterdir() if p.is_dir()))
    assert run.config["nsd_tolerance"] == 1.5 and run.config["save_masks"] is True and has_masks(run)
    nsd = run.metrics.query("metric == 'nsd' and group == 'overall'")["value"].iloc[0]
    assert "nsd" in out and f"{nsd:.3f}" in out
    code, out, err = run_cli("results", str(run.path), "--root", str(m.root))
    assert code == 0 and f"{nsd:.3f}" in out, err
    code, _, err = run_cli("segment", "-m", "sam", "-d", m.ds.name, "--nsd", "-1", "--root", str(m.root))
    assert code == 2 and "--nsd" in err and "greater than or equal to 0" in err


def test_mask_image_sizes_are_kept_per_item(outputs):
    # portrait and landscape images in one run: each mask comes back at its own size
    m, run, _ = outputs
    ids = m.ds.table["id"].to_numpy(dtype=str)
    shapes = {predicted_mask(run, "bbox", ids[i], 1).shape for i in range(3)}
    assert shapes == {(20, 24), (24, 20)}
    assert Image.fromarray(predicted_mask(run, "bbox", ids[0], 1)).size == (24, 20)
