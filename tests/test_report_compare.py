"""Frozen features against fine-tuning: the tidy comparison read back from the runs' metric
tables, its order and families, the newest run winning, fine-tuned cache entries, the report's
section and `fmcache compare`."""

from __future__ import annotations

import base64
import io
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fmcache.fairness import evaluate, evaluate_dice
from fmcache.report import build_report
from fmcache.report.compare import COLUMNS, comparison
from fmcache.runs import new_run_dir, write_run

NAMES = {"sex": ["male", "female"]}


def _classification(rng, heads, dataset, model, n=240):
    y = rng.integers(0, 2, n).astype(np.int8)
    blocks = []
    for h, head in enumerate(heads):
        g = rng.integers(0, 2, n).astype(np.int8)
        score = 1 / (1 + np.exp(-(rng.normal(size=n) + (1.0 + 0.3 * h + 0.6 * g) * (2 * y - 1))))
        blocks.append(evaluate(y, score, {"sex": g}, threshold=0.5, n_boot=20, seed=0, group_names=NAMES)
                      .assign(label="lesion", head=head))
    return pd.concat(blocks, ignore_index=True).assign(dataset=dataset, model=model)


def _segmentation(rng, heads, *, prompt, n=120):
    blocks = []
    for head in heads:
        g = rng.integers(0, 2, n).astype(np.int8)
        dice = np.clip(rng.normal(0.8 - 0.1 * g, 0.05), 0, 1)
        table = evaluate_dice(dice, {"sex": g}, n_boot=20, seed=0, group_names=NAMES).assign(label="mask", head=head)
        blocks.append(table.assign(prompt=head) if prompt else table)
    return pd.concat(blocks, ignore_index=True).assign(dataset="polyp", model="sam_vit_b")


def _write(root, name, config, metrics, second):
    path = new_run_dir(name, root)
    cfg = {"created": f"2026-01-01T00:00:{second:02d}", "attributes": ["sex"], "convention": "paper", **config}
    write_run(path, config=cfg, metrics=metrics, sweep=pd.DataFrame({"head": metrics["head"].unique()}),
              predictions={})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    cls = {"dataset": "alpha", "labels": ["lesion"]}
    probe = _write(root, "alpha-clip", {**cls, "model": "clip", "heads": ["linear", "groupdro"]},
                   _classification(rng, ["linear", "groupdro"], "alpha", "clip"), 1)
    ft = {**cls, "task": "finetune", "model": "clip"}
    older = _write(root, "alpha-clip-lora", {**ft, "method": "lora", "heads": ["lora", "lora+groupdro"],
                                              "finetune": {"method": "lora", "rank": 8}},
                   _classification(rng, ["lora", "lora+groupdro"], "alpha", "clip"), 2)
    newer = _write(root, "alpha-clip-lora", {**ft, "method": "lora", "heads": ["lora"],
                                              "finetune": {"method": "lora", "rank": 8}},
                   _classification(rng, ["lora"], "alpha", "clip"), 3)
    entry = f"clip+{newer.name}"
    embedded = _write(root, "alpha-clip-ft", {**cls, "model": entry, "heads": ["linear"]},
                      _classification(rng, ["linear"], "alpha", entry), 4)
    seg = {"dataset": "polyp", "model": "sam_vit_b", "task": "segmentation"}
    sam = _write(root, "polyp-sam", seg, _segmentation(rng, ["box"], prompt=True), 5)
    samed = _write(root, "polyp-samed", {**seg, "finetune": {"method": "samed+febs", "rank": 4}},
                   _segmentation(rng, ["samed+febs"], prompt=False), 6)
    paths = [probe, older, newer, embedded, sam, samed]
    return SimpleNamespace(root=root, probe=probe, older=older, newer=newer, embedded=embedded, sam=sam, samed=samed,
                           paths=paths, frame=comparison(paths))


