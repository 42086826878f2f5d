"""Figures for fairness results: per-group bars, fairness-utility trade-off, one group's
metric against another's, reliability diagrams, critical-difference diagram and t-SNE maps.

Every function returns a ``matplotlib.figure.Figure`` drawn on the Agg canvas without
touching pyplot's global state, so it is safe in scripts, servers and tests; `save`
writes it as PNG and SVG. Colours follow the Okabe-Ito palette, which stays
distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fmcache.errors import FmcacheError, UnknownNameError
from fmcache.fairness._conventions import metric_info

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fmcache.fairness.representation import TSNEEmbedding
    from fmcache.fairness.statistics import NemenyiResult

__all__ = [
    "OKABE_ITO",
    "axis_label",
    "cd_diagram",
    "group_bars",
    "group_colors",
    "group_scatter",
    "reliability_diagram",
    "save",
    "tradeoff_scatter",
    "tsne_scatter",
]

# Okabe & Ito (2008); yellow and black last: yellow is faint on white, black reads as text
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
_UNKNOWN_COLOR = "#999999"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SUMMARY_GROUPS = ("overall", "gap")
_REQUIRED = ("metric", "group", "value", "ci_low", "ci_high")

def _metric_info(metric: str, convention: str | None = None) -> tuple[str, str | None, bool]:
    """Title, "higher" / "lower" / None, and whether values lie in [0, 1]; a column that is
    no metric of the result tables is shown by its own name."""
    try:
        info = metric_info(metric, convention or "paper")
    except UnknownNameError:
        return metric, None, False
    better = None if info.higher_is_better is None else ("higher" if info.higher_is_better else "lower")
    return info.title, better, info.bounded


def axis_label(metric: str, convention: str | None = None) -> str:
    """An axis label: the metric's title and which way is better (or fairer, for a gap)."""
    name, better, _ = _metric_info(metric, convention)
    if better is None:
        return name
    word = "fairer" if metric_info(metric, convention or "paper").fairness else "better"
    return f"{name}  ({better} is {word})"


