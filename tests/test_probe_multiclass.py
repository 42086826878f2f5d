"""`fmcache probe` on a multi-class label: softmax heads, macro one-vs-rest AUC, argmax accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import toy
from sklearn.metrics import roc_auc_score

from fmcache.cache.store import open_root
from fmcache.cache.writer import open_entry, write_samples
from fmcache.datasets import load_dataset
from fmcache.errors import HeadInputError
from fmcache.probe import load_sweep, run_sweep

CLASSES = ["benign", "atypical", "malignant"]


def write_multiclass_cache(root, *, n=360, drop_class_in_test=False) -> None:
    """The synthetic samples with a 3-class label ``grade`` that the features carry, more
    weakly for sex 1; two sensitive attributes (sex, age)."""
    ds = load_dataset("synthetic", options={"size": str(n), "image_size": "32"})
    t = ds.table.copy()
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n).astype(np.int8)
    y[rng.random(n) < 0.03] = -1  # a few unknown labels
    if drop_class_in_test:
        y[(t["split"].to_numpy() == 2) & (y == 2)] = 1
    t = t.drop(columns=[c for c in t.columns if c.startswith("label/")]).assign(**{"label/grade": y})
    strength = np.where(t["sa/sex"].to_numpy() == 1, 0.6, 1.8)
    X = rng.normal(size=(n, toy.D)).astype(np.float32)
    known = y >= 0
    X[known, y[known]] += strength[known]
    attrs = {**ds.group_attrs(), "task": "multiclass", "label_names": ["grade"], "classes": CLASSES}
    group = write_samples(open_root(str(root), mode="a"), ds.name, t, attrs)
    w = open_entry(group, "toy", {"model": "toy", "weights_id": "toy", "weights_sha256": None, "preprocess": {},
                                  "dims": {"image": toy.D}, "row_fingerprint": ds.fingerprint}, chunk_rows=64)
    for c in w.pending_chunks():
        a, b = w.rows(c)
        w.write_chunk(c, {"image": X[a:b]})
    w.finish()


@pytest.fixture(scope="module")
def mc(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    write_multiclass_cache(root)
    grids, _ = load_sweep("all", ["linear", "groupdro", "fairpenalty"])
    run = run_sweep(toy.config(heads=grids, seeds=2, n_boot=30, epochs=30), root=root)
    return run, root


def test_multiclass_sweep_trains_softmax_heads_and_reports_per_group_auc(mc):
    run, _ = mc
    m = run.metrics
    assert run.config["classes"] == CLASSES
    assert set(m["head"]) == {"linear", "groupdro"} and set(m["label"]) == {"grade"}
    assert set(m["attribute"]) == {"sex", "age"}
    auc = m[m.metric == "auc"]
    assert {"overall", *run.config["group_names"]["sex"]} <= set(auc["group"])
    overall = auc.query("group == 'overall'").set_index(["head", "attribute"])["value"]
    assert (overall > 0.55).all() and (overall["linear"] > 0.7).all()  # the planted signal is learnable
    assert {"auc_delta", "auc_min", "acc_delta"} <= set(m.query("group == 'gap'")["metric"])
    assert m.query("metric == 'threshold'")["value"].isna().all()
    assert (run.sweep["val_auc"].dropna() > 0.5).all()


def test_macro_auc_per_group_matches_scikit_learn_on_saved_predictions(mc):
    run, _ = mc
    for head in ("linear", "groupdro"):
        p = run.prediction(head, "grade", "sex")
        assert p["score"].shape == (len(p["seed"]), len(p["y"]), 3)
        sm = run.seed_metrics.query(f"head == '{head}' and attribute == 'sex' and metric in ['auc', 'acc']")
        names = run.config["group_names"]["sex"]
        for i, seed in enumerate(p["seed"]):
            s = p["score"][i].astype(np.float64)
            s = s / s.sum(axis=1, keepdims=True)  # float32 softmax rows: scikit-learn checks they sum to 1
            rows = sm[sm["seed"] == seed].set_index(["metric", "group"])["value"]
            for code, name in enumerate(names):
                keep = (p["group"] == code) & (p["y"] >= 0)
                ref = roc_auc_score(p["y"][keep], s[keep], multi_class="ovr", average="macro")
                assert rows[("auc", name)] == pytest.approx(ref, abs=1e-6)
                assert rows[("acc", name)] == pytest.approx(np.mean(s[keep].argmax(1) == p["y"][keep]))


def test_binary_only_heads_are_skipped_with_a_reason(mc):
    run, _ = mc
    assert "fairpenalty" in run.config["skipped"]
    assert "binary labels only" in run.config["skipped"]["fairpenalty"]
    assert "fairpenalty" not in set(run.metrics["head"])


def test_results_and_report_commands_read_a_multiclass_run(mc, run_cli, tmp_path):
    run, root = mc
    code, out, err = run_cli("results", run.path.name, "--root", str(root))
    assert code == 0, err
    assert "grade" in out
    html = tmp_path / "r.html"
    code, out, err = run_cli("report", run.path.name, "--root", str(root), "-o", str(html))
    assert code == 0, err
    assert html.exists() and "multi-class" in html.read_text()


def test_probe_command_on_a_multiclass_entry(tmp_path, run_cli):
    write_multiclass_cache(tmp_path / "c")
    code, out, err = run_cli("probe", "-d", "synthetic", "-m", "toy", "--heads", "linear", "--n-boot", "10",
                             "--epochs", "3", "--root", str(tmp_path / "c"))
    assert code == 0, err
    assert "linear" in out and "auc_delta" in out


def test_a_class_missing_from_a_split_is_refused(tmp_path):
    write_multiclass_cache(tmp_path / "c", drop_class_in_test=True)
    with pytest.raises(HeadInputError, match="malignant"):
        run_sweep(toy.config(heads=load_sweep("default", ["linear"])[0]), root=tmp_path / "c")
