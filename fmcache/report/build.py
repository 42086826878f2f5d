"""Gather run directories into a :class:`Report`: tables, figures and the summary.

A run is read by what it holds: probe sweeps and fine-tuning runs share the tidy metric
table of classification results; a run whose table holds Dice (``dsc``) rows, or whose
config says ``task: segmentation``, is a segmentation prompt sweep.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fmcache import __version__
from fmcache.errors import FmcacheError
from fmcache.report import figures, narrative, tables
from fmcache.report.model import Figure, Note, Report, Section, Sentence, Subhead
from fmcache.runs import BASELINE, Run, load_results, read_overlays

MAX_REPRESENTATION = 6  # (dataset, model) pairs whose features are mapped; t-SNE is the slow part
REPRESENTATION_ROWS = 1500  # features subsampled per pair


def run_kind(run: Run) -> str:
    """"probe", "finetune" or "segmentation"."""
    task = str(run.config.get("task", "")).lower()
    metrics = set(run.metrics["metric"]) if "metric" in run.metrics else set()
    if task.startswith("segment") or ("dsc" in metrics and "auc" not in metrics):
        return "segmentation"
    if task.startswith("finetun") or "finetune" in run.config:
        return "finetune"
    return "probe"


def load(runs: Sequence[str | os.PathLike[str] | Run]) -> list[tuple[Run, str]]:
    """Load each run (a path or a loaded :class:`Run`) with its kind."""
    if not runs:
        raise FmcacheError("no runs given: name at least one run directory (`fmcache results` lists them)")
    loaded = [r if isinstance(r, Run) else load_results(r) for r in runs]
    return [(r, run_kind(r)) for r in loaded]


def classification_metrics(runs: Sequence[tuple[Run, str]]) -> tuple[pd.DataFrame, list[str]]:
    """All classification rows with a ``method`` column; a (dataset, model, method) seen in
    several runs is kept from the newest run only (returned as notes)."""
    blocks, notes, seen = [], [], {}
    ordered = sorted((x for x in runs if x[1] != "segmentation"), key=lambda x: str(x[0].config.get("created", "")),
                     reverse=True)
    for run, kind in ordered:
        m = run.metrics
        if m.empty:
            continue
        m = m.assign(method=m["head"].astype(str).map(lambda h: _method(h, kind)), run=run.path.name)
        if "convention" not in m:
            m["convention"] = run.config.get("convention", "paper")
        fresh = []
        for key in m[["dataset", "model", "method"]].drop_duplicates().itertuples(index=False):
            if tuple(key) in seen:
                notes.append(f"{key.model} · {key.method} on {key.dataset} appears in runs {seen[tuple(key)]} and "
                             f"{run.path.name}; the report shows the newer, {seen[tuple(key)]}.")
            else:
                seen[tuple(key)] = run.path.name
                fresh.append(tuple(key))
        keep = pd.MultiIndex.from_frame(m[["dataset", "model", "method"]]).isin(fresh)
        blocks.append(m[keep])
    frame = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()
    return frame, notes


def _method(head: str, kind: str) -> str:
    return f"{head} (fine-tuned)" if kind == "finetune" else head


def target_gaps(runs: Sequence[tuple[Run, str]]) -> dict[str, str]:
    """The gap each method is built to shrink, as the runs recorded it."""
    return {_method(head, kind): gap for run, kind in runs for head, gap in run.target_gaps.items()}


def group_sizes(runs: Sequence[tuple[Run, str]], cls: pd.DataFrame) -> pd.DataFrame:
    """Group sizes per split from the cache, else test sizes from the metric table."""
    rows, done = [], set()
    for run, kind in runs:
        ds = run.config.get("dataset")
        for attr in run.config.get("attributes") or []:
            if (ds, attr) in done:
                continue
            entry = run.cache_entry()
            if entry is not None and attr in entry.attributes:
                s = entry.samples()
                names = entry.group_names(attr)
                for code, name in enumerate(names):
                    counts = s[s[f"sa/{attr}"] == code]["split"].value_counts()
                    rows.append({"dataset": ds, "attribute": attr, "group": name, "train": int(counts.get("train", 0)),
                                 "val": int(counts.get("val", 0)), "test": int(counts.get("test", 0)), "source": "cache"})
                done.add((ds, attr))
            elif not cls.empty:
                m = cls[(cls["dataset"] == ds) & (cls["attribute"] == attr) & (cls["metric"] == "auc")
                        & ~cls["group"].isin(["overall", "gap"])].drop_duplicates("group")
                for r in m.itertuples(index=False):
                    rows.append({"dataset": ds, "attribute": attr, "group": r.group, "train": np.nan, "val": np.nan,
                                 "test": int(r.n), "source": "test metrics"})
                done.add((ds, attr))
    return pd.DataFrame(rows, columns=["dataset", "attribute", "group", "train", "val", "test", "source"])


def _slices(cls: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    keys = cls[["dataset", "label", "attribute", "convention"]].drop_duplicates()
    return [tuple(k) for k in keys.itertuples(index=False)]


def results_sections(runs, cls: pd.DataFrame) -> tuple[list[Section], list[tuple], list[tuple]]:
    """One section per dataset, a subsection per (label, attribute[, convention])."""
    sections, heads, mits = [], [], []
    targets = target_gaps(runs)
    by_run = {(r.config.get("dataset"), r.config.get("model")): r for r, k in runs if k == "probe"}
    conventions = cls["convention"].nunique()
    for dataset in pd.unique(cls["dataset"]):
        sec = Section(tables.slug("results", dataset), f"Results: {dataset}")
        for ds, label, attr, conv in [s for s in _slices(cls) if s[0] == dataset]:
            where = f"{ds}, {label}, by {attr}" + (f" ({conv})" if conventions > 1 else "")
            sid = tables.slug(ds, label, attr, conv if conventions > 1 else "")
            sec.blocks.append(Subhead(sid, f"Label {label}, by {attr}" + (f", {conv} convention" if conventions > 1 else "")))
            head = tables.headline(cls, ds, label, attr, conv)
            sec.blocks.append(head)
            heads.append((head.frame, head.id))
            mit = tables.mitigation(cls, ds, label, attr, conv, targets)
            if mit is not None:
                sec.blocks.append(mit)
                mits.append((mit.frame, mit.id))
            sl = cls[(cls["dataset"] == ds) & (cls["label"] == label) & (cls["attribute"] == attr)
                     & (cls["convention"] == conv)]
            sec.blocks.append(figures.tradeoff(sl, id=f"f-{sid}-tradeoff", where=where))
            sec.blocks.append(_group_scatter(sl, sid, where))
            sec.blocks.append(figures.group_bars(sl, id=f"f-{sid}-groups", where=where))
            preds, names, multiclass = [], None, []
            for model in pd.unique(sl["model"]):
                run = by_run.get((ds, model))
                if run is None:
                    continue
                if run.config.get("classes"):
                    # a reliability diagram reads one probability of one positive class
                    multiclass.append(str(model))
                    continue
                arrays = run.prediction(BASELINE, label, attr)
                if arrays is None:
                    continue
                preds.append((model, _pooled_seeds(arrays)))
                names = names or (run.config.get("group_names") or {}).get(attr)
            if multiclass:
                sec.blocks.append(Note(f"{label} is multi-class ({', '.join(multiclass)}): no reliability diagram, "
                                       "which needs binary scores; AUC is macro one-vs-rest, accuracy that of the argmax class."))
            if preds:
                names = names or [str(c) for c in range(int(max(p["group"].max() for _, p in preds)) + 1)]
                sec.blocks.append(figures.reliability(preds, names, id=f"f-{sid}-reliability",
                                                      where=f"{where}, {BASELINE} probe"))
            elif not multiclass:
                sec.blocks.append(Note(f"No saved {BASELINE} predictions for {where}: no reliability diagram."))
        sections.append(sec)
    return sections, heads, mits


def _group_scatter(sl: pd.DataFrame, sid: str, where: str) -> Figure | Note:
    try:
        return figures.group_scatter(sl, id=f"f-{sid}-group-auc", where=where)
    except FmcacheError as e:
        return Note(f"No group-against-group AUC figure for {where}: {e}")


def _pooled_seeds(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predictions of several seeds as one set (each sample once per seed): the calibration of
    the selected configuration, not of one lucky or unlucky initialisation."""
    score = arrays["score"]
    if score.ndim == 1:
        return arrays
    k = score.shape[0]
    return {**arrays, "score": score.reshape(-1), "y": np.tile(arrays["y"], k), "group": np.tile(arrays["group"], k)}


