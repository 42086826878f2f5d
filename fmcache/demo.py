"""`fmcache demo`: the whole pipeline, offline, on the synthetic dataset.

The demo is a list of steps sharing one context; later stages (probes, fairness metrics,
the report) add steps rather than rewriting it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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


def _step_report(ctx: DemoContext) -> None:
    from fmcache.report import build_report

    run = ctx.facts["run"]
    with ctx.console.status("writing the report"):
        path = build_report([run.path], run.path.with_name(f"{run.path.name}.html"))
    ctx.console.print(f"report: {path}  (open it in a browser; it needs no network)", markup=False)
    ctx.facts["report"] = path


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("embed the synthetic dataset", _step_embed),
    ("show what the cache holds", _step_show_cache),
    ("sweep every head type on the cached features", _step_sweep),
    ("which heads reduce the planted disparity, and at what cost", _step_verdict),
    ("write the report", _step_report),
]


def run_demo(*, root: str | None, model: str, size: int, overwrite: bool) -> DemoContext:
    from fmcache.cache.store import resolve_root

    ctx = DemoContext(root=resolve_root(root), model=model, size=size, overwrite=overwrite, console=make_console())
    t0 = time.perf_counter()
    for i, (title, step) in enumerate(STEPS, 1):
        ctx.console.rule(f"[bold]{i}/{len(STEPS)} {title}")
        step(ctx)
    ctx.console.print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; cache: {ctx.root}")
    return ctx
