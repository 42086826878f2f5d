"""The report's figures, drawn from its tables; each returns a rendered :class:`Figure`.

The library plots in :mod:`fmcache.fairness.plots` are used where they stay fast and
legible; when a slice holds many models the report switches to small multiples, since
one labelled point or one panel per (model, method) would neither render in time nor read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fmcache.fairness import metric_info, plots
from fmcache.report.model import Figure

LABELLED_POINTS = 12  # above this the trade-off scatter drops per-point labels
MAX_PANELS = 12  # models shown in one small-multiples figure
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig, id: str, title: str, alt: str, caption: str = "") -> Figure:
    """Rasterise a matplotlib figure into a report :class:`Figure`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    return Figure(id=id, title=title, png=buf.getvalue(), alt=alt, caption=caption)


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3f}"


def tradeoff(table: pd.DataFrame, *, id: str, where: str, gap: str = "auc_delta") -> Figure:
    """AUC against a gap, one point per (model, method) of one (dataset, label, attribute)."""
    pts = table.assign(point=_point_names(table))
    n = pts["point"].nunique()
    best = pts[(pts["metric"] == gap) & (pts["group"] == "gap")].sort_values("value").iloc[0]
    alt = (f"Scatter of the {gap} gap (vertical) against AUC (horizontal) for {n} model and method "
           f"combinations on {where}; the smallest gap is {best['point']} at {_fmt(best['value'])}. "
           "Exact values are in the headline table.")
    title = f"Fairness–utility trade-off, {where}"
    if n <= LABELLED_POINTS:
        fig = plots.tradeoff_scatter(pts, by="point", x="auc", y=gap, title=title)
        return render(fig, id, title, alt, "Lower is fairer, right is more accurate; whiskers are bootstrap intervals.")
    fig = _new_figure(8.0, 5.5)
    ax = fig.add_subplot()
    methods = list(pd.unique(pts["method"]))
    colors = plots.group_colors(methods)
    for i, meth in enumerate(methods):
        sub = pts[pts["method"] == meth]
        x = sub[(sub["metric"] == "auc") & (sub["group"] == "overall")].set_index("model")["value"]
        y = sub[(sub["metric"] == gap) & (sub["group"] == "gap")].set_index("model")["value"]
        x, y = x.align(y, join="inner")
        ax.scatter(x, y, s=40, color=colors[meth], marker=_MARKERS[i % len(_MARKERS)], edgecolor="black",
                   linewidth=0.5, label=meth, zorder=3)
    conv = pts["convention"].iloc[0] if "convention" in pts else None
    ax.set_xlabel(plots.axis_label("auc", conv))
    ax.set_ylabel(plots.axis_label(gap, conv))
    ax.grid(color="#e5e5e5", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    ax.set_title(title, fontsize=12)
    return render(fig, id, title, alt, "One point per model; colour and marker give the method. "
                  "Models are named in the headline table.")


def group_scatter(table: pd.DataFrame, *, id: str, where: str, metric: str = "auc") -> Figure:
    """One group's AUC against another's, one point per (model, method): the paper's utility-versus-fairness view."""
    pts = table.assign(point=_point_names(table))
    rows = pts[(pts["metric"] == metric) & ~pts["group"].isin(["overall", "gap"])]
    groups = [str(g) for g in pd.unique(rows["group"])]
    attr = str(table["attribute"].iloc[0])
    n = pts["point"].nunique()
    what = metric_info(metric).title
    title = f"{what} of one group against another, {where}"
    fig = plots.group_scatter(pts, by="point", metric=metric, labels=n <= LABELLED_POINTS, title=title)
    if len(groups) == 2:
        axes = f"{what} of {attr} = {groups[0]} (horizontal) against {attr} = {groups[1]} (vertical)"
        caption = (f"x: {attr} = {groups[0]}, y: {attr} = {groups[1]}. Points on the dashed line y = x treat both "
                   "groups alike; the farther from it, the larger the gap. Whiskers are bootstrap intervals.")
    else:
        axes = f"{what} of each point's worst {attr} group (horizontal) against its best (vertical)"
        caption = (f"{attr} has {len(groups)} groups ({', '.join(groups)}): each point is its worst group (x) against "
                   "its best (y), so the groups may differ between points. The dashed line y = x is no gap; the "
                   "farther above it, the larger the gap. Whiskers are bootstrap intervals.")
    if n > LABELLED_POINTS:
        caption += " Points are unlabelled (too many to read); models are named in the headline table."
    alt = (f"Scatter of {axes} for {n} model and method combinations on {where}, with the diagonal y = x. "
           "Exact values are in the headline data.")
    return render(fig, id, title, alt, caption)


def _point_names(table: pd.DataFrame) -> pd.Series:
    if table["model"].nunique() == 1:
        return table["method"].astype(str)
    return table["model"].astype(str) + " · " + table["method"].astype(str)


def group_bars(table: pd.DataFrame, *, id: str, where: str, metric: str = "auc", x: str = "method",
               what: str = "AUC") -> Figure:
    """Per-group ``metric`` with interval whiskers: one panel per model, bars per group along ``x``."""
    rows = table[(table["metric"] == metric) & ~table["group"].isin(["overall", "gap"])]
    models = list(pd.unique(rows["model"]))[:MAX_PANELS]
    groups = list(pd.unique(rows["group"]))
    colors = plots.group_colors(groups)
    xs = list(pd.unique(rows[x]))
    ncols = min(len(models), 2)
    nrows = math.ceil(len(models) / ncols)
    width = min(max(0.28 * len(xs) * len(groups) + 1.6, 4.5), 7.5) * ncols
    fig = _new_figure(width, 3.3 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    w = 0.8 / max(len(groups), 1)
    for k, model in enumerate(models):
        ax = axes[k // ncols][k % ncols]
        sub = rows[rows["model"] == model]
        for j, g in enumerate(groups):
            s = sub[sub["group"] == g].set_index(x).reindex(xs)
            pos = np.arange(len(xs)) + (j - (len(groups) - 1) / 2) * w
            err = np.vstack([(s["value"] - s["ci_low"]).clip(lower=0), (s["ci_high"] - s["value"]).clip(lower=0)])
            ax.bar(pos, s["value"], width=w, color=colors[g], edgecolor="black", linewidth=0.5,
                   label=str(g), yerr=np.nan_to_num(err), ecolor="#333333", capsize=2, error_kw={"elinewidth": 0.8})
        ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs], rotation=35 if len(xs) > 3 else 0,
                      ha="right" if len(xs) > 3 else "center", fontsize=9)
        ax.set_ylabel(what)
        ax.set_ylim(0, 1.05 if metric in ("auc", "acc", "dsc", "iou") else None)
        ax.set_title(str(model), fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="#eeeeee")
        ax.set_axisbelow(True)
    # below the panels: inside one it would hide bars
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, [f"{table['attribute'].iloc[0]}: {g}" for g in labels], loc="outside lower center",
               ncols=min(len(groups), 4), fontsize=9, frameon=False)
    for k in range(len(models), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    title = f"{what} per group, {where}"
    fig.suptitle(title, fontsize=12)
    spread = sub_spread(rows, x)
    alt = (f"Bar chart of {what} for each {table['attribute'].iloc[0]} group ({', '.join(map(str, groups))}) "
           f"by {x}, one panel per model ({len(models)} shown) on {where}. {spread}")
    return render(fig, id, title, alt, "Whiskers are bootstrap intervals.")


def sub_spread(rows: pd.DataFrame, x: str) -> str:
    """A sentence naming the largest per-group difference drawn, for alt text."""
    wide = rows.pivot_table(index=["model", x], columns="group", values="value")
    if wide.shape[1] < 2 or wide.empty:
        return ""
    diff = (wide.max(axis=1) - wide.min(axis=1)).dropna()
    if diff.empty:
        return ""
    (model, item), d = diff.idxmax(), diff.max()
    return f"The largest difference between groups is {_fmt(d)} ({model}, {item})."


def reliability(preds: Sequence[tuple[str, dict[str, np.ndarray]]], names: Sequence[str], *, id: str,
                where: str) -> Figure:
    """Calibration per group of each model's baseline head: ``preds`` is [(model, arrays)]."""
    title = f"Reliability per group, {where}"
    alt_groups = ", ".join(names)
    if len(preds) == 1:
        model, p = preds[0]
        fig = plots.reliability_diagram(p["y"], p["score"], p["group"], list(names), title=f"{title} — {model}")
        eces = _group_ece(p, names)
        alt = (f"Reliability diagrams of {model} on {where}: the overall panel then one per group ({alt_groups}), "
               f"fraction of positives against mean predicted probability with bin counts below. ECE per group: {eces}.")
        return render(fig, id, title, alt, "The dashed diagonal is perfect calibration.")
    preds = list(preds)[:MAX_PANELS]
    ncols = min(len(preds), 4)
    nrows = math.ceil(len(preds) / ncols)
    fig = _new_figure(3.0 * ncols, 2.9 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    colors = plots.group_colors(list(range(len(names))))
    for k, (model, p) in enumerate(preds):
        ax = axes[k // ncols][k % ncols]
        ax.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=1.0)
        for c, name in enumerate(names):
            conf, frac, _ = _bins(p, c)
            ax.plot(conf, frac, marker=_MARKERS[c % len(_MARKERS)], markersize=4, color=colors[c], label=str(name))
        ax.set_title(str(model), fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        if k == 0:
            ax.legend(fontsize=8, loc="upper left")
    for k in range(len(preds), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    fig.supxlabel("mean predicted probability", fontsize=10)
    fig.supylabel("fraction of positives", fontsize=10)
    fig.suptitle(title, fontsize=12)
    alt = (f"Reliability curves on {where}, one panel per model ({len(preds)} shown), one line per group "
           f"({alt_groups}); the dashed diagonal is perfect calibration.")
    return render(fig, id, title, alt, "Ten equal-width bins; per-group ECE is in the headline data (CSV).")


def _bins(p: dict[str, np.ndarray], code: int, n_bins: int = 10):
    keep = (p["group"] == code) & np.isin(p["y"], (0, 1)) & np.isfinite(p["score"])
    y, s = p["y"][keep].astype(float), np.clip(p["score"][keep].astype(float), 0, 1)
    idx = np.clip((s * n_bins).astype(int), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    filled = counts > 0
    conf = np.bincount(idx, weights=s, minlength=n_bins)[filled] / counts[filled]
    frac = np.bincount(idx, weights=y, minlength=n_bins)[filled] / counts[filled]
    ece = float(np.sum(counts[filled] * np.abs(frac - conf)) / max(len(s), 1))
    return conf, frac, ece


def _group_ece(p: dict[str, np.ndarray], names: Sequence[str]) -> str:
    return ", ".join(f"{n} {_bins(p, c)[2]:.3f}" for c, n in enumerate(names))


def cd(result, *, id: str, what: str, blocks: str = "datasets") -> Figure:
    """Critical-difference diagram of a Nemenyi result; ``blocks`` names what was ranked within."""
    fig = plots.cd_diagram(result, title=(f"Average rank (1 = best) over {result.n_datasets} {blocks}; "
                                          f"Friedman p = {result.friedman.pvalue:.2g}, Nemenyi α = {result.alpha:g}"))
    ranks = result.ranks
    alt = (f"Critical-difference diagram of {what}: average ranks over {result.n_datasets} {blocks}, best "
           f"{ranks.index[0]} ({ranks.iloc[0]:.2f}), worst {ranks.index[-1]} ({ranks.iloc[-1]:.2f}); critical "
           f"difference {result.cd:.2f}; Friedman p = {result.friedman.pvalue:.2g}.")
    return render(fig, id, f"Average ranks: {what}", alt,
                  "Methods joined by a thick bar are not significantly different (Nemenyi).")


def tsne(embedding, names: Sequence[str], *, attribute: str, id: str, where: str) -> Figure:
    """t-SNE map of a subsample of the cached features, coloured by ``attribute``."""
    fig = plots.tsne_scatter(embedding, group_names=list(names), attribute=attribute,
                             title=f"t-SNE of the features, {where}, by {attribute}")
    g = embedding.groups
    counts = ", ".join(f"{n} {int(np.sum(g == c))}" for c, n in enumerate(names))
    alt = (f"t-SNE scatter of {len(g)} sampled feature vectors of {where}, coloured by {attribute} ({counts}). "
           "Separated colours mean the attribute is visible in the features.")
    return render(fig, id, f"t-SNE, {where}, {attribute}", alt,
                  "A random subsample of the cached features; grey points have no known group.")


# Okabe-Ito sky blue and vermillion, told apart by line style as well
TRUTH_COLOR, PRED_COLOR = "#56B4E9", "#D55E00"


def overlays(ov: dict[str, np.ndarray], group: int, *, id: str, where: str) -> Figure:
    """The thumbnails of one group's chosen items (see :func:`fmcache.runs.read_overlays`), each
    with the true outline (solid) and the predicted one (dashed) of every class."""
    from matplotlib.lines import Line2D

    items = np.flatnonzero(ov["group"] == group)
    name = str(ov["group_names"][group])
    attr, prompt = str(ov["attribute"]), str(ov["prompt"])
    fig = _new_figure(2.6 * len(items) + 0.4, 3.2)
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    for ax, k in zip(axes, items):
        h, w = (int(v) for v in ov["size"][k])
        ax.imshow(ov["image"][k][:h, :w], interpolation="nearest")
        for c in range(1, len(ov["classes"]) + 1):
            for labels, color, style in ((ov["truth"], TRUTH_COLOR, "solid"), (ov["pred"], PRED_COLOR, "dashed")):
                mask = labels[k][:h, :w] == c
                if mask.any() and not mask.all():  # contour needs both sides of the line
                    ax.contour(mask.astype(float), levels=[0.5], colors=[color], linestyles=[style], linewidths=1.6)
        ax.set_title(f"{ov['pick'][k]} Dice {_fmt(float(ov['dsc'][k]))}\n{ov['id'][k]}", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=TRUTH_COLOR, linestyle="solid", label="ground truth"),
               Line2D([], [], color=PRED_COLOR, linestyle="dashed", label=f"prediction ({prompt} prompt)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    title = f"Examples, {where}, {attr} = {name}"
    fig.suptitle(title, fontsize=11)
    shown = "; ".join(f"{ov['id'][k]} ({ov['pick'][k]}, Dice {_fmt(float(ov['dsc'][k]))})" for k in items)
    alt = (f"{len(items)} images of the {attr} = {name} group on {where}, each with the ground-truth outline "
           f"(solid) and the {prompt}-prompt prediction (dashed): {shown}.")
    return render(fig, id, title, alt, f"The items of lowest, median and highest Dice in the group under the {prompt} "
                  "prompt (the run's best by mean Dice); solid: ground truth, dashed: prediction. Thumbnails "
                  "kept by the run.")