def ranks_section(cls: pd.DataFrame) -> Section:
    """Critical-difference diagrams across datasets, models (baseline head) and methods, on
    each metric the paper ranks (`fairness.ranked_metrics`), in its direction."""
    from fmcache.fairness import nemenyi, ranked_metrics

    sec = Section("ranks", "Ranks across datasets")
    if cls["dataset"].nunique() < 2:
        sec.blocks.append(Note("Critical-difference diagrams need results on at least two datasets; "
                               f"this report has one ({cls['dataset'].iloc[0]})."))
        return sec
    several = cls["convention"].nunique() > 1
    for (label, attr, conv), m in cls.groupby(["label", "attribute", "convention"], sort=False):
        for info, group in ranked_metrics(conv):
            metric = info.name
            rows = m[(m["metric"] == metric) & (m["group"] == group)]
            for by, block_of, sel in (("model", "dataset", rows["method"] == BASELINE),
                                      ("method", ["dataset", "model"], slice(None))):
                r = rows[sel] if by == "model" else rows
                wide = r.pivot_table(index=block_of, columns=by, values="value").dropna(axis=1)
                if wide.shape[0] < 2 or wide.shape[1] < 2:
                    continue
                title = (f"{by}s on {info.heading}, label {label}, by {attr}" + (f", {conv} convention" if several else "")
                         + (f" ({BASELINE} probe)" if by == "model" else ""))
                tid = tables.slug("cd", label, attr, conv if several else "", by, metric)
                try:
                    res = nemenyi(wide, higher_is_better=info.higher_is_better)
                except FmcacheError as e:
                    sec.blocks.append(Note(f"No ranks for {title}: {e}"))
                    continue
                sec.blocks.append(Subhead(tid, title[0].upper() + title[1:]))
                blocks = "datasets" if by == "model" else "(dataset, model) pairs"
                sec.blocks.append(figures.cd(res, id=f"f-{tid}", what=title, blocks=blocks))
                sec.blocks.append(tables.ranks_table(res, title, f"t-{tid}", blocks))
    if not sec.blocks:
        sec.blocks.append(Note("No model or method is scored on every dataset, so nothing can be ranked."))
    return sec


