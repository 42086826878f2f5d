"""`fmcache report`: sections, self-containment, the summary regenerated from the tables,
ranks across datasets, segmentation and fine-tuning sections, the command."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import fmcache
from fmcache.fairness import evaluate
from fmcache.report import build_report, narrative
from fmcache.runs import new_run_dir, write_run


def fake_run(root, dataset, model, *, heads=("linear", "resample", "groupdro"), attributes=("sex", "age"),
             seed=0, n=300, config=None, predictions=True):
    """A run directory with plausible tables: random scores evaluated as a sweep would."""
    rng = np.random.default_rng(seed)
    names = {"sex": ["male", "female"], "age": ["young", "old"]}
    y = rng.integers(0, 2, n).astype(np.int8)
    blocks, preds = [], {}
    for h, head in enumerate(heads):
        for attr in attributes:
            g = rng.integers(0, 2, n).astype(np.int8)
            strength = np.where(g == 1, 0.8 + 0.2 * h, 1.6) + rng.normal(0, 0.2)
            score = (1 / (1 + np.exp(-(rng.normal(size=n) + strength * (2 * y - 1))))).astype(np.float32)
            blocks.append(evaluate(y, score, {attr: g}, threshold=0.5, n_boot=30, seed=0,
                                   group_names={attr: names[attr]}).assign(
                label="lesion", head=head, hparams="{}", criterion="auc", val_criterion=0.8))
            preds[f"{head}.lesion.{attr}"] = {"score": score, "y": y, "group": g, "row": np.arange(n),
                                              "id": np.array([f"s{i}" for i in range(n)])}
    metrics = pd.concat(blocks, ignore_index=True).assign(dataset=dataset, model=model)
    cfg = {"dataset": dataset, "model": model, "heads": list(heads), "labels": ["lesion"],
           "attributes": list(attributes), "group_names": names, "convention": "paper", "n_boot": 30, "seed": seed,
           "seeds": 1, "criterion": "auc", "threshold": 0.5, "versions": {"fmcache": "test"},
           "created": f"2026-01-01T00:00:{seed % 60:02d}", **(config or {})}
    path = new_run_dir(f"{dataset}-{model}", root)
    write_run(path, config=cfg, metrics=metrics, sweep=pd.DataFrame({"head": list(heads)}),
              predictions=preds if predictions else {})
    return path


@pytest.fixture(scope="module")
def probe(toy_report):
    return toy_report.run, toy_report.root, toy_report.path.read_text()


def tables_on_page(page: str) -> dict[str, pd.DataFrame]:
    """Each table's CSV download, decoded, by table id."""
    out = {}
    for tid, data in re.findall(r'<a download="([^"]+)\.csv" href="data:text/csv;charset=utf-8;base64,([^"]+)"', page):
        out[tid] = pd.read_csv(io.StringIO(base64.b64decode(data).decode()), keep_default_na=False, na_values=[""])
    return out


def sentences_on_page(page: str) -> list[tuple[str, str]]:
    return [(tid, html.unescape(text)) for tid, text in
            re.findall(r'<span class="sentence" data-table="([^"]+)">(.*?)</span>', page)]


def table_text(page: str, tid: str) -> str:
    body = re.search(rf'<table class="sortable" id="{tid}">(.*?)</table>', page, re.DOTALL).group(1)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_the_page_is_self_contained_with_every_section(probe):
    _, _, page = probe
    # no network: nothing is fetched from anywhere but the page itself
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script src" not in page and "<link rel=\"stylesheet\"" not in page
    for sid in ("summary", "setup", "results-synthetic", "ranks", "representation"):
        assert f'<section id="{sid}"' in page
    assert page.count("<h1>") == 1 and "<h2" in page and "<h3" in page
    imgs = re.findall(r"<img [^>]*>", page)
    assert len(imgs) >= 7  # 2 attributes x (trade-off, bars, reliability) + t-SNE maps
    for img in imgs:
        assert 'src="data:image/png;base64,' in img
        assert len(re.search(r'alt="([^"]*)"', img).group(1)) > 40
    assert "#0072B2" in page  # the Okabe-Ito blue in the page's own colours
    # one dataset: no ranks, said so; the group-against-group scatter per attribute all the same
    assert "Critical-difference diagrams need results on at least two datasets" in page
    assert '<figure id="f-cd-' not in page
    for attr in ("sex", "age"):
        assert f'<figure id="f-synthetic-lesion-{attr}-group-auc"' in page
    groups = tables_on_page(page)["groups"]
    assert set(groups["group"]) == {"male", "female", "young", "old"} and (groups["source"] == "cache").all()
    assert groups[["train", "val", "test"]].to_numpy().min() > 0