def _source(path, head, metric, group):
    m = pd.read_parquet(path / "metrics.parquet")
    hit = m[(m["head"] == head) & (m["metric"] == metric) & (m["group"] == group)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_rows_are_ordered_frozen_then_fine_tuned(runs):
    f = runs.frame
    assert list(f.columns) == COLUMNS
    cls = f[f["dataset"] == "alpha"]
    assert set(cls["model"]) == {"clip"} and set(cls["task"]) == {"classification"}
    assert list(cls["method"]) == ["LP", "LP + groupdro", "LoRA", "LoRA + groupdro", f"LP on clip+{runs.newer.name}"]
    assert list(cls["family"]) == ["frozen"] * 2 + ["fine-tuned"] * 3
    seg = f[f["dataset"] == "polyp"]
    assert list(seg["method"]) == ["SAM (box)", "SAMed + febs"] and list(seg["family"]) == ["frozen", "fine-tuned"]
    assert set(seg["label"]) == {"mask"} and set(seg["task"]) == {"segmentation"}


def test_the_newest_run_wins_and_fine_tuned_entries_map_to_their_base(runs):
    by = runs.frame.set_index("method")["run"]
    assert by["LoRA"] == runs.newer.name  # both fine-tuning runs hold lora
    assert by["LoRA + groupdro"] == runs.older.name  # only the older one holds it
    assert by[f"LP on clip+{runs.newer.name}"] == runs.embedded.name and by["LP"] == runs.probe.name


@pytest.mark.parametrize("method, run, head", [("LP", "probe", "linear"), ("LP + groupdro", "probe", "groupdro"),
                                               ("LoRA", "newer", "lora"), ("LoRA + groupdro", "older", "lora+groupdro"),
                                               ("SAM (box)", "sam", "box"), ("SAMed + febs", "samed", "samed+febs")])
def test_values_are_the_runs_own_metrics(runs, method, run, head):
    row = runs.frame.set_index("method").loc[method]
    path = getattr(runs, run)
    seg = row["task"] == "segmentation"
    utility, gap, tradeoff = ("dsc", "dsc_delta", "dsc_es") if seg else ("auc", "auc_delta", "auc_es")
    u, g = _source(path, head, utility, "overall"), _source(path, head, gap, "gap")
    assert (row["utility"], row["utility_low"], row["utility_high"]) == (u["value"], u["ci_low"], u["ci_high"])
    assert (row["gap"], row["gap_low"], row["gap_high"]) == (g["value"], g["ci_low"], g["ci_high"])
    assert np.isfinite([row["utility_low"], row["gap_high"]]).all()  # intervals carried, not dropped
    assert row["tradeoff"] == _source(path, head, tradeoff, "gap")["value"]
    if seg:
        groups = [_source(path, head, "dsc", name)["value"] for name in NAMES["sex"]]
        assert row["worst"] == min(groups)
    else:
        assert row["worst"] == _source(path, head, "auc_min", "gap")["value"]


def _csv_tables(page):
    return {tid: pd.read_csv(io.StringIO(base64.b64decode(data).decode()))
            for tid, data in re.findall(r'<a download="([^"]+)\.csv" href="data:text/csv;charset=utf-8;base64,([^"]+)"',
                                        page)}


def test_the_report_has_the_section_only_with_a_fine_tuned_run(runs, tmp_path):
    page = build_report([runs.probe, runs.sam], tmp_path / "frozen.html", representation=False).read_text()
    assert '<section id="compare"' not in page
    page = build_report(runs.paths, tmp_path / "all.html", representation=False).read_text()
    assert '<section id="compare"' in page and "Frozen features vs fine-tuning" in page
    shown = _csv_tables(page)
    cls = shown["t-compare-alpha-clip-lesion-sex"]
    expected = runs.frame[runs.frame["dataset"] == "alpha"].reset_index(drop=True)
    assert list(cls["method"]) == list(expected["method"])
    assert np.allclose(cls["utility"], expected["utility"]) and np.allclose(cls["gap_low"], expected["gap_low"])
    assert list(shown["t-compare-polyp-sam-vit-b-mask-sex"]["method"]) == ["SAM (box)", "SAMed + febs"]


def test_the_command_prints_a_table_per_slice(runs, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "160")
    out_csv = tmp_path / "cmp.csv"
    code, out, err = run_cli("compare", *[p.name for p in runs.paths], "--root", str(runs.root), "--csv", str(out_csv))
    assert code == 0, err
    assert "alpha · clip, label lesion, by sex" in out and "polyp · sam_vit_b, label mask, by sex" in out
    lp = runs.frame.set_index("method").loc["LP"]
    assert f"{lp['utility']:.3f} [{lp['utility_low']:.3f}, {lp['utility_high']:.3f}]" in out
    assert "LoRA + groupdro" in out and f"LP on clip+{runs.newer.name}" in out and "SAMed + febs" in out
    assert list(pd.read_csv(out_csv)["method"]) == list(runs.frame["method"])
    # on 80 columns a long method wraps at its spaces: the fine-tuned entry's run id stays whole
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli("compare", runs.probe.name, runs.embedded.name, "--root", str(runs.root))
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80 and f"clip+{runs.newer.name}" in out


def test_the_command_answers_a_missing_run_in_one_line(runs, run_cli):
    code, _, err = run_cli("compare", runs.probe.name, "no-such-run", "--root", str(runs.root))
    assert code == 1 and err.strip().count("\n") == 0 and "no-such-run" in err
    code, out, _ = run_cli("compare", "--help")
    assert code == 0 and "bootstrap" in out and "fine-tuning" in out
