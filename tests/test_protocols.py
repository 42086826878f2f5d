"""Protocols: each switch against an independent computation, and `--protocol fairmedfm` end to end."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from helpers import toy
from PIL import Image
from torchvision import transforms as T

import fmcache
from fmcache.datasets import load_dataset
from fmcache.embed.preprocess import build_transform
from fmcache.embed.spec import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from fmcache.embed.variants import PAPER_PREPROCESS, reference_preprocess
from fmcache.errors import FmcacheError, HeadInputError
from fmcache.probe.data import load_probe_data
from fmcache.protocols import (
    PROTOCOLS,
    SWITCHES,
    dataset_options,
    differences,
    entry_suffix,
    reference_values,
    resolve,
)

from test_report import tables_on_page

SYNTH = {"size": "200", "image_size": "48"}


def test_every_switch_has_a_value_and_a_source_under_every_protocol():
    for s in SWITCHES.values():
        for p in PROTOCOLS:
            assert s.value[p] in s.values and s.cite[p], (s.name, p)
    # fmcache's protocol is what the commands did before protocols existed
    assert resolve("fmcache", "probe") == {"feature": "auto", "templates": "mean", "query_pool": "mean",
                                           "logit_scale": "model", "threshold": "val", "convention": "paper"}
    assert resolve("fmcache", "embed") == {"preprocess": "model", "slices": "32", "queries": "mean"}
    assert resolve("fairmedfm", "probe", {"templates": "mean"})["templates"] == "mean"  # a switch beats the bundle
    assert entry_suffix(resolve("paper", "embed"), multi_query=True) == "+pre-paper+queries-reference"
    assert entry_suffix(resolve("fairmedfm", "embed"), multi_query=False) == "+pre-reference"
    assert entry_suffix(resolve("fmcache", "embed"), multi_query=True) == ""
    with pytest.raises(FmcacheError, match="preprocess 'squash': choose one of model, paper, reference"):
        resolve("fairmedfm", "embed", {"preprocess": "squash"})
    with pytest.raises(FmcacheError, match=r"unknown protocol 'fairmed' \(did you mean 'fairmedfm'\?\)"):
        resolve("fairmed", "probe")


def test_the_reference_protocol_sets_each_datasets_own_options():
    opts = {k: dataset_options("fairmedfm", k, ["sex", "age"], {}) for k in ("mimic_cxr", "covid_ct_md", "adni",
                                                                                 "ham10000", "papila")}
    assert opts["mimic_cxr"] == {"split": "balanced-test:sex", "cohort": "demographics"}
    assert opts["covid_ct_md"] == {"split": "balanced-test:sex", "window": "fairmedfm"}
    assert opts["adni"] == {"split": "balanced-test:sex", "intensity": "slice_minmax"}
    assert opts["ham10000"] == {"split": "balanced-test:sex", "malignant": "reference"}
    assert opts["papila"] == {"split": "balanced-test:sex"}
    # what the user sets wins; fmcache's protocol adds nothing
    assert dataset_options("fairmedfm", "mimic_cxr", ["sex"], {"split": "patient"})["split"] == "patient"
    assert dataset_options("fmcache", "mimic_cxr", ["sex"], {}) == {}
    # and every option value the protocols set is one the adapter accepts
    from fmcache.datasets import get_dataset

    for s in SWITCHES.values():
        for key, (option, by_value) in s.options.items():
            assert option in get_dataset(key).options, (s.name, key)
            for value in by_value.values():
                assert value in get_dataset(key).options[option], (s.name, key, value)


@pytest.mark.parametrize("dataset, mean, std", [
    ("chexpert", (0.5056,) * 3, (0.252,) * 3), ("adni", (0.5056,) * 3, (0.252,) * 3),
    ("gf3300", (0.2756,) * 3, (0.1708,) * 3), ("ham10000", CLIP_MEAN, CLIP_STD),
])
def test_reference_preprocessing_equals_torchvision_run_directly(dataset, mean, std):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(300, 410, 3), dtype=np.uint8))  # not square: the crop counts
    direct = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                        T.Normalize(mean, std)])
    torch.testing.assert_close(build_transform(reference_preprocess(dataset))(image), direct(image), rtol=0, atol=0)
    paper = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(build_transform(PAPER_PREPROCESS)(image), paper(image), rtol=0, atol=0)


def test_c2l_reference_feature_is_the_l2_normalised_head_output(tmp_path):
    toy.write_cache(tmp_path, vlm=True, model="c2l")
    emb = fmcache.open_cache(tmp_path).embeddings("synthetic", "c2l")
    auto = load_probe_data(emb, kind="auto")
    ref = load_probe_data(emb, kind="reference")
    assert auto.kind == ref.kind == "image_proj"
    want = emb.features(split="train", kind="image_proj")
    np.testing.assert_allclose(ref.X["train"], want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(auto.X["train"], want)
    assert not np.allclose(np.linalg.norm(want, axis=1), 1.0)  # so the normalisation is not a no-op


def test_pubmedclip_reference_logit_scale_carries_the_reference_factor(tmp_path):
    toy.write_cache(tmp_path, vlm=True, model="pubmedclip")
    emb = fmcache.open_cache(tmp_path).embeddings("synthetic", "pubmedclip")
    assert load_probe_data(emb, logit_scale="model").text["logit_scale"] == 10.0
    assert load_probe_data(emb, logit_scale="reference").text["logit_scale"] == pytest.approx(10.0 * np.exp(0.01 - 0.07))


def test_query_pool_max_on_a_mean_only_blip2_entry_says_how_to_embed(tmp_path):
    toy.write_cache(tmp_path, vlm=True, model="blip2", family="hf_blip2")
    emb = fmcache.open_cache(tmp_path).embeddings("synthetic", "blip2")
    for switch in ({"query_pool": "max"}, {"kind": "reference"}):
        with pytest.raises(HeadInputError, match="caches the mean of the queries; embed it with `--queries reference`"):
            load_probe_data(emb, **switch)


@pytest.fixture(scope="module")
def blip2_entries(tiny_checkpoints, tmp_path_factory):
    """The tiny BLIP-2 on the synthetic dataset under fmcache's and the reference protocol."""
    from fmcache.embed.encode import embed

    root = tmp_path_factory.mktemp("blip2-protocols")
    weights = tiny_checkpoints["blip2"]
    ds = load_dataset("synthetic", options=dataset_options("fairmedfm", "synthetic", ["sex", "age"], SYNTH))
    out = {p: embed(ds, "blip2", root=root, weights=weights, protocol=p, num_workers=0, progress=False, batch_size=8)
           for p in ("fmcache", "fairmedfm")}
    return root, ds, weights, out