def test_headline_table_matches_the_run_and_marks_the_best(probe):
    run, _, page = probe
    head = tables_on_page(page)["t-synthetic-lesion-sex-headline"]
    m = run.metrics
    want = m[(m["attribute"] == "sex") & (m["metric"] == "auc_delta") & (m["group"] == "gap")].set_index("head")
    got = head.set_index("method")
    np.testing.assert_allclose(got.loc[want.index, "auc_delta"], want["value"])
    np.testing.assert_allclose(got.loc[want.index, "auc_delta_ci_high"], want["ci_high"])
    best = got["auc"].idxmax()
    row = re.search(rf"<tr><td[^>]*>toy</td><td[^>]*>{best}</td>(.*?)</tr>",
                    page.split('id="t-synthetic-lesion-sex-headline"')[1]).group(1)
    assert row.split("</td>")[0].startswith('<td class="num best"')


def test_summary_sentences_regenerate_from_the_tables_shown(probe):
    _, _, page = probe
    tables = tables_on_page(page)
    shown = sentences_on_page(page)
    assert len(shown) >= 3
    heads = [(f, t) for t, f in tables.items() if t.endswith("-headline")]
    mits = [(f, t) for t, f in tables.items() if t.endswith("-mitigation")]
    again = [(s.table_id, s.text) for s in narrative.summary(heads, mits)]
    assert again == shown
    # and every number a sentence quotes is printed in the table it links to
    for tid, text in shown:
        cells = table_text(page, tid)
        for number in re.findall(r"[+-]?\d+\.\d{3}", text):
            assert number in cells, (number, tid, text)


def test_ranks_across_datasets_with_several_models(tmp_path):
    paths = [fake_run(tmp_path, ds, model, heads=("linear", "resample"), attributes=("sex",), seed=i * 7 + j)
             for i, ds in enumerate(["alpha", "beta"]) for j, model in enumerate(["m1", "m2", "m3"])]
    page = build_report(paths, tmp_path / "many.html", representation=False).read_text()
    tables = tables_on_page(page)
    ranks = tables["t-cd-lesion-sex-model-auc"]
    assert set(ranks["method"]) == {"m1", "m2", "m3"} and abs(ranks["avg_rank"].sum() - 6) < 1e-9
    methods = tables["t-cd-lesion-sex-method-auc-delta"]  # methods ranked over (dataset, model) blocks
    assert set(methods["method"]) == {"linear", "resample"} and abs(methods["avg_rank"].sum() - 3) < 1e-9
    assert 'id="f-cd-lesion-sex-model-auc"' in page
    # every metric of the paper's rank figure, for models and for methods
    for by in ("model", "method"):
        for metric in ("auc", "ece", "eqodds", "auc-es", "auc-delta", "ece-delta"):
            assert f'id="f-cd-lesion-sex-{by}-{metric}"' in page, (by, metric)
    assert page.count('<figure id="f-cd-') == 12
    # ECE ranks lowest first: the ranks shown are those of the runs' own values
    m = pd.concat([fmcache.load_results(p).metrics for p in paths])
    ece = m[(m["metric"] == "ece") & (m["group"] == "overall") & (m["head"] == "linear") & (m["attribute"] == "sex")]
    want = ece.pivot_table(index="dataset", columns="model", values="value").rank(axis=1).mean()
    got = tables["t-cd-lesion-sex-model-ece"].set_index("method")["avg_rank"]
    np.testing.assert_allclose(got[want.index], want)
    # one group's AUC against the other's: one labelled point per (model, method)
    assert page.count('id="f-alpha-lesion-sex-group-auc"') == 1
    fig = page.split('id="f-alpha-lesion-sex-group-auc"')[1].split("</figure>")[0]
    assert "sex = male (horizontal) against sex = female (vertical)" in html.unescape(fig)
    assert "y = x" in fig and "6 model and method combinations" in fig
    # several models: the summary names each model's baseline gap
    shown = " ".join(t for _, t in sentences_on_page(page))
    assert all(m in shown for m in ("m1", "m2", "m3"))
    assert "<h2" in page and page.count('<section id="results-') == 2


