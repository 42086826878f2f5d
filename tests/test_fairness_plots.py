"""Every figure renders from synthetic input, saves as decodable PNG and parseable SVG,
and keeps its labels apart."""

from __future__ import annotations

import itertools
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fmcache.errors import FmcacheError
from fmcache.fairness import plots, statistics

GROUP_METRICS = ("auc", "acc", "ece", "bce", "tpr", "fpr", "tnr", "selection_rate")
GAP_METRICS = ("auc_delta", "auc_min", "acc_delta", "ece_delta", "eqodds", "eqopp", "dp", "auc_es", "auc_es_fairclip",
               "auc_skew", "acc_skew")


def tidy_table(
    seed: int = 0,
    groups: tuple[str, ...] = ("female", "male"),
    *,
    label: str = "cardiomegaly",
    attribute: str = "sex",
    ci: bool = True,
    utility: float = 0.8,
    gap: float = 0.05,
) -> pd.DataFrame:
    """A table shaped like fairness.evaluate()'s output, with plausible numbers."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(metric: str, group: str, value: float, n: int) -> None:
        half = 0.02 + 0.02 * rng.random() if ci else np.nan
        rows.append(
            {
                "label": label,
                "attribute": attribute,
                "metric": metric,
                "group": group,
                "value": value,
                "ci_low": value - half,
                "ci_high": value + half,
                "n": n,
                "convention": "paper",
                "reason": "",
            }
        )

    sizes = rng.integers(200, 3000, len(groups))
    for m in GROUP_METRICS:
        base = {"ece": 0.05, "bce": 0.45}.get(m, utility)
        for g, n in zip(groups, sizes):
            add(m, g, float(np.clip(base + gap * rng.normal(), 0.01, 0.99)), int(n))
        add(m, "overall", base, int(sizes.sum()))
    for m in GAP_METRICS:
        v = {"auc_min": utility - gap, "auc_es": utility / (1 + gap), "auc_es_fairclip": utility / (1 + 2 * gap),
             "auc_skew": 1 + 4 * gap, "acc_skew": 1 + 4 * gap}.get(m, gap)
        add(m, "gap", float(v * (1 + 0.2 * rng.normal())), int(sizes.sum()))
    return pd.DataFrame(rows)


def many_models(n: int = 12, *, ci: bool = True, clustered: bool = True) -> pd.DataFrame:
    names = [
        "BiomedCLIP",
        "MedCLIP",
        "PubMedCLIP",
        "CLIP",
        "BLIP",
        "BLIP2",
        "MedSAM",
        "SAM",
        "DINOv2",
        "C2L",
        "LVM-Med",
        "MedMAE",
        "MoCo-CXR",
        "SatMAE",
    ][:n]
    tables = []
    for i, name in enumerate(names):
        # clustered: most models share nearly the same point, the hard case for labels
        u = 0.80 + (0.004 * i if clustered else 0.014 * i - 0.08)
        gap = 0.05 + (0.002 * (i % 3) if clustered else 0.01 * (i % 5))
        t = tidy_table(seed=i, ci=ci, utility=u, gap=gap)
        t.loc[t["metric"] == "auc", "value"] = np.where(
            t.loc[t["metric"] == "auc", "group"] == "overall", u, t.loc[t["metric"] == "auc", "value"]
        )
        t.loc[t["metric"] == "auc_delta", "value"] = gap
        t["model"] = name
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


def assert_saved(fig, tmp_path, name: str) -> None:
    png, svg = plots.save(fig, tmp_path / name)
    assert png.suffix == ".png" and svg.suffix == ".svg"
    assert png.stat().st_size > 0 and svg.stat().st_size > 0
    with Image.open(png) as im:
        im.load()
        assert im.width > 100 and im.height > 100
    assert ET.parse(svg).getroot().tag.endswith("svg")


def text_boxes(fig, texts):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    return [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts if t.get_visible() and t.get_text()]


def assert_no_overlap(boxes) -> None:
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        assert not ba.overlaps(bb), f"text {a!r} overlaps {b!r}"


def test_importing_fairness_modules_leaves_matplotlib_out():
    import subprocess

    code = (
        "import sys; from fmcache import fairness; "
        "import fmcache.fairness.statistics, fmcache.fairness.representation; "
        "assert 'matplotlib' not in sys.modules and 'sklearn' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_group_bars(tmp_path):
    table = tidy_table(groups=("White", "Black", "Asian", "Hispanic", "Other"))
    fig = plots.group_bars(table, metrics=("auc", "acc", "ece", "tpr"))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4
    assert "White" in axes[0].get_xticklabels()[0].get_text()
    assert_saved(fig, tmp_path, "bars")


def test_group_bars_without_intervals_and_nan_group(tmp_path):
    table = tidy_table(ci=False)
    table.loc[(table["metric"] == "auc") & (table["group"] == "male"), "value"] = np.nan
    fig = plots.group_bars(table, metrics=("auc",))
    assert any(t.get_text() == "n/a" for t in fig.axes[0].texts)
    assert_saved(fig, tmp_path, "bars_nan")


def test_group_bars_asks_which_slice():
    table = pd.concat([tidy_table(attribute="sex"), tidy_table(attribute="age")])
    with pytest.raises(FmcacheError, match="attribute"):
        plots.group_bars(table)
    assert plots.group_bars(table, attribute="age") is not None
    with pytest.raises(FmcacheError, match="dsc"):
        plots.group_bars(table, attribute="age", metrics=("dsc",))


@pytest.mark.parametrize("clustered", [True, False])
def test_tradeoff_labels_do_not_overlap(tmp_path, clustered):
    table = many_models(12, clustered=clustered)
    fig = plots.tradeoff_scatter(table, by="model", x="auc", y="auc_delta")
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(pd.unique(table["model"]))
    boxes = text_boxes(fig, labels)
    assert_no_overlap(boxes)
    frame = ax.get_window_extent()
    for name, box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, f"{name} leaves the axes"
    assert_saved(fig, tmp_path, "tradeoff")


def test_tradeoff_other_axes_and_missing_metric():
    table = many_models(4, ci=False)
    fig = plots.tradeoff_scatter(table, x="acc", y="auc_es")
    assert "Equity-scaled AUC" in fig.axes[0].get_ylabel()
    with pytest.raises(FmcacheError, match="dsc_delta"):
        plots.tradeoff_scatter(table, y="dsc_delta")
    with pytest.raises(FmcacheError, match="method"):
        plots.tradeoff_scatter(table, by="method")


def test_group_scatter_two_groups_then_worst_against_best(tmp_path):
    table = many_models(4)
    fig = plots.group_scatter(table, by="model")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "AUC, sex = female" and ax.get_ylabel() == "AUC, sex = male"
    assert ax.get_xlim() == ax.get_ylim()  # a square window: the dashed line is y = x
    (xs, ys), = [line.get_data() for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(xs) == list(ys)
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == sorted(pd.unique(table["model"]))
    offsets = ax.collections[-1].get_offsets()
    auc = table[table["metric"] == "auc"].pivot_table(index="model", columns="group", values="value")
    np.testing.assert_allclose(sorted(map(tuple, offsets)), sorted(map(tuple, auc[["female", "male"]].to_numpy())))
    assert_saved(fig, tmp_path, "groups")
    three = pd.concat([tidy_table(seed=i, groups=("a", "b", "c")).assign(model=f"m{i}") for i in range(3)])
    fig = plots.group_scatter(three, labels=False)
    ax = fig.axes[0]
    assert "worst" in ax.get_xlabel() and "best" in ax.get_ylabel() and not [t for t in ax.texts if t.get_text()]
    wide = three[three["metric"] == "auc"].pivot_table(index="model", columns="group", values="value")
    wide = wide[["a", "b", "c"]]
    want = sorted(zip(wide.min(axis=1), wide.max(axis=1)))
    np.testing.assert_allclose(sorted(map(tuple, ax.collections[-1].get_offsets())), want)
    with pytest.raises(FmcacheError, match="one group|1 group"):
        plots.group_scatter(tidy_table(groups=("only",)).assign(model="m"))


def test_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    g = rng.integers(-1, 3, n)
    s = rng.random(n)
    # group 1 overconfident: its labels are less extreme than its scores
    p = np.where(g == 1, 0.5 + 0.5 * (s - 0.5), s)
    y = (rng.random(n) < p).astype(int)
    fig = plots.reliability_diagram(y, s, g, ["female", "male", "other"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4 and titles[0].startswith("overall") and titles[2].startswith("male")
    assert_saved(fig, tmp_path, "reliability")
    with pytest.raises(FmcacheError, match="probabilities"):
        plots.reliability_diagram(y, s * 3 - 1, g)


def test_cd_diagram_labels_do_not_overlap(tmp_path):
    rng = np.random.default_rng(1)
    methods = ["ERM", "GroupDRO", "LAFTR", "FairAdv", "Resampling", "FSCL", "FIS", "CLIP-Adapt", "Zero-shot (long name)"]
    wide = pd.DataFrame(rng.random((12, len(methods))) + np.linspace(0, 0.6, len(methods)), columns=methods)
    res = statistics.nemenyi(wide, higher_is_better=True)
    fig = plots.cd_diagram(res)
    ax = fig.axes[0]
    boxes = text_boxes(fig, ax.texts)
    assert len(boxes) == len(methods) + len(methods) + 2  # names, tick labels, CD, title
    assert_no_overlap(boxes)
    fig_box = fig.bbox
    for name, box in boxes:
        assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1, f"{name} is cut off"
    assert_saved(fig, tmp_path, "cd")


def test_cd_diagram_from_ranks_few_methods():
    ranks = pd.Series({"a": 1.2, "b": 1.9, "c": 2.9})
    fig = plots.cd_diagram(ranks, cd=3.0)  # CD longer than the axis
    assert_no_overlap(text_boxes(fig, fig.axes[0].texts))
    with pytest.raises(FmcacheError, match="cd"):
        plots.cd_diagram(ranks)


def test_tsne_scatter(tmp_path):
    from fmcache.fairness.representation import TSNEEmbedding

    rng = np.random.default_rng(0)
    g = rng.integers(-1, 3, 400)
    emb = TSNEEmbedding(coords=rng.normal(size=(400, 2)) + g[:, None], index=np.arange(400), groups=g, seed=0, perplexity=30.0)
    fig = plots.tsne_scatter(emb, group_names={0: "18-40", 1: "40-60", 2: "60+"}, attribute="age")
    legend = fig.axes[0].get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries[0].startswith("18-40") and entries[-1].startswith("unknown")
    assert_saved(fig, tmp_path, "tsne")


def test_save_replaces_suffix(tmp_path):
    fig = plots.tsne_scatter(np.zeros((5, 2)))
    png, svg = plots.save(fig, tmp_path / "sub" / "x.png")
    assert png == tmp_path / "sub" / "x.png" and svg == tmp_path / "sub" / "x.svg"