def _new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, *, dpi: int = 150) -> tuple[Path, Path]:
    """Write a figure as ``<path>.png`` and ``<path>.svg``.

    Parameters
    ----------
    fig
        The figure.
    path
        Destination without suffix; missing parent folders are created. A ``.png`` or
        ``.svg`` suffix given anyway is replaced.
    dpi
        Resolution of the PNG.

    Returns
    -------
    tuple of Path
        The PNG and SVG paths.
    """
    base = Path(path)
    if base.suffix.lower() in (".png", ".svg"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    png, svg = Path(f"{base}.png"), Path(f"{base}.svg")
    fig.savefig(png, dpi=dpi, facecolor="white")
    # no date in the SVG, so the same figure gives the same bytes
    fig.savefig(svg, facecolor="white", metadata={"Date": None})
    return png, svg


def group_colors(groups: Sequence[Any]) -> dict[Any, str]:
    """Okabe-Ito colour for each group, in the given order (cycling past eight groups)."""
    return {g: OKABE_ITO[i % len(OKABE_ITO)] for i, g in enumerate(groups)}


def _check_table(table: pd.DataFrame, extra: Sequence[str] = ()) -> None:
    if not isinstance(table, pd.DataFrame):
        raise FmcacheError(
            f"expected the results table from fairness.evaluate() (a DataFrame), "
            f"got {type(table).__name__}"
        )
    missing = [c for c in (*_REQUIRED, *extra) if c not in table.columns]
    if missing:
        raise FmcacheError(
            f"the results table lacks column(s) {missing}; pass the table returned by "
            "fairness.evaluate() (columns label, attribute, metric, group, value, ci_low, "
            "ci_high, n, ...)"
        )


def _select(
    table: pd.DataFrame, *, label: str | None, attribute: str | None, convention: str | None
) -> tuple[pd.DataFrame, dict[str, str | None]]:
    """Narrow the table to one (label, attribute, convention), or say which to choose."""
    chosen: dict[str, str | None] = {}
    for col, want in (("label", label), ("attribute", attribute), ("convention", convention)):
        if col not in table.columns:
            chosen[col] = want
            continue
        values = [str(v) for v in pd.unique(table[col].dropna())]
        if want is not None:
            if want not in values:
                raise FmcacheError(
                    f"{col}={want!r} is not in the table; it holds {values}"
                )
            table = table[table[col].astype(str) == want]
        elif len(values) > 1:
            raise FmcacheError(
                f"the table holds several {col}s {values}; choose one with {col}=..."
            )
        chosen[col] = want if want is not None else (values[0] if values else None)
    return table, chosen


def _context(chosen: Mapping[str, str | None]) -> str:
    parts = []
    if chosen.get("label"):
        parts.append(f"label: {chosen['label']}")
    if chosen.get("attribute"):
        parts.append(f"attribute: {chosen['attribute']}")
    return ", ".join(parts)


def _finite(v: Any) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- per-group bars


def group_bars(
    table: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("auc", "acc", "ece"),
    label: str | None = None,
    attribute: str | None = None,
    convention: str | None = None,
    title: str | None = None,
) -> Figure:
    """Per-group utility bars with confidence-interval whiskers, one panel per metric.

    Each panel shows one bar per group (``value``) with a whisker from ``ci_low`` to
    ``ci_high`` where a bootstrap interval exists, the group size under its name, and a
    dashed line at the overall value. A group whose value is NaN (e.g. one class only)
    is marked "n/a".

    Parameters
    ----------
    table
        Tidy results from ``fairness.evaluate()``.
    metrics
        Per-group metrics to show, one panel each.
    label, attribute, convention
        Which slice to draw when the table holds several.
    title
        Figure title; default names the label and attribute.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_table(table)
    if not metrics:
        raise FmcacheError("metrics is empty; name at least one per-group metric, e.g. 'auc'")
    table, chosen = _select(table, label=label, attribute=attribute, convention=convention)
    per_group = table[~table["group"].astype(str).isin(_SUMMARY_GROUPS)]
    available = sorted(pd.unique(per_group["metric"].astype(str)))
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise FmcacheError(f"no per-group rows for metric(s) {unknown}; the table has {available}")
    groups = [str(g) for g in pd.unique(per_group["group"].astype(str))]
    colors = group_colors(groups)
    n_panels = len(metrics)
    ncols = min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    longest = max(len(g) for g in groups)
    rotate = len(groups) > 4 or longest * len(groups) > 28
    panel_w = min(max(2.8, 0.6 * len(groups) + 1.2), 5.0)
    fig = _new_figure(panel_w * ncols, 3.0 * nrows + (0.5 if rotate else 0.0) + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    conv = chosen.get("convention")
    has_ci = False

    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        rows = per_group[per_group["metric"].astype(str) == metric].set_index(
            per_group.loc[per_group["metric"].astype(str) == metric, "group"].astype(str)
        )
        x = np.arange(len(groups))
        tops = []
        for j, g in enumerate(groups):
            if g not in rows.index:
                continue
            row = rows.loc[g]
            v = float(row["value"])
            if not _finite(v):
                ax.text(j, 0.0, "n/a", ha="center", va="bottom", fontsize=9, color="#555555")
                continue
            ax.bar(j, v, width=0.65, color=colors[g], edgecolor="black", linewidth=0.6, zorder=2)
            tops.append(v)
            lo, hi = row["ci_low"], row["ci_high"]
            if _finite(lo) and _finite(hi):
                ax.errorbar(
                    j, v, yerr=[[max(v - float(lo), 0.0)], [max(float(hi) - v, 0.0)]],
                    fmt="none", ecolor="black", elinewidth=1.2, capsize=4, zorder=3,
                )
                tops.append(float(hi))
                has_ci = True
        overall = table[
            (table["metric"].astype(str) == metric) & (table["group"].astype(str) == "overall")
        ]
        ov = float(overall["value"].iloc[0]) if len(overall) else float("nan")
        if _finite(ov):
            ax.axhline(ov, color="#333333", linestyle="--", linewidth=1.1, zorder=4)
            tops.append(ov)
        ticklabels = []
        for g in groups:
            n = rows.loc[g, "n"] if ("n" in rows.columns and g in rows.index) else None
            ticklabels.append(f"{g}\nn={int(n):,}" if _finite(n) else g)
        ax.set_xticks(x, ticklabels, fontsize=9,
                      rotation=30 if rotate else 0, ha="right" if rotate else "center")
        top = max(tops) if tops else 1.0
        upper = top * 1.15 if top > 0 else 1.0
        name, better, bounded = _metric_info(metric, conv)
        if bounded and top <= 1.0:
            # a round top keeps the topmost tick in view
            upper = min(math.ceil(top * 1.1 * 10.0) / 10.0, 1.0)
        ax.set_ylim(0.0, upper)
        head = name + (f" ({better} is better)" if better else "")
        ax.set_title(head + (f"\noverall {ov:.3f}" if _finite(ov) else ""), fontsize=10)
        ax.set_ylabel(name)
        ax.grid(axis="y", color="#dddddd", linewidth=0.8, zorder=0)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    for i in range(n_panels, nrows * ncols):
        axes[i // ncols][i % ncols].set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="#333333", linestyle="--", label="overall (all groups)")]
    if has_ci:
        handles.append(Line2D([], [], color="black", marker="|", markersize=10, linestyle="",
                              label="bootstrap interval"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9,
               frameon=False)
    ctx = _context(chosen)
    fig.suptitle(title or ("Utility by group" + (f" — {ctx}" if ctx else "")), fontsize=12)
    return fig


# --------------------------------------------------------------------------- trade-off


def tradeoff_scatter(
    table: pd.DataFrame,
    *,
    by: str = "model",
    x: str = "auc",
    y: str = "auc_delta",
    label: str | None = None,
    attribute: str | None = None,
    convention: str | None = None,
    title: str | None = None,
) -> Figure:
    """Fairness-utility trade-off: one labelled point per model (or method).

    Each point is a value of the `by` column at (overall or gap value of metric `x`,
    overall or gap value of metric `y`), with error bars from ``ci_low``/``ci_high``
    where intervals exist. Labels are placed greedily around their points, trying
    offsets at growing distances until the label box overlaps no other label, no point
    and no leader line, so no two labels overlap.

    Parameters
    ----------
    table
        Several ``fairness.evaluate()`` tables concatenated, with a column `by` naming
        the model or method of each row.
    by
        Column naming the points.
    x, y
        Metrics on the axes: typically a utility (``auc``) on x and a gap
        (``auc_delta``, ``auc_es``, ``eqodds``) on y.
    label, attribute, convention
        Which slice to draw when the table holds several.
    title
        Figure title; default names the label and attribute.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_table(table, extra=(by,))
    table, chosen = _select(table, label=label, attribute=attribute, convention=convention)
    summary = table[table["group"].astype(str).isin(_SUMMARY_GROUPS)]
    points: dict[str, dict[str, pd.Series]] = {}
    for axis_metric in (x, y):
        rows = summary[summary["metric"].astype(str) == axis_metric]
        if rows.empty:
            have = sorted(pd.unique(summary["metric"].astype(str)))
            raise FmcacheError(
                f"no overall or gap rows for metric {axis_metric!r}; the table has {have}"
            )
        dup = rows[by].astype(str).duplicated()
        if dup.any():
            raise FmcacheError(
                f"several {axis_metric!r} rows for {by}={rows[by].astype(str)[dup].iloc[0]!r}; "
                "narrow the table (label=, attribute=, convention=) or aggregate seeds first"
            )
        for _, row in rows.iterrows():
            points.setdefault(str(row[by]), {})[axis_metric] = row
    names = [n for n, d in points.items() if x in d and y in d]
    if not names:
        raise FmcacheError(f"no {by} has both {x!r} and {y!r} values")
    xs = np.array([float(points[n][x]["value"]) for n in names])
    ys = np.array([float(points[n][y]["value"]) for n in names])

    fig = _new_figure(7.5, 5.5)
    ax = fig.add_subplot()
    conv = chosen.get("convention")
    whiskers: list[tuple[tuple[float, float], tuple[float, float]]] = []
    for i, n in enumerate(names):
        rx, ry = points[n][x], points[n][y]
        xerr = _err(rx)
        yerr = _err(ry)
        if xerr is not None:
            whiskers.append(((xs[i] - xerr[0][0], ys[i]), (xs[i] + xerr[1][0], ys[i])))
        if yerr is not None:
            whiskers.append(((xs[i], ys[i] - yerr[0][0]), (xs[i], ys[i] + yerr[1][0])))
        if xerr is not None or yerr is not None:
            ax.errorbar(xs[i], ys[i], xerr=xerr, yerr=yerr, fmt="none", ecolor="#b0b0b0",
                        elinewidth=1.0, capsize=3, zorder=2)
    ax.scatter(xs, ys, s=46, color=OKABE_ITO[0], edgecolor="black", linewidth=0.6, zorder=3)
    ax.set_xlabel(axis_label(x, conv))
    ax.set_ylabel(axis_label(y, conv))
    ax.grid(color="#e5e5e5", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    # room around the cloud for labels
    ax.margins(x=0.18, y=0.18)
    ctx = _context(chosen)
    ax.set_title(title or ("Fairness–utility trade-off" + (f" — {ctx}" if ctx else "")),
                 fontsize=12)
    _place_labels(fig, ax, xs, ys, names, whiskers)
    return fig


def group_scatter(
    table: pd.DataFrame,
    *,
    by: str = "model",
    metric: str = "auc",
    groups: tuple[str, str] | None = None,
    label: str | None = None,
    attribute: str | None = None,
    convention: str | None = None,
    labels: bool = True,
    title: str | None = None,
) -> Figure:
    """One group's ``metric`` against another's, one point per value of ``by``, with y = x.

    A point on the diagonal treats both groups alike; its distance from the diagonal is
    the gap. With two groups (or ``groups`` given) x is the first and y the second, the
    same two for every point. With more groups x is each point's worst group and y its
    best (by the metric's direction), so the groups may differ between points and every
    point lies on or above the diagonal for a higher-is-better metric.

    Parameters
    ----------
    table
        Several ``fairness.evaluate()`` tables concatenated, with a column `by` naming
        the model (or model and method) of each row.
    by
        Column naming the points.
    metric
        A per-group metric (``auc``, ``acc``, ``ece``, ...).
    groups
        The (x, y) groups to compare; default the two groups, or worst vs best when
        there are more.
    label, attribute, convention
        Which slice to draw when the table holds several.
    labels
        Name each point (set False when there are too many to read).
    title
        Figure title; default names the metric and the slice.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_table(table, extra=(by,))
    table, chosen = _select(table, label=label, attribute=attribute, convention=convention)
    rows = table[(table["metric"].astype(str) == metric) & ~table["group"].astype(str).isin(_SUMMARY_GROUPS)]
    rows = rows.assign(group=rows["group"].astype(str), point=rows[by].astype(str))
    dup = rows.duplicated(["point", "group"])
    if dup.any():
        raise FmcacheError(
            f"several {metric!r} rows for {by}={rows['point'][dup].iloc[0]!r}; narrow the table "
            "(label=, attribute=, convention=) or aggregate seeds first"
        )
    names_g = list(pd.unique(rows["group"]))
    if groups is not None:
        missing = [g for g in groups if g not in names_g]
        if missing:
            raise FmcacheError(f"group(s) {missing} are not in the table; it holds {names_g}")
    elif len(names_g) < 2:
        raise FmcacheError(f"{metric!r} has {len(names_g)} group(s) in the table; the scatter needs two")
    pairwise = groups is not None or len(names_g) == 2
    title_m, better, bounded = _metric_info(metric, chosen.get("convention"))
    by_point = {p: sub.set_index("group") for p, sub in rows.groupby("point", sort=False)}
    names, xs, ys, xerr, yerr = [], [], [], [], []
    for p, sub in by_point.items():
        values = sub["value"].astype(float)
        if pairwise:
            gx, gy = groups or (names_g[0], names_g[1])
        else:
            finite = values[np.isfinite(values)]
            if len(finite) < 2:
                continue
            low, high = finite.idxmin(), finite.idxmax()
            gx, gy = (high, low) if better == "lower" else (low, high)
        if gx not in sub.index or gy not in sub.index:
            continue
        x, y = float(sub.at[gx, "value"]), float(sub.at[gy, "value"])
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        names.append(p)
        xs.append(x)
        ys.append(y)
        xerr.append(_err(sub.loc[gx]) or [[0.0], [0.0]])
        yerr.append(_err(sub.loc[gy]) or [[0.0], [0.0]])
    if not names:
        raise FmcacheError(f"no {by} has finite {metric!r} values for both groups")
    xs_a, ys_a = np.array(xs), np.array(ys)

    fig = _new_figure(6.4, 6.0)
    ax = fig.add_subplot()
    whiskers = []
    for i in range(len(names)):
        ex, ey = np.array(xerr[i]), np.array(yerr[i])
        whiskers.append(((xs_a[i] - ex[0][0], ys_a[i]), (xs_a[i] + ex[1][0], ys_a[i])))
        whiskers.append(((xs_a[i], ys_a[i] - ey[0][0]), (xs_a[i], ys_a[i] + ey[1][0])))
        ax.errorbar(xs_a[i], ys_a[i], xerr=ex, yerr=ey, fmt="none", ecolor="#b0b0b0", elinewidth=1.0,
                    capsize=3, zorder=2)
    ax.scatter(xs_a, ys_a, s=46, color=OKABE_ITO[0], edgecolor="black", linewidth=0.6, zorder=3)
    # one square window on both axes, so the diagonal is y = x at 45 degrees
    ends = np.concatenate([xs_a, ys_a, [w[k][j] for w in whiskers for k in (0, 1) for j in (0, 1)]])
    lo, hi = float(np.nanmin(ends)), float(np.nanmax(ends))
    pad = max(0.15 * (hi - lo), 0.02)
    lo, hi = lo - pad, hi + pad
    if bounded:  # a sliver past the bounds keeps a point at 1 off the frame
        lo, hi = max(lo, -0.02), min(hi, 1.02)
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="#888888", linewidth=1.0, zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    attr = chosen.get("attribute")
    who = f"{attr} = " if attr else "group "
    if pairwise:
        gx, gy = groups or (names_g[0], names_g[1])
        ax.set_xlabel(f"{title_m}, {who}{gx}")
        ax.set_ylabel(f"{title_m}, {who}{gy}")
    else:
        ax.set_xlabel(f"{title_m} of the worst {attr or ''} group".replace("  ", " "))
        ax.set_ylabel(f"{title_m} of the best {attr or ''} group".replace("  ", " "))
    ax.grid(color="#e5e5e5", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ctx = _context(chosen)
    ax.set_title(title or (f"{title_m} per group" + (f" — {ctx}" if ctx else "")), fontsize=12)
    if labels:
        _place_labels(fig, ax, xs_a, ys_a, names, whiskers)
    return fig


def _err(row: pd.Series) -> list[list[float]] | None:
    v, lo, hi = row["value"], row["ci_low"], row["ci_high"]
    if not (_finite(v) and _finite(lo) and _finite(hi)):
        return None
    v = float(v)
    return [[max(v - float(lo), 0.0)], [max(float(hi) - v, 0.0)]]


def _place_labels(
    fig: Figure,
    ax: Axes,
    xs: np.ndarray,
    ys: np.ndarray,
    names: Sequence[str],
    whiskers: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
) -> None:
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    # freeze the layout: offsets are chosen against the axes as drawn now
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    to_px = fig.dpi / 72.0
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    pad = 5.0
    point_boxes = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in pts]
    frame = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    segments: list[tuple[np.ndarray, np.ndarray]] = []
    # a label hiding part of an error bar would make the interval look lopsided
    bars = [(ax.transData.transform(a), ax.transData.transform(b)) for a, b in whiskers]
    bar_boxes = [Bbox.from_extents(min(a[0], b[0]) - 1.5, min(a[1], b[1]) - 1.5,
                                   max(a[0], b[0]) + 1.5, max(a[1], b[1]) + 1.5)
                 for a, b in bars]
    angles = [0, 180, 90, 270, 45, 135, 315, 225, 22.5, 157.5, 337.5, 202.5, 67.5, 112.5,
              247.5, 292.5]
    radii = [7, 14, 24, 36, 50, 66, 84]
    # the most crowded points choose first, while most room is left around them
    crowd = [np.sum(np.hypot(*(pts - p).T) < 60) for p in pts]
    for i in sorted(range(len(names)), key=lambda i: (-crowd[i], i)):
        ann = ax.annotate(names[i], (xs[i], ys[i]), xytext=(0, 0), textcoords="offset points",
                          fontsize=9, zorder=5,
                          bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                "alpha": 0.9})
        best: tuple[float, tuple[float, float, str, str]] | None = None
        for r in radii:
            for a in angles:
                dx, dy = r * math.cos(math.radians(a)), r * math.sin(math.radians(a))
                ha = "left" if dx > 1e-6 else "right" if dx < -1e-6 else "center"
                va = "bottom" if dy > 1e-6 else "top" if dy < -1e-6 else "center"
                ann.set_position((dx, dy))
                ann.set_ha(ha)
                ann.set_va(va)
                # the text alone, not any arrow; positions are refreshed only on request
                ann.update_positions(renderer)
                box = Text.get_window_extent(ann, renderer).padded(2)
                anchor = pts[i] + np.array([dx, dy]) * to_px
                others = [b for j, b in enumerate(point_boxes) if j != i]
                # overlaps are forbidden in effect; whisker crossings and distance trade off
                cost = sum(1000.0 + _overlap(box, [b]) for b in (*placed, *others)
                           if _overlap(box, [b]) > 0)
                cost += 1000.0 * sum(_segment_hits(s0, s1, box) for s0, s1 in segments)
                if r > 10:
                    cost += 1000.0 * sum(_segment_hits(pts[i], anchor, b) for b in placed)
                    cost += 3.0 * sum(_segment_hits(pts[i], anchor, b) for b in bar_boxes)
                    cost += 50.0 * sum(_segment_hits(pts[i], anchor, b) for b in others)
                cost += 3.0 * sum(_segment_hits(s0, s1, box) for s0, s1 in bars)
                # a label nearer to another point than to its own reads as that point's
                own = _box_distance(box, pts[i])
                cost += 20.0 * sum(_box_distance(box, p) < own + 6.0
                                   for j, p in enumerate(pts) if j != i)
                if not frame.contains(box.x0, box.y0) or not frame.contains(box.x1, box.y1):
                    cost += 1e6
                cost += 0.12 * r
                if best is None or cost < best[0]:
                    best = (cost, (dx, dy, ha, va))
            # nothing farther out can beat a placement that pays only for its distance
            if best is not None and best[0] <= 0.12 * r + 1e-9:
                break
        assert best is not None
        dx, dy, ha, va = best[1]
        ann.set_position((dx, dy))
        ann.set_ha(ha)
        ann.set_va(va)
        ann.update_positions(renderer)
        placed.append(Text.get_window_extent(ann, renderer).padded(2))
        if math.hypot(dx, dy) > 10:
            ax.annotate("", (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "#555555", "lw": 0.7,
                                    "shrinkA": 0, "shrinkB": 4}, zorder=4)
            segments.append((pts[i], pts[i] + np.array([dx, dy]) * to_px))


def _overlap(box: Any, others: Sequence[Any]) -> float:
    total = 0.0
    for o in others:
        w = min(box.x1, o.x1) - max(box.x0, o.x0)
        h = min(box.y1, o.y1) - max(box.y0, o.y0)
        if w > 0 and h > 0:
            total += w * h
    return total


def _box_distance(box: Any, p: np.ndarray) -> float:
    dx = max(box.x0 - p[0], 0.0, p[0] - box.x1)
    dy = max(box.y0 - p[1], 0.0, p[1] - box.y1)
    return math.hypot(dx, dy)


def _segment_hits(p0: np.ndarray, p1: np.ndarray, box: Any) -> bool:
    """Whether the segment p0-p1 crosses the box (Liang-Barsky clipping)."""
    d = np.asarray(p1, float) - np.asarray(p0, float)
    lo, hi = 0.0, 1.0
    for delta, start, low, high in ((d[0], p0[0], box.x0, box.x1), (d[1], p0[1], box.y0, box.y1)):
        if abs(delta) < 1e-12:
            if not low < start < high:
                return False
            continue
        t0, t1 = (low - start) / delta, (high - start) / delta
        lo, hi = max(lo, min(t0, t1)), min(hi, max(t0, t1))
        if lo >= hi:
            return False
    return True


# --------------------------------------------------------------------------- reliability


def reliability_diagram(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray,
    group_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    n_bins: int = 10,
    include_overall: bool = True,
    title: str | None = None,
) -> Figure:
    """Reliability diagram per group, with the bin counts underneath.

    Scores are cut into `n_bins` equal-width bins on [0, 1]; for each non-empty bin b the
    curve plots the mean predicted probability ``conf_b`` against the fraction of
    positives ``acc_b``; the diagonal is perfect calibration. Each panel's title gives
    ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` over the same bins.

    Parameters
    ----------
    y_true
        ``(n,)`` binary labels (0/1); rows with another value (e.g. -1 unknown) are left out.
    y_score
        ``(n,)`` predicted probability of the positive class, in [0, 1].
    groups
        ``(n,)`` integer group codes; -1 (unknown) rows appear only in the overall panel.
    group_names
        Names of the group codes (a sequence indexed by code, or a mapping); default the codes.
    n_bins
        Number of bins.
    include_overall
        Add a first panel with all samples.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    g = np.asarray(groups)
    if s.ndim != 1 or y.shape != s.shape or g.shape != s.shape:
        raise FmcacheError(
            "y_true, y_score and groups must be 1-D arrays of one length, got shapes "
            f"{y.shape}, {s.shape}, {g.shape}; pass the positive-class probability as y_score"
        )
    if n_bins < 2:
        raise FmcacheError(f"n_bins must be at least 2, got {n_bins}")
    keep = np.isin(y, (0, 1)) & np.isfinite(s)
    y, s, g = y[keep].astype(int), s[keep], g[keep]
    if len(s) and (s.min() < 0.0 or s.max() > 1.0):
        raise FmcacheError(
            f"y_score must hold probabilities in [0, 1], got values in [{s.min():.3g}, "
            f"{s.max():.3g}]; apply a sigmoid or softmax first"
        )
    codes = [int(c) for c in np.unique(g) if c >= 0]
    panels: list[tuple[str, np.ndarray, str]] = []
    if include_overall:
        panels.append(("overall", np.ones(len(s), bool), "#333333"))
    colors = group_colors(codes)
    for c in codes:
        panels.append((_group_name(c, group_names), g == c, colors[c]))
    if not panels:
        raise FmcacheError("no samples with a known group and a 0/1 label to draw")

    ncols = len(panels)
    width = min(max(2.6 * ncols, 4.0), 13.0)
    fig = _new_figure(width, 4.4)
    grid = fig.add_gridspec(2, ncols, height_ratios=(3.0, 1.1))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2.0
    first_top: Axes | None = None
    for j, (name, mask, color) in enumerate(panels):
        top = fig.add_subplot(grid[0, j], sharey=first_top)
        # counts keep their own scale: small groups would vanish next to the overall panel
        bottom = fig.add_subplot(grid[1, j], sharex=top)
        first_top = first_top or top
        ys, ss = y[mask], s[mask]
        # the last edge is closed so that a score of exactly 1 lands in the top bin
        idx = np.clip(np.digitize(ss, edges[1:-1], right=False), 0, n_bins - 1)
        counts = np.bincount(idx, minlength=n_bins)
        filled = counts > 0
        conf = np.bincount(idx, weights=ss, minlength=n_bins)[filled] / counts[filled]
        frac = np.bincount(idx, weights=ys, minlength=n_bins)[filled] / counts[filled]
        ece = float(np.sum(counts[filled] * np.abs(frac - conf)) / max(len(ss), 1))
        top.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=1.0,
                 label="perfectly calibrated")
        top.plot(conf, frac, marker="o", markersize=4.5, color=color, linewidth=1.6,
                 label="observed")
        # a little room so markers at 0 or 1 are not cut in half by the frame
        top.set_xlim(-0.02, 1.02)
        top.set_ylim(-0.03, 1.03)
        top.set_aspect("auto")
        top.set_title(f"{name}\nn={len(ss):,}, ECE={ece:.3f}", fontsize=10)
        top.grid(color="#eeeeee", linewidth=0.8)
        top.tick_params(labelbottom=False)
        bottom.bar(centers, counts, width=1.0 / n_bins * 0.9, color=color, alpha=0.85)
        bottom.set_xlabel("mean predicted probability", fontsize=9)
        bottom.set_xticks([0, 0.5, 1.0])
        if j == 0:
            top.set_ylabel("fraction of positives")
            bottom.set_ylabel("count", fontsize=9)
            top.legend(loc="upper left", fontsize=8, framealpha=0.9)
        else:
            top.tick_params(labelleft=False)
        for ax in (top, bottom):
            ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title or f"Reliability by group ({n_bins} equal-width bins)", fontsize=12)
    return fig


def _group_name(code: int, names: Sequence[str] | Mapping[int, str] | None) -> str:
    if names is None:
        return str(code)
    if isinstance(names, Mapping):
        return str(names.get(code, code))
    return str(names[code]) if 0 <= code < len(names) else str(code)


# --------------------------------------------------------------------------- CD diagram


def cd_diagram(
    result: NemenyiResult | pd.Series,
    cd: float | None = None,
    *,
    cliques: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
    decimals: int = 2,
) -> Figure:
    """Critical-difference diagram (Demšar 2006, Fig. 1).

    An axis of average ranks (1 = best, on the left) with each method hung from its
    rank by a leader line, the better half labelled on the left and the rest on the
    right; thick bars join methods whose average ranks differ by less than the critical
    difference (not significantly different by the Nemenyi test); a bar of length CD is
    drawn above the axis for scale.

    Parameters
    ----------
    result
        A ``statistics.nemenyi`` result, or average ranks indexed by method (then `cd`
        is required).
    cd
        Critical difference; overrides the one in `result`.
    cliques
        Groups to join by bars; default computed from the ranks and `cd`.
    title
        Title; default reports the Friedman p-value and alpha when `result` has them.
    decimals
        Decimals of the average rank shown beside each name.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from fmcache.fairness.statistics import NemenyiResult
    from fmcache.fairness.statistics import cliques as find_cliques

    if isinstance(result, NemenyiResult):
        ranks = result.ranks
        cd = result.cd if cd is None else cd
        if title is None:
            title = (f"Average rank (1 = best) over {result.n_datasets} datasets; "
                     f"Friedman p = {result.friedman.pvalue:.2g}, Nemenyi α = {result.alpha:g}")
    elif isinstance(result, pd.Series):
        ranks = result
        if cd is None:
            raise FmcacheError("pass cd= with a Series of ranks (or pass a nemenyi() result)")
    else:
        raise FmcacheError(
            f"cd_diagram takes a nemenyi() result or a Series of average ranks, "
            f"got {type(result).__name__}"
        )
    ranks = ranks.astype(float).sort_values(kind="stable")
    k = len(ranks)
    if k < 2:
        raise FmcacheError(f"a critical-difference diagram needs at least 2 methods, got {k}")
    if cliques is None:
        cliques = find_cliques(ranks, float(cd))
    names = [str(m) for m in ranks.index]
    values = ranks.to_numpy()
    n_left = math.ceil(k / 2)

    fig = _new_figure(6.0, 3.0, constrained=False)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    renderer = fig.canvas.get_renderer()
    font = 10
    texts = [ax.text(0, 0, f"{n} ({v:.{decimals}f})", fontsize=font, va="center")
             for n, v in zip(names, values)]
    widths = [t.get_window_extent(renderer).width / fig.dpi for t in texts]
    w_left = max(widths[:n_left])
    w_right = max(widths[n_left:]) if k > n_left else 0.0
    title_text = ax.text(0, 0, title or "", fontsize=10, ha="center", va="top")
    w_title = title_text.get_window_extent(renderer).width / fig.dpi if title else 0.0

    # all geometry in inches: x from the left edge, y from the top edge
    span = min(max(0.75 * (k - 1), 3.0), 7.0)
    per_rank = span / (k - 1)
    stub, margin = 0.25, 0.15
    x0 = margin + w_left + stub
    cd_end = x0 + float(cd) * per_rank
    width = max(x0 + span + stub + w_right + margin, cd_end + margin + 0.3)
    if w_title + 0.6 > width:
        shift = (w_title + 0.6 - width) / 2.0
        x0, cd_end, width = x0 + shift, cd_end + shift, w_title + 0.6

    def rx(r: float) -> float:
        return x0 + (r - 1.0) * per_rank

    y = 0.15
    if title:
        y += 0.35
    y_cd = y + 0.3
    y_axis = y_cd + 0.5
    # pack the cliques into as few rows as possible without touching bars
    rows_end: list[float] = []
    clique_rows: list[tuple[int, float, float]] = []
    for members in cliques:
        lo = min(float(ranks[m]) for m in members)
        hi = max(float(ranks[m]) for m in members)
        for r_i, end in enumerate(rows_end):
            if lo > end + 0.15 / per_rank:
                rows_end[r_i] = hi
                break
        else:
            r_i = len(rows_end)
            rows_end.append(hi)
        clique_rows.append((r_i, lo, hi))
    y_cliques = y_axis + 0.2
    clique_step = 0.13
    y_labels = y_cliques + clique_step * max(len(rows_end), 1) + 0.12
    row_h = 0.27
    n_rows = max(n_left, k - n_left)
    height = y_labels + (n_rows - 1) * row_h + 0.25

    fig.set_size_inches(width, height)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    line = {"color": "#333333", "linewidth": 1.0, "solid_capstyle": "butt"}

    if title:
        title_text.set_position((width / 2.0, 0.15))
    else:
        title_text.remove()
    # scale bar of length CD
    ax.plot([rx(1.0), cd_end], [y_cd, y_cd], color="black", linewidth=1.4)
    for xe in (rx(1.0), cd_end):
        ax.plot([xe, xe], [y_cd - 0.06, y_cd + 0.06], color="black", linewidth=1.4)
    ax.text((rx(1.0) + cd_end) / 2.0, y_cd - 0.09, f"CD = {float(cd):.{decimals}f}",
            fontsize=9, ha="center", va="bottom")
    # rank axis with ticks at whole and half ranks
    ax.plot([rx(1.0), rx(float(k))], [y_axis, y_axis], color="black", linewidth=1.2)
    for r in np.arange(1.0, k + 0.01, 0.5):
        whole = float(r).is_integer()
        ax.plot([rx(r), rx(r)], [y_axis - (0.09 if whole else 0.05), y_axis], color="black",
                linewidth=1.0)
        if whole:
            ax.text(rx(r), y_axis - 0.12, f"{int(r)}", fontsize=9, ha="center", va="bottom")
    # leader lines and names
    for i, (t, v) in enumerate(zip(texts, values)):
        if i < n_left:
            yy = y_labels + i * row_h
            xe = x0 - stub
            t.set_ha("right")
            t.set_position((xe - 0.05, yy))
        else:
            yy = y_labels + (k - 1 - i) * row_h
            xe = rx(float(k)) + stub
            t.set_ha("left")
            t.set_position((xe + 0.05, yy))
        ax.plot([rx(v), rx(v), xe], [y_axis, yy, yy], **line)
    # cliques: methods joined by a bar are not significantly different
    for r_i, lo, hi in clique_rows:
        yy = y_cliques + r_i * clique_step
        ax.plot([rx(lo) - 0.05, rx(hi) + 0.05], [yy, yy], color="black", linewidth=3.5,
                solid_capstyle="round", zorder=3)
    return fig


# --------------------------------------------------------------------------- t-SNE


def tsne_scatter(
    embedding: TSNEEmbedding | np.ndarray,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    attribute: str | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """Scatter of a 2-D t-SNE map coloured by group.

    Points are drawn in a seeded random order so that no group hides another by being
    drawn last; unknown groups (-1) are grey.

    Parameters
    ----------
    embedding
        A ``representation.tsne_embedding`` result (its groups are used), or ``(m, 2)``
        coordinates with `groups`.
    groups
        ``(m,)`` group codes; overrides the embedding's.
    group_names
        Names of the group codes (a sequence indexed by code, or a mapping).
    attribute
        Name of the sensitive attribute, for the title and legend.
    title
        Title; default "t-SNE of the features, coloured by <attribute>".
    seed
        Seeds the drawing order.

    Returns
    -------
    matplotlib.figure.Figure
    """
    coords = np.asarray(getattr(embedding, "coords", embedding), dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise FmcacheError(f"expected (m, 2) t-SNE coordinates, got shape {coords.shape}")
    if groups is None:
        groups = getattr(embedding, "groups", None)
    g = np.zeros(len(coords), int) if groups is None else np.asarray(groups).astype(int)
    if g.shape != (len(coords),):
        raise FmcacheError(f"groups has shape {g.shape}, expected ({len(coords)},)")
    codes = [int(c) for c in np.unique(g) if c >= 0]
    colors = group_colors(codes)
    color_of = np.array([colors.get(int(c), _UNKNOWN_COLOR) for c in g])
    order = np.random.default_rng(seed).permutation(len(coords))
    size = float(np.clip(8000.0 / max(len(coords), 1), 5.0, 30.0))

    from matplotlib.lines import Line2D

    fig = _new_figure(7.6, 6.0)
    ax = fig.add_subplot()
    ax.scatter(coords[order, 0], coords[order, 1], s=size, c=color_of[order], alpha=0.7,
               linewidths=0, rasterized=len(coords) > 2000)
    handles = []
    for c in [*codes, -1] if (g < 0).any() else codes:
        name = "unknown" if c < 0 else _group_name(c, group_names)
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=7,
                              color=colors.get(c, _UNKNOWN_COLOR),
                              label=f"{name} (n={int(np.sum(g == c)):,})"))
    if groups is not None:
        ax.legend(handles=handles, title=attribute, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=9, title_fontsize=10, frameon=False)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    what = f", coloured by {attribute}" if attribute else (", coloured by group" if groups is not None
                                                        else "")
    ax.set_title(title or f"t-SNE of the features{what}", fontsize=12)
    return fig