def test_reference_blip2_features_are_query_zero_and_every_query_projection(blip2_entries):
    from fmcache.embed.loaders.hf_blip2 import query_outputs
    from fmcache.embed.registry import load_model

    root, ds, weights, out = blip2_entries
    assert out["fmcache"].model == "blip2" and out["fairmedfm"].model == "blip2+pre-reference+queries-reference"
    cache = fmcache.open_cache(root)
    assert set(cache.models(ds.name)) == {"blip2", "blip2+pre-reference+queries-reference"}  # never mixed
    emb = cache.embeddings(ds.name, "blip2+pre-reference+queries-reference")
    assert emb.provenance["variant"] == {"preprocess": "reference", "queries": "reference"}
    enc = load_model("blip2", weights=weights)
    tf = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize(CLIP_MEAN, CLIP_STD)])  # synthetic is not one of the reference's listed datasets
    x = torch.stack([tf(ds.image(i)) for i in range(len(ds.table))])
    with torch.inference_mode():
        q = query_outputs(enc.module, x)
        proj = torch.nn.functional.normalize(enc.module.vision_projection(q), dim=-1)
    np.testing.assert_allclose(emb.features(kind="image"), q[:, 0].numpy(), atol=2e-3, rtol=2e-3)
    per_query = emb.features(kind="image_proj_queries").reshape(len(x), q.shape[1], -1)
    np.testing.assert_allclose(per_query, proj.numpy(), atol=2e-3, rtol=2e-3)
    # the default entry holds the means, as before
    mean = cache.embeddings(ds.name, "blip2").features(kind="image")
    assert not np.allclose(mean, emb.features(kind="image"), atol=1e-2)