def test_segmentation_and_finetuning_runs_get_their_sections(tmp_path):
    ft = fake_run(tmp_path, "alpha", "m1", heads=("linear", "lora"), config={"task": "finetune"}, predictions=False)
    rng = np.random.default_rng(1)
    rows = []
    for prompt in ("point", "box"):
        for attr, groups in (("sex", ("male", "female")),):
            vals = {g: rng.uniform(0.6, 0.9) for g in groups}
            rows += [{"metric": "dsc", "group": g, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 40,
                      "attribute": attr, "prompt": prompt} for g, v in vals.items()]
            rows += [{"metric": "dsc", "group": "overall", "value": np.mean(list(vals.values())), "ci_low": np.nan,
                      "ci_high": np.nan, "n": 80, "attribute": attr, "prompt": prompt},
                     {"metric": "dsc_delta", "group": "gap", "value": abs(vals["male"] - vals["female"]),
                      "ci_low": 0.0, "ci_high": 0.2, "n": 80, "attribute": attr, "prompt": prompt}]
    seg = pd.DataFrame(rows).assign(label="mask", head="sam", dataset="polyp", model="sam_vit_b", convention="paper")
    path = new_run_dir("polyp-sam", tmp_path)
    write_run(path, config={"dataset": "polyp", "model": "sam_vit_b", "task": "segmentation", "attributes": ["sex"]},
              metrics=seg, sweep=pd.DataFrame(), predictions={})
    page = build_report([ft, path], tmp_path / "mixed.html", representation=False).read_text()
    assert '<section id="segmentation"' in page
    dice = tables_on_page(page)["t-polyp-sex-dice"]
    assert list(dice["prompt"]) == ["point", "box"] and "dsc_female" in dice
    assert "lora (fine-tuned)" in tables_on_page(page)["t-alpha-lesion-sex-headline"]["method"].tolist()


def test_report_command(probe, run_cli, tmp_path):
    run, root, _ = probe
    out = tmp_path / "cli.html"
    code, stdout, err = run_cli("report", run.path.name, "--root", str(root), "--out", str(out), "--no-representation")
    assert code == 0, err
    assert str(out) in stdout and out.stat().st_size > 10_000
    code, _, err = run_cli("report", "no-such-run", "--root", str(root), "--out", str(out))
    assert code == 1 and err.strip().count("\n") == 0 and "no-such-run" in err


def _representation(page: str) -> str:
    return re.sub(r"<p class=\"note\">.*?</p>", "", page.split('id="representation"')[1])


def test_a_run_finds_its_cache_by_the_root_it_recorded(probe, tmp_path):
    run, root, page = probe
    assert run.config["root"] == str(root.resolve()) and "t-SNE" in _representation(page)
    # a run directory moved elsewhere still opens the cache it was trained on
    moved = shutil.copytree(run.path, tmp_path / "elsewhere" / "runs" / run.path.name)
    entry = fmcache.load_results(moved).cache_entry()
    assert (entry.dataset, entry.model) == ("synthetic", "toy")
    # a cache that is gone from its recorded root only drops the section, with a note
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "root": str(tmp_path / "gone")}))
    page = build_report([moved], tmp_path / "gone.html").read_text()
    assert "Not mapped" in page and "t-SNE" not in _representation(page)