def representation_section(runs) -> Section:
    """Attribute predictability and t-SNE maps from the cached features (subsampled)."""
    from fmcache.fairness import attribute_predictability, tsne_embedding

    sec = Section("representation", "Representation fairness",
                  intro="Can the sensitive attribute be read from the frozen features themselves?")
    rows, pairs, skipped = [], [], []
    for run, kind in runs:
        key = (run.config.get("dataset"), run.config.get("model"))
        if key in [p[0] for p in pairs] or key in skipped:
            continue
        entry = run.cache_entry()
        if entry is None or len(pairs) >= MAX_REPRESENTATION:
            skipped.append(key)
            continue
        pairs.append((key, entry, run))
    for (ds, model), entry, run in pairs:
        kind = run.config.get("feature_kind") or "image"
        x = entry.features(kind=kind if kind in entry.kinds else "image")
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(x), min(len(x), REPRESENTATION_ROWS), replace=False))
        x = x[idx]
        attrs = [a for a in run.config.get("attributes") or [] if a in entry.attributes]
        emb = None
        for attr in attrs:
            g = entry.groups(attr)[idx]
            try:
                r = attribute_predictability(x, g, n_splits=5, max_samples=REPRESENTATION_ROWS, seed=0)
                rows.append({"dataset": ds, "model": model, "attribute": attr, "auc": r.auc, "ci_low": r.ci_low,
                             "ci_high": r.ci_high, "n": r.n})
            except FmcacheError as e:
                sec.blocks.append(Note(f"{ds} · {model} · {attr}: {e}"))
            if emb is None:
                emb = tsne_embedding(x, g, max_points=1000, seed=0, n_jobs=1)
            names = entry.group_names(attr) or [str(c) for c in range(int(g.max()) + 1)]
            sub = dataclasses.replace(emb, groups=g[emb.index])
            sec.blocks.append(figures.tsne(sub, names, attribute=attr, id=tables.slug("f-tsne", ds, model, attr),
                                           where=f"{ds} · {model}"))
    if rows:
        sec.blocks.insert(0, tables.representation_table(pd.DataFrame(rows)))
    if skipped:
        shown = ", ".join(f"{d} · {m}" for d, m in skipped)
        sec.blocks.append(Note(f"Not mapped (cache entry not found beside the run, or more than {MAX_REPRESENTATION} "
                               f"pairs): {shown}."))
    return sec