def test_query_max_zero_shot_equals_the_blip2_rule_by_hand(blip2_entries):
    from fmcache.probe import SweepConfig, run_sweep

    root, ds, _, _ = blip2_entries
    run = run_sweep(SweepConfig(dataset=ds.name, model="blip2", heads={"zeroshot": {}, "linear": {}}, n_boot=20,
                                epochs=3, protocol="fairmedfm"), root=root)
    assert run.config["model"] == "blip2+pre-reference+queries-reference"
    assert run.config["feature_kind"] == "image" and run.config["protocol"]["switches"]["query_pool"] == "max"
    emb = fmcache.open_cache(root).embeddings(ds.name, run.config["model"])
    queries = emb.features(split="test", kind="image_proj_queries")
    protos = emb.text_prototypes()[:, 0]  # templates=first
    q = queries.reshape(len(queries), -1, protos.shape[1])
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    sims = (q @ (protos / np.linalg.norm(protos, axis=1, keepdims=True)).T).max(axis=1)
    logits = emb.provenance["logit_scale"] or 100.0
    z = logits * sims
    want = np.exp(z[:, 1] - np.logaddexp(z[:, 0], z[:, 1]))
    got = next(p["score"] for k, p in run.predictions.items() if k.startswith("zeroshot"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the mean rule gives other scores: the switch is not a no-op
    mean = run_sweep(SweepConfig(dataset=ds.name, model="blip2", heads={"zeroshot": {}}, n_boot=20,
                                 protocol="fairmedfm", query_pool="mean"), root=root)
    got_mean = next(p["score"] for k, p in mean.predictions.items() if k.startswith("zeroshot"))
    assert not np.allclose(got_mean, got, atol=1e-4)


def test_differences_name_each_switch_away_from_the_reference():
    ref = reference_values("covid_ct_md")
    lines = differences({**resolve("fmcache", "probe"), "cohort": "n/a", "slices": "32"}, ref)
    assert len(lines) == 7 and lines[0].startswith("feature: auto (reference code: reference;")
    assert lines[-1] == "slices: 32 (reference code: 34; the paper's count)"
    assert differences({**resolve("fairmedfm", "probe"), "slices": "34"}, ref) == []


def test_fairmedfm_protocol_end_to_end_on_the_command_line(tiny_checkpoints, run_cli, tmp_path):
    """embed, probe and report under --protocol fairmedfm: the run lists every switch and the report
    shows them, the six-metric rank diagrams and the group-against-group scatter. Two models on two
    datasets (test sets balanced by sex, by age), as ranks need several of each."""
    root = str(tmp_path / "cache")
    opts = [a for k, v in SYNTH.items() for a in ("-o", f"{k}={v}")]
    for model in ("blip2", "clip"):
        for extra in ([], ["-o", "split=balanced-test:age"]):
            code, out, err = run_cli("embed", "-m", model, "-d", "synthetic", *opts, *extra, "--protocol", "fairmedfm",
                                     "--weights", tiny_checkpoints[model], "--root", root, "--num-workers", "0")
            assert code == 0, err
    assert "cached as dataset 'synthetic_split-balanced-test-age', model 'clip+pre-reference'" in out
    for dataset in ("synthetic_split-balanced-test-sex", "synthetic_split-balanced-test-age"):
        code, out, err = run_cli("probe", "-d", dataset, "-m", "blip2,clip", "--protocol", "fairmedfm", "--heads",
                                 "linear,zeroshot,clip_adapt", "--epochs", "3", "--n-boot", "20", "-a", "sex",
                                 "--root", root)
        assert code == 0, err
    runs = sorted(str(p) for p in (tmp_path / "cache" / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4
    config = fmcache.load_results(runs[0]).config
    assert set(config["protocol"]["switches"]) == set(SWITCHES)
    assert config["protocol"]["switches"]["preprocess"] == "reference" and config["convention"] == "fairmedfm"
    assert config["threshold"] == "best_f1_on_test" and config["templates"] == "first"
    assert config["protocol"]["differs"] == []  # the synthetic data has no cohort, intensity or label switch
    code, out, err = run_cli("report", *runs, "--out", str(tmp_path / "r.html"), "--no-representation", "--root", root)
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    protocol = tables_on_page(page)["protocol"].set_index("switch")
    run0 = protocol.iloc[:, 1]
    assert list(protocol.index) == list(SWITCHES) and ((run0 == protocol["reference"]) | (run0 == "n/a")).all()
    assert (run0[["cohort", "intensity", "malignant"]] == "n/a").all()
    assert "sets every switch as the reference code does" in page and "No switch reproduces" in page
    for by in ("model", "method"):
        for metric in ("auc", "ece", "eqodds", "auc-es", "auc-delta", "ece-delta"):
            assert f'id="f-cd-lesion-sex-{by}-{metric}"' in page, (by, metric)
    assert '-group-auc"' in page  # one group's AUC against the other's, per model


def test_the_readme_table_is_the_switch_table():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for s in SWITCHES.values():
        row = "| " + " | ".join([f"`{s.name}`", s.stage, *(f"`{s.value[p]}`: {s.cite[p]}" for p in PROTOCOLS)]) + " |"
        assert row in readme, s.name


def test_reference_volumes_have_the_reference_slice_count_window_option_and_statistics(tmp_path):
    from helpers import fake_encoder
    from helpers import official_layouts as ol

    from fmcache.embed.encode import embed

    root = ol.write_covid_ct_md(tmp_path / "covid")
    # the fixture's six patients are too few to balance a test split by sex: the user's option wins
    opts = dataset_options("fairmedfm", "covid_ct_md", ["sex", "age"], {"split": "patient"})
    ds = load_dataset("covid_ct_md", data=root, options=opts)
    assert ds.name == "covid_ct_md_window-fairmedfm"
    out = embed(ds, fake_encoder.MODEL, root=tmp_path / "cache", encoder=fake_encoder.encoder(), protocol="fairmedfm",
                **fake_encoder.embed_kwargs())
    assert out.model == "tinyconv+pre-reference"
    emb = fmcache.open_cache(tmp_path / "cache").embeddings(ds.name, out.model)
    assert emb.provenance["volume"]["slices"] == 34 and emb.provenance["embed_switches"]["slices"] == "34"
    assert emb.provenance["preprocess"]["mean"] == [0.5056] * 3 and emb.provenance["preprocess"]["size"] == 224
    # an explicit count beats the protocol's
    again = embed(ds, fake_encoder.MODEL, root=tmp_path / "other", encoder=fake_encoder.encoder(), protocol="fairmedfm",
                  slices=5, **fake_encoder.embed_kwargs())
    assert fmcache.open_cache(tmp_path / "other").embeddings(ds.name, again.model).provenance["volume"]["slices"] == 5


def test_each_datasets_first_template_is_the_reference_codes_one():
    """templates=first reproduces the reference's zero-shot only if its one template and class names
    come first (configs/datasets/<name>.json of the reference code)."""
    from fmcache.datasets import get_dataset

    reference = {
        "chexpert": ("a chest X-ray of a {}", ("diseased", "normal")),
        "mimic_cxr": ("a chest X-ray of a {}", ("diseased", "normal")),
        "ham10000": ("a photo of a {}", ("benign lesion", "malignant lesion")),
        "fairvlmed10k": ("a scanning laser ophthalmoscope fundus image of a {}", ("normal", "glaucoma")),
        "gf3300": ("a photo of a {}", ("normal", "glaucoma")),
        "papila": ("a fundus image of a {}", ("normal", "glaucoma")),
        "brset": ("a fundus image of a {}", ("normal", "retinopathy")),
        "covid_ct_md": ("a computed tomography of a {}", ("normal", "pneumonia")),
        "adni": ("a brain MRI of {}", ("normal", "Alzheimer's disease")),
    }
    for key, (template, classes) in reference.items():
        prompts = get_dataset(key).prompts["default"]
        assert (prompts.templates[0], prompts.classes) == (template, classes), key
