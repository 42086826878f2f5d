"""`fmcache probe` end to end on a cache written directly: sweep, selection, results, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import toy
from sklearn.metrics import roc_auc_score

from fmcache.cache.store import open_root
from fmcache.errors import FmcacheError, HeadInputError
from fmcache.fairness import evaluate
from fmcache.runs import prediction_key
from fmcache.probe import load_sweep, run_sweep


@pytest.fixture
def run(toy_run):
    return toy_run.run, toy_run.root


def test_sweep_selects_on_validation_and_reports_every_head_and_attribute(run):
    r, _ = run
    m = r.metrics
    assert set(m["head"]) == {"linear", "groupdro"}
    assert set(m["attribute"]) == {"sex", "age"} and set(m["label"]) == {"lesion"}
    # linear: 3 lr x 2 wd; groupdro: 2 lr x 2 step sizes, per attribute
    assert r.config["heads_trained"] == {"linear": 6, "groupdro": 8}
    for (head, attr), block in r.sweep.groupby(["head", "attribute"]):
        chosen = block[block["selected"]]
        assert len(chosen) == 1
        assert chosen["criterion"].iloc[0] == block["criterion"].max()
        if head == "groupdro":
            assert set(block["attribute"]) == {attr}
    auc = m[(m.metric == "auc") & (m.group == "overall")].set_index(["head", "attribute"])["value"]
    assert (auc > 0.55).all() and (auc["linear"] > 0.7).all()  # the planted signal is learnable


def test_saved_predictions_reproduce_the_metric_table(run):
    r, _ = run
    p = r.predictions["linear.lesion.sex"]
    again = evaluate(p["y"], p["score"], {"sex": p["group"]}, threshold=float(
        r.metrics.query("head == 'linear' and attribute == 'sex' and metric == 'threshold'")["value"].iloc[0]))
    mine = r.metrics.query("head == 'linear' and attribute == 'sex' and metric in ['auc', 'dp', 'eqodds'] and group in ['overall', 'gap']")
    ref = again[again["metric"].isin(["auc", "dp", "eqodds"])]
    merged = mine.merge(ref, on=["metric", "group"], suffixes=("", "_again"))
    assert len(merged) == len(mine) > 0
    np.testing.assert_allclose(merged["value"], merged["value_again"], rtol=1e-6)
    assert len(p["id"]) == len(p["score"]) == (r.metrics.query("metric == 'auc' and group == 'overall'")["n"].iloc[0])


def test_results_command_lists_shows_and_exports(run, run_cli, tmp_path):
    r, root = run
    code, out, _ = run_cli("results", "--root", str(root))
    assert code == 0 and r.path.name in out
    csv = tmp_path / "m.csv"
    code, out, _ = run_cli("results", r.path.name, "--root", str(root), "--csv", str(csv))
    assert code == 0 and "groupdro" in out
    pd.testing.assert_frame_equal(pd.read_csv(csv, keep_default_na=False, na_values=[""]).astype({"value": float})[["metric", "value"]],
                                  r.metrics[["metric", "value"]].reset_index(drop=True), check_dtype=False)


def test_probe_command_runs_and_prints_the_headline(run, run_cli, tmp_path):
    root = shutil.copytree(run[1], tmp_path / "cache")  # the shared cache stays as the other tests read it
    code, out, err = run_cli("probe", "-d", "synthetic", "-m", "toy", "--heads", "linear", "--n-boot", "20",
                             "--epochs", "3", "--root", str(root))
    assert code == 0, err
    assert "linear" in out and "auc_delta" in out and "run:" in out


def test_bad_input_is_refused_clearly(tmp_path, run_cli):
    toy.write_cache(tmp_path / "partial", finish=False)
    with pytest.raises(FmcacheError, match="incomplete"):
        run_sweep(toy.config(), root=tmp_path / "partial")
    toy.write_cache(tmp_path / "nan", poison=True)
    with pytest.raises(HeadInputError, match="NaN or inf"):
        run_sweep(toy.config(), root=tmp_path / "nan")
    root = tmp_path / "ok"
    toy.write_cache(root, n=60)
    with pytest.raises(FmcacheError, match="no sensitive attribute 'race'"):
        run_sweep(toy.config(attributes=["race"]), root=root)
    for args, expect in [
        (["-m", "nope"], "no cached embeddings for model 'nope'"),
        (["-m", "toy", "--labels", "effusion"], "no label 'effusion'"),
        (["-m", "toy", "--heads", "grupdro"], "did you mean 'groupdro'"),
        (["-m", "toy", "--sweep", "missing.yaml"], "no such file"),
    ]:
        code, _, err = run_cli("probe", "-d", "synthetic", "--root", str(root), *args)
        assert code == 1 and expect in err and len(err.strip().splitlines()) == 1, err


def test_a_split_with_one_class_is_refused(tmp_path):
    toy.write_cache(tmp_path, n=300)
    group = open_root(str(tmp_path), mode="a")["synthetic/samples"]
    labels = group["label"][...]
    split = group["split"][...]
    labels[split == 1] = 0
    group["label"][...] = labels
    with pytest.raises(HeadInputError, match="only class \\[0\\] in the val split"):
        run_sweep(toy.config(), root=tmp_path)


def test_a_sweep_file_sets_grids_and_epochs(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("heads:\n  linear: {C: [0.1, 1.0]}\n  fairpenalty: {penalty: [1.0]}\nepochs: 5\n")
    grids, settings = load_sweep(str(f), None)
    assert grids == {"linear": {"C": [0.1, 1.0]}, "fairpenalty": {"penalty": [1.0]}} and settings == {"epochs": 5}
    f.write_text("heads: [linear]\n")
    with pytest.raises(FmcacheError, match="heads:"):
        load_sweep(str(f), None)


def test_comparison_with_erm_reads_its_numbers_from_the_table(run):
    from fmcache.runs import compare_to_baseline
    from fmcache.views import mitigation_sentences

    r, _ = run
    c = compare_to_baseline(r.metrics, "sex", target_gaps=r.target_gaps)
    row = c.set_index("head").loc["groupdro"]
    assert row["gap"] == "auc_delta"
    gap = r.metrics.query("attribute == 'sex' and group == 'gap' and metric == 'auc_delta'").set_index("head")["value"]
    assert row["value"] == gap["groupdro"] and row["baseline"] == gap["linear"]
    line = mitigation_sentences(c, "sex")[0]
    assert f"{gap['linear']:.3f} with linear" in line and f"{gap['groupdro']:.3f}" in line


def test_zero_shot_and_clip_adapt_run_from_text_prototypes(tmp_path):
    toy.write_cache(tmp_path, vlm=True)
    grids, _ = load_sweep("default", ["zeroshot", "clip_adapt", "linear"])
    r = run_sweep(toy.config(heads=grids), root=tmp_path)
    assert r.config["feature_kind"] == "image_proj" and r.config["skipped"] == {}
    auc = r.metrics.query("metric == 'auc' and group == 'overall' and attribute == 'sex'").set_index("head")["value"]
    assert auc["zeroshot"] > 0.9 and auc["clip_adapt"] > 0.9
    assert r.config["heads_trained"]["zeroshot"] == 1
    # the text heads score the projected features whatever the other heads train on
    r2 = run_sweep(toy.config(heads=grids, kind="image"), root=tmp_path)
    assert r2.config["feature_kind"] == "image" and r2.config["skipped"] == {}
    key = prediction_key("zeroshot", "lesion", "sex")
    np.testing.assert_array_equal(r2.predictions[key]["score"], r.predictions[key]["score"])
    assert not np.allclose(r2.predictions[prediction_key("linear", "lesion", "sex")]["score"],
                           r.predictions[prediction_key("linear", "lesion", "sex")]["score"])


def _squared_hinge(name: str):
    """A head type written outside the package: a linear scorer with a squared-hinge loss."""
    import jax.numpy as jnp

    from fmcache.heads import HeadType
    from fmcache.heads.types import dense, dense_init, masked_mean, squeeze_binary

    def predict(p, x, g=None):
        return squeeze_binary(dense(p, x))

    def loss(p, state, batch, hp):
        margin = (2.0 * batch.y - 1.0) * predict(p, batch.x)
        return hp["margin_weight"] * masked_mean(jnp.maximum(0.0, 1.0 - margin) ** 2, batch.m), state

    return HeadType(
        name=name, init=lambda key, spec, hp: dense_init(key, spec.d, spec.n_out), loss=loss, predict=predict,
        hparams={"margin_weight": 1.0}, multiclass=False, description="squared hinge",
        default_grid={"lr": (1e-3,), "weight_decay": (0.0,)},
        search_grid={"lr": (1e-3, 4e-3), "weight_decay": (0.0,), "margin_weight": (0.5, 1.0)},
        target_gap="eqodds",
    )


@pytest.fixture
def registered_hinge():
    from fmcache.heads import HEADS, register_head

    head = register_head(_squared_hinge("sq_hinge"))
    yield head
    HEADS.pop(head.name)


def test_an_outside_head_type_is_swept_once_registered(registered_hinge, tmp_path):
    from fmcache.runs import compare_to_baseline

    toy.write_cache(tmp_path)
    grids, _ = load_sweep("all", ["linear", "sq_hinge"])
    assert grids["sq_hinge"] == {"lr": [1e-3, 4e-3], "weight_decay": [0.0], "margin_weight": [0.5, 1.0]}
    r = run_sweep(toy.config(heads=grids), root=tmp_path)
    assert r.config["heads_trained"]["sq_hinge"] == 4 and r.config["target_gaps"]["sq_hinge"] == "eqodds"
    auc = r.metrics.query("metric == 'auc' and group == 'overall' and attribute == 'sex'").set_index("head")["value"]
    assert auc["sq_hinge"] > 0.75
    chosen = r.sweep.query("head == 'sq_hinge' and attribute == 'sex' and selected")
    assert len(chosen) == 1 and chosen["margin_weight"].iloc[0] in (0.5, 1.0)
    # the run says which gap the head targets, and the comparison with ERM reads that one
    row = compare_to_baseline(r.metrics, "sex", target_gaps=r.target_gaps).set_index("head").loc["sq_hinge"]
    assert row["gap"] == "eqodds"


def test_an_unknown_head_type_is_refused_until_registered(tmp_path):
    with pytest.raises(FmcacheError, match="unknown head type 'sq_hinge'"):
        load_sweep("default", ["sq_hinge"])


def test_a_fit_of_an_unregistered_head_type_predicts():
    from fmcache.heads import HEADS, fit_stack, predict_stack

    head = _squared_hinge("unregistered_hinge")
    assert head.name not in HEADS
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int8)
    fit = fit_stack(head, X, y, hparams={"lr": [1e-2, 3e-2]}, epochs=20, batch_size=50)
    scores = fit.predict(X)
    assert scores.shape == (2, 200)
    np.testing.assert_array_equal(scores, predict_stack(head, fit.params, X))
    assert min(roc_auc_score(y, s) for s in scores) > 0.9


def test_a_run_records_the_domain_inference_rule_and_scores_with_it(tmp_path):
    toy.write_cache(tmp_path)
    grids, _ = load_sweep("default", ["domain_ind"])
    runs = {rule: run_sweep(toy.config(heads=grids, epochs=5, domain_inference=rule), root=tmp_path) for rule in ("sum", "known")}
    assert runs["sum"].config["domain_inference"] == "sum" and runs["known"].config["domain_inference"] == "known"
    # the default needs no group at test time
    assert run_sweep(toy.config(heads=grids, epochs=5), root=tmp_path).config["domain_inference"] == "sum"
    # selection and test scores follow the rule (same training, different scoring)
    sweeps = {rule: r.sweep.set_index(["attribute", "lr"])["criterion"] for rule, r in runs.items()}
    assert not np.allclose(sweeps["sum"], sweeps["known"])
    with pytest.raises(FmcacheError, match="domain inference"):
        run_sweep(toy.config(heads=grids, domain_inference="oracle"), root=tmp_path)
