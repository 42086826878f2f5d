"""Init seeds are repeats of a configuration: selection on their mean, results as mean ± sd
with each seed's rows kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import toy
from sklearn.metrics import roc_auc_score

from fmcache.probe import run_sweep
from fmcache.probe.selection import select_point

GRID = {"linear": {"lr": [1e-3, 3e-3], "weight_decay": [0.0]}}
KEYS = ["head", "label", "attribute", "metric", "group"]


def _config(**over):
    return toy.config(**{"heads": GRID, "seeds": 3, "epochs": 3, "n_boot": 20, **over})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    toy.write_cache(root)
    return root


@pytest.fixture(scope="module")
def seeded(root):
    return run_sweep(_config(), root=root)


def _validation(criteria: dict[float, list[float]]) -> pd.DataFrame:
    rows = [{"lr": lr, "seed": s, "label": 0, "attribute": 0, "val_auc": c, "criterion": c}
            for lr, values in criteria.items() for s, c in enumerate(values)]
    return pd.DataFrame(rows)


def test_the_best_mean_over_seeds_is_selected_not_the_luckiest_seed():
    # A holds the best single seed, B the best mean
    table = _validation({0.1: [0.95, 0.50, 0.50], 0.2: [0.80, 0.80, 0.80], 0.3: [0.70, 0.70, 0.70]})
    means, chosen = select_point(table["criterion"], table[["lr", "label", "attribute"]])
    assert list(table.loc[chosen, "lr"]) == [0.2, 0.2, 0.2] and list(table.loc[chosen, "seed"]) == [0, 1, 2]
    np.testing.assert_allclose(means[table["lr"] == 0.1], 0.65)


def test_a_point_is_judged_on_the_seeds_that_have_a_value():
    table = _validation({0.1: [np.nan, np.nan], 0.2: [0.6, np.nan], 0.3: [0.6, 0.6]})
    means, chosen = select_point(table["criterion"], table[["lr", "label", "attribute"]])
    assert means.iloc[:2].isna().all() and np.allclose(means.iloc[2:], 0.6)
    assert list(table.loc[chosen, "lr"]) == [0.2, 0.2]  # ties go to the point listed first
    empty = _validation({0.1: [np.nan, np.nan]})
    _, none = select_point(empty["criterion"], empty[["lr"]])
    assert not none.any()


def test_every_seed_of_the_selected_point_is_evaluated(root, monkeypatch):
    from fmcache.probe import sweep

    def fabricated(table, criterion):
        lucky = (table["lr"] == 1e-3) & (table["seed"] == 0)
        return pd.Series(np.where(table["lr"] == 3e-3, 0.8, np.where(lucky, 0.99, 0.1)), index=table.index)

    monkeypatch.setattr(sweep, "criterion_value", fabricated)
    r = run_sweep(_config(attributes=["sex"]), root=root)
    chosen = r.sweep[r.sweep["selected"]]
    assert sorted(chosen["seed"]) == [0, 1, 2] and set(chosen["lr"]) == {3e-3}
    assert len(r.sweep) == 6 and np.allclose(r.sweep.query("lr == 1e-3")["grid_criterion"], (0.99 + 0.1 + 0.1) / 3)
    assert sorted(r.seed_metrics["seed"].unique()) == [0, 1, 2]
    assert {json.loads(h)["lr"] for h in r.seed_metrics["hparams"]} == {3e-3}
    assert "seed" not in json.loads(r.metrics["hparams"].iloc[0]) and np.allclose(r.metrics["val_criterion"], 0.8)
    p = r.prediction("linear", "lesion", "sex")
    assert p["score"].shape == (3, len(p["y"])) and list(p["seed"]) == [0, 1, 2]


def test_results_are_the_mean_and_sd_of_the_seeds_rows(seeded):
    m, per = seeded.metrics, seeded.seed_metrics
    assert not m.duplicated(KEYS).any() and not per.duplicated(KEYS + ["seed"]).any()
    assert len(per) == 3 * len(m)
    agg = per.groupby(KEYS, sort=False)
    merged = m.set_index(KEYS)
    for key, rows in agg:
        got = merged.loc[key]
        values = rows["value"].to_numpy()
        if np.isnan(values).any():
            continue
        np.testing.assert_allclose(got["value"], np.mean(values))
        np.testing.assert_allclose(got["sd"], np.std(values, ddof=1))
        np.testing.assert_allclose(got["ci_low"], rows["ci_low"].mean())
        assert got["n_seeds"] == 3
    auc = per.query("metric == 'auc' and group == 'overall' and attribute == 'sex'")
    mean = m.query("metric == 'auc' and group == 'overall' and attribute == 'sex'")["value"].iloc[0]
    assert auc["value"].nunique() == 3 and mean < auc["value"].max()
    # each seed's row is that seed's own evaluation
    p = seeded.prediction("linear", "lesion", "sex")
    known = p["y"] >= 0
    for i, s in enumerate(p["seed"]):
        mine = auc.set_index("seed")["value"][s]
        assert roc_auc_score(p["y"][known], p["score"][i][known]) == pytest.approx(mine, abs=1e-6)


def test_a_single_seed_run_keeps_one_row_per_metric(toy_run):
    r = toy_run.run
    m, per = r.metrics, r.seed_metrics
    assert not m.duplicated(KEYS).any() and m["sd"].isna().all()
    assert set(m["n_seeds"]) <= {0, 1}
    same = ["label", "attribute", "metric", "group", "value", "ci_low", "ci_high", "n", "head", "val_criterion"]
    pd.testing.assert_frame_equal(m[same], per[same])
    assert (per["seed"] == 0).all()
    assert r.prediction("linear", "lesion", "sex")["score"].ndim == 1
    for _, block in r.sweep.groupby(["head", "attribute"]):
        assert block["selected"].sum() == 1 and (block["grid_criterion"] == block["criterion"]).all()


def test_results_and_report_show_mean_and_sd(seeded, root, run_cli, tmp_path):
    code, out, err = run_cli("results", seeded.path.name, "--root", str(root))
    assert code == 0, err
    assert "±" in out and "3 seeds" in out
    csv = tmp_path / "seeds.csv"
    code, out, err = run_cli("results", seeded.path.name, "--root", str(root), "--per-seed", "--csv", str(csv))
    assert code == 0, err
    assert "per seed" in out and sorted(pd.read_csv(csv)["seed"].unique()) == [0, 1, 2]
    code, out, _ = run_cli("probe", "--help")
    assert code == 0 and "repeats" in out

    from fmcache.report import build_report

    html = build_report([seeded.path], tmp_path / "study.html", representation=False).read_text()
    assert '<span class="sd">±' in html and "means over the seeds" in html