def segmentation_section(runs) -> Section | None:
    """Dice per group per prompt type, from segmentation prompt-sweep runs, and example
    overlays of each run that kept them (runs written before that have none)."""
    blocks = [r.metrics.assign(prompt=r.metrics["prompt"] if "prompt" in r.metrics else r.metrics["head"])
              for r, k in runs if k == "segmentation"]
    if not blocks:
        return None
    seg = pd.concat(blocks, ignore_index=True)
    sec = Section("segmentation", "Segmentation: Dice per group and prompt")
    for (ds, attr), sl in seg.groupby(["dataset", "attribute"], sort=False):
        sid = tables.slug("seg", ds, attr)
        sec.blocks.append(Subhead(sid, f"{ds}, by {attr}"))
        sec.blocks.append(tables.segmentation_table(seg, ds, attr))
        volumes = _volume_runs(runs, ds)
        if volumes:
            sec.blocks.append(Note(f"{ds} is scored per volume, on its own voxels: " + "; ".join(volumes) + "."))
        sec.blocks.append(figures.group_bars(sl, id=f"f-{sid}", where=f"{ds}, by {attr}", metric="dsc", x="prompt",
                                             what="Dice"))
    for run, kind in runs:
        ov = read_overlays(run) if kind == "segmentation" else None
        if ov is None or not len(ov["group"]):
            continue
        ds, model, attr = run.config.get("dataset"), run.config.get("model"), str(ov["attribute"])
        sid = tables.slug("seg-examples", ds, model, attr)
        slice_note = ", the axial slice where each volume's truth is largest" if _scores_volumes(run) else ""
        sec.blocks.append(Subhead(sid, f"Examples: {ds} · {model}, by {attr}{slice_note}"))
        for g in dict.fromkeys(int(v) for v in ov["group"]):
            sec.blocks.append(figures.overlays(ov, g, id=tables.slug("f", sid, ov["group_names"][g]),
                                               where=f"{ds} · {model}"))
    return sec


def _scores_volumes(run: Run) -> bool:
    return str(run.config.get("items", "images")).startswith("volumes")


def _volume_runs(runs, dataset: str) -> list[str]:
    """How each segmentation run of ``dataset`` that scored volumes got them (model: how, NSD unit)."""
    out = []
    for run, kind in runs:
        cfg = run.config
        if kind == "segmentation" and cfg.get("dataset") == dataset and _scores_volumes(run):
            how = str(cfg["items"]).split("(", 1)[-1].rstrip(")")
            nsd = f", NSD within {cfg['nsd_tolerance']:g} mm" if cfg.get("nsd_tolerance") is not None else ""
            out.append(f"{cfg.get('model')} ({how}{nsd})")
    return list(dict.fromkeys(out))


def build(runs: Sequence[str | os.PathLike[str] | Run], *, representation: bool = True) -> Report:
    """Gather runs into a :class:`Report`.

    Parameters
    ----------
    runs
        Run directories (or loaded runs): probe sweeps, fine-tuning runs, segmentation sweeps.
    representation
        Map the cached features (needs the cache beside the runs; subsampled).

    Returns
    -------
    Report
    """
    loaded = load(runs)
    cls, dup_notes = classification_metrics(loaded)
    setup = Section("setup", "Setup", intro="What was measured, on which samples, and how.")
    protocol = tables.protocol_table(loaded)
    setup.blocks += [tables.runs_table(loaded), *([protocol] if protocol else []),
                     *[Note(n) for n in tables.protocol_notes(loaded)], tables.groups_table(group_sizes(loaded, cls)),
                     tables.provenance_table(loaded), *[Note(n) for n in dup_notes]]
    sections = [setup]
    heads, mits = [], []
    if not cls.empty:
        res, heads, mits = results_sections(loaded, cls)
        sections += res
        sections.append(ranks_section(cls))
    if representation:
        from threadpoolctl import threadpool_limits

        # small fits: idle BLAS/OpenMP threads spinning on a busy machine cost 30x more than the work
        with threadpool_limits(limits=1):
            sections.append(representation_section(loaded))
    seg = segmentation_section(loaded)
    if seg is not None:
        sections.append(seg)
    from fmcache.report import compare  # it reads runs through this module: imported once both exist

    if compare.has_finetuned(loaded):
        sections.append(compare.section(compare.tidy(loaded)))
    summary = Section("summary", "Summary", intro=("Generated from the tables below; each sentence links to the "
                                                   "table its numbers come from."))
    sentences: list[Sentence] = narrative.summary(heads, mits)
    summary.blocks.append(sentences)
    summary.blocks.append(Note("AUC gaps are absolute differences between groups, so their bootstrap intervals "
                               "rarely reach 0 even without a real disparity: read their width as well."))
    datasets = ", ".join(dict.fromkeys(str(r.config.get("dataset", "?")) for r, _ in loaded))
    models = dict.fromkeys(str(r.config.get("model", "?")) for r, _ in loaded)
    return Report(title="Fairness report",
                  subtitle=f"{len(loaded)} run(s); datasets: {datasets}; {len(models)} model(s); fmcache {__version__}",
                  sections=[summary, *sections])
