"""The template rule of the text heads: a class's prototype is the mean of its templates, or,
as in FairMedFM's code, its first template only."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import toy

from fmcache.cache.reader import open_cache
from fmcache.errors import FmcacheError
from fmcache.probe import load_sweep, run_sweep
from fmcache.probe.data import load_probe_data


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def vlm_root(tmp_path_factory):
    """A VLM entry whose two templates point different ways, so the two rules disagree."""
    root = tmp_path_factory.mktemp("templates")
    protos = np.zeros((2, 2, 8), np.float32)
    protos[1, 0, 0] = protos[0, 0, 1] = 1.0
    protos[:, 1] = _unit(np.random.default_rng(1).normal(size=(2, 8)))
    toy.write_cache(root, vlm=True, protos=protos)
    return root


@pytest.fixture(scope="module")
def runs(vlm_root):
    grids, _ = load_sweep("default", ["zeroshot"])
    return {rule: run_sweep(toy.config(heads=grids, n_boot=10, templates=rule), root=vlm_root) for rule in ("mean", "first")}


def _by_hand(root, template):
    """Zero-shot probability of class 1 from one template's prototypes, in numpy."""
    emb = open_cache(root).embeddings("synthetic", "toy")
    data = load_probe_data(emb, kind="image_proj")
    protos = emb.text_prototypes()
    assert not np.allclose(protos[:, 0], protos[:, 1])
    x = _unit(data.X["test"].astype(np.float64))
    logits = float(emb.provenance["logit_scale"]) * x @ _unit(protos[:, template].astype(np.float64)).T
    return 1.0 / (1.0 + np.exp(-(logits[:, 1] - logits[:, 0])))


def test_first_scores_with_the_first_template_only(runs, vlm_root):
    score = runs["first"].predictions["zeroshot.lesion.sex"]["score"]
    np.testing.assert_allclose(score, _by_hand(vlm_root, 0), rtol=1e-4, atol=1e-5)
    # the first template alone still finds the planted signal
    auc = runs["first"].metrics.query("metric == 'auc' and group == 'overall'")["value"]
    assert (auc > 0.9).all()


def test_mean_differs_from_first_when_the_templates_differ(runs, vlm_root):
    first = runs["first"].predictions["zeroshot.lesion.sex"]["score"]
    mean = runs["mean"].predictions["zeroshot.lesion.sex"]["score"]
    assert np.abs(mean - first).max() > 1e-2
    assert not np.allclose(mean, _by_hand(vlm_root, 0), atol=1e-3)


def test_the_run_records_the_rule(runs, vlm_root):
    assert runs["first"].config["templates"] == "first" and runs["mean"].config["templates"] == "mean"
    grids, _ = load_sweep("default", ["zeroshot"])
    assert run_sweep(toy.config(heads=grids, n_boot=10), root=vlm_root).config["templates"] == "mean"


def test_an_unknown_rule_is_refused(vlm_root, run_cli):
    grids, _ = load_sweep("default", ["zeroshot"])
    with pytest.raises(FmcacheError, match="templates 'bogus': choose one of mean, first"):
        run_sweep(toy.config(heads=grids, templates="bogus"), root=vlm_root)
    code, _, err = run_cli("probe", "-d", "synthetic", "-m", "toy", "--heads", "zeroshot", "--templates", "bogus",
                           "--root", str(vlm_root))
    assert code in (1, 2) and "templates 'bogus'" in err and len(err.strip().splitlines()) == 1, err


def test_the_report_shows_the_rule(runs):
    from fmcache.report.tables import runs_table

    table = runs_table([(runs["first"], "probe")])
    assert table.frame["templates"].tolist() == ["first"]
