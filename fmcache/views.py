"""What the commands print: tables and short texts for the terminal.

The library returns data (data frames, runs, cache entries); this module is the one place
that turns them into terminal output, for the CLI and the demo.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from fmcache.runs import BASELINE

if TYPE_CHECKING:
    from fmcache.cache.reader import Cache, Embeddings

# (metric, summary group) of a run's terminal headline
HEADLINE = (("auc", "overall"), ("auc_min", "gap"), ("auc_delta", "gap"), ("eqodds", "gap"), ("dp", "gap"))
SPLITS = ["train", "val", "test"]


def make_console() -> Console:
    """The terminal's width (rich reads $COLUMNS too; piped output gets 80 columns)."""
    return Console()


def table(title: str | None = None, caption: str | None = None) -> Table:
    """An empty table in the style of every listing: light rules, so more columns fit in 80."""
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
                 pad_edge=False, title_justify="left", caption_justify="left")


def frame_table(df: pd.DataFrame, title: str | None = None, caption: str | None = None, *,
                keys: tuple[str, ...] = ()) -> Table:
    """A data frame as a rich table, every cell as text.

    Columns named in ``keys`` hold what users type or copy (names, run ids): they are never
    folded; the other columns wrap at spaces to make room.
    """
    t = table(title, caption)
    for col in df.columns:
        if col in keys:
            t.add_column(str(col), no_wrap=True, min_width=max(len(str(col)), df[col].astype(str).str.len().max() or 0))
        else:
            t.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    return t


def headline(metrics: pd.DataFrame, label: str | None = None, fmt: Callable[[pd.Series], str] | None = None) -> pd.DataFrame:
    """One row per (attribute, head) of ``label`` (default the first): test AUC, worst-group
    AUC and the main gaps, each as "value [ci_low, ci_high]" text (or ``fmt(metric row)``);
    "mean ± sd [...]" where the value is a mean over seeds. A table with a ``seed`` column
    (``Run.seed_metrics``) gets one row per seed."""
    fmt = fmt or _interval
    label = label if label is not None else metrics["label"].iloc[0]
    m = metrics[metrics["label"] == label]
    keys = ["attribute", "head", *(["seed"] if "seed" in m else [])]
    rows = []
    for key, block in m.groupby(keys, sort=False):
        row = {"label": label, **dict(zip(keys, key))}
        for metric, group in HEADLINE:
            hit = block[(block["metric"] == metric) & (block["group"] == group)]
            row[metric] = fmt(hit.iloc[0]) if len(hit) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _spread(row: pd.Series, lead: bool = True) -> str:
    """" ± sd" across seeds, or nothing for a single seed."""
    sd = row.get("sd", np.nan)
    if pd.isna(sd):
        return ""
    return f" ± {sd:.3f}" if lead else " ± " + f"{sd:.3f}".replace("0.", ".", 1)


def _interval(row: pd.Series) -> str:
    if np.isnan(row["value"]):
        return "n/a"
    text = f"{row['value']:.3f}{_spread(row)}"
    if np.isnan(row["ci_low"]):
        return text
    return f"{text} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _stacked(row: pd.Series) -> str:
    """The value over its interval, without leading zeros: five metrics fit in 80 columns."""
    if np.isnan(row["value"]) or np.isnan(row["ci_low"]):
        return _interval(row)
    short = [f"{row[k]:.3f}".replace("0.", ".", 1) if abs(row[k]) < 1 else f"{row[k]:.2f}" for k in ("ci_low", "ci_high")]
    return f"{row['value']:.3f}{_spread(row, lead=False)}\n{short[0]}–{short[1]}"


def headline_table(metrics: pd.DataFrame, label: str | None = None, title: str | None = None) -> Table:
    """:func:`headline` for the terminal, the label in the title."""
    df = headline(metrics, label, fmt=_stacked)
    seeds = int(metrics["n_seeds"].max()) if "n_seeds" in metrics and len(metrics) else 1
    if "seed" in df:
        caption = "each seed's value, and under it its 95% bootstrap interval on the test split"
    elif seeds > 1:
        caption = (f"mean ± sd over {seeds} seeds, and under it the mean of the seeds' 95% bootstrap intervals "
                   "on the test split")
    else:
        caption = "value, and under it its 95% bootstrap interval on the test split"
    t = table(title if title is not None else f"label {df['label'].iloc[0]}" if len(df) else None, caption=caption)
    keys = [k for k in ("attribute", "head", "seed") if k in df]
    for key in keys:
        t.add_column(key, no_wrap=True)
    for metric, _ in HEADLINE:  # on a narrow terminal these fold, the keys stay whole
        t.add_column(metric, justify="right", overflow="fold")
    for row in df.to_dict("records"):
        t.add_row(*[str(row[k]) for k in keys], *[row[metric] for metric, _ in HEADLINE])
    return t


def mitigation_sentences(comparison: pd.DataFrame, attribute: str, *, utility: str = "auc",
                         baseline: str = BASELINE) -> list[str]:
    """Plain-language lines, one per head, each built from the numbers of a
    :func:`fmcache.runs.compare_to_baseline` table."""
    out = []
    for r in comparison.itertuples(index=False):
        d_util = getattr(r, f"{utility}_change")
        what = f"the {attribute} {r.gap} ({r.baseline:.3f} with {baseline})"
        verb = "lower" if r.fairer == "lower" else "raise"
        if np.isnan(r.change):
            out.append(f"{r.head}: {what} could not be computed")
        elif r.reduces:
            strength = "" if r.clear else "; within the bootstrap interval, so not a clear reduction"
            out.append(f"{r.head} {verb}s {what} to {r.value:.3f}, {utility.upper()} change {d_util:+.3f}{strength}")
        else:
            out.append(f"{r.head} does not {verb} {what}: {r.value:.3f}, {utility.upper()} change {d_util:+.3f}")
    return out


def entries_table(cache: Cache) -> Table:
    """The cache's (dataset, model) entries."""
    # weights ids and dates are long: `cache info DATASET MODEL` shows them, the table stays readable at 80 columns
    df = cache.entries().drop(columns=["created", "weights"]).rename(columns={"chunks_done": "chunks"})
    return frame_table(df, title=f"cache at {cache.root}", caption="`fmcache cache info DATASET MODEL` shows an entry's provenance")


def describe_dataset(cache: Cache, dataset: str) -> str:
    """Samples per split, label prevalence and group sizes (unknown shown as its own row)."""
    info = cache.dataset_info(dataset)
    s = cache.samples(dataset)
    lines = [
        f"{dataset}: {info.get('title', '')} — {info.get('n')} samples, {s['subject'].nunique()} subjects; "
        f"split {info.get('split_policy')} (seed {info.get('split_seed')})",
        "samples per split: " + ", ".join(f"{k} {v}" for k, v in s["split"].value_counts().reindex(SPLITS).fillna(0).astype(int).items()),
    ]
    for name in info.get("label_names", []):
        y = s[f"label/{name}"]
        lines.append(f"label {name}: {int((y == 1).sum())} positive, {int((y == 0).sum())} negative, {int((y == -1).sum())} unknown")
    for attr, meta in (info.get("attributes") or {}).items():
        if f"sa/{attr}" not in s:
            continue
        names = dict(enumerate(meta["groups"])) | {-1: "unknown"}
        table = pd.crosstab(s[f"sa/{attr}"].map(names), s["split"], rownames=["group"], colnames=["split"]).reindex(
            columns=SPLITS, fill_value=0
        )
        lines.append(f"{attr} ({meta['rule']}):")
        lines.extend("  " + row for row in table.to_string().splitlines())
    models = cache.models(dataset)
    lines.append("models: " + (", ".join(models) if models else "none yet"))
    return "\n".join(lines)


# --- the catalogue: `fmcache models` and `fmcache datasets` ------------------------------


def models_table(specs) -> Table:
    """The listed models; weights sources and normalisation are in each one's detail view."""
    t = table("fmcache models", caption="`fmcache models NAME` shows a model's weights, licence and preprocessing")
    t.add_column("key", no_wrap=True)
    for col in ("model", "input", "features", "text"):
        t.add_column(col)
    for m in specs:
        p = m.preprocess
        t.add_row(m.key, m.title, f"{p.size}px", ", ".join(f"{k} {d}" for k, d in m.dims.items()),
                  str(m.text_dim) if m.has_text else "no")
    return t


def segmentation_models_table(specs, volume_specs=()) -> Table:
    """The segmentation models whose image features `embed` caches for `fmcache segment`: the
    2D SAM family (volumes slice by slice) and the 3D models."""
    t = table("segmentation models", caption="`fmcache embed -m KEY` caches their image features; "
              "`fmcache segment` decodes prompts from them. 2D models read a volume's foreground slices")
    t.add_column("key", no_wrap=True)
    for col in ("model", "encoder", "input", "prompts"):
        t.add_column(col)
    for s in specs:
        t.add_row(s.key, s.title, s.arch, f"{s.input.size}px, {s.input.resize}, {s.input.normalise}", "all")
    for s in volume_specs:
        t.add_row(s.key, s.title, s.arch, _volume_input(s.input), ", ".join(s.prompts))
    return t


def _volume_input(rule) -> str:
    size = " x ".join(map(str, rule.size))
    where = f"{rule.spacing[0]:g} mm, around each class" if rule.spacing else "whole volume resized"
    return f"3D {size} (X x Y x Z), {where}, {rule.intensity}"


def volume_model_detail(s, weights_folder: str) -> list[str]:
    """Everything the registry knows of one 3D segmentation model, as lines of text."""
    blocks = "one block per class present" if s.input.per_class else "one block per volume"
    return [
        f"{s.key}: {s.title} (3D, {s.family} family, {s.arch})",
        *_weights_lines(s, weights_folder),
        f"input: {_volume_input(s.input)}",
        f"features cached: {blocks}, with its geometry (spacing, orientation, crop box) to map predictions back",
        f"prompt types: {', '.join(s.prompts)}",
        *_licence_lines(s),
    ]


def segmentation_model_detail(s, weights_folder: str) -> list[str]:
    """Everything the registry knows of one segmentation model, as lines of text."""
    rule = s.input
    grid = rule.size // s.feature_stride
    return [
        f"{s.key}: {s.title} (SAM family, {s.arch} encoder)",
        *_weights_lines(s, weights_folder),
        f"input: {rule.size}px, resize {rule.resize} ({rule.interpolation}), normalise {rule.normalise}",
        f"features cached: features (256 x {grid} x {grid} per image), pooled (256-d), sizes (original and resized)",
        *_licence_lines(s),
    ]


def _weights_lines(m, weights_folder: str) -> list[str]:
    if m.weights.startswith("package:"):
        where = "installed with that Python package (no download)"
    elif m.weights.startswith("hf-hub:"):
        where = "from the Hugging Face cache (downloaded once where the hub is reachable; HF_HUB_OFFLINE=1 reads the cache only)"
    else:
        where = f"local copies: {weights_folder} ($FMCACHE_WEIGHTS)"
    return [f"weights: {m.weights}", f"  {where}, or --weights PATH"]


def _licence_lines(m) -> list[str]:
    lines = []
    if m.license:
        lines.append(f"licence: {m.license}")
    if m.notes:
        lines.append(f"notes: {m.notes}")
    return lines


def model_detail(m, weights_folder: str) -> list[str]:
    """Everything the registry knows of one model, as lines of text."""
    p = m.preprocess
    return [
        f"{m.key}: {m.title} (family {m.family})",
        *_weights_lines(m, weights_folder),
        f"input: resize {p.resize}, centre crop {p.size}px, {p.interpolation}",
        f"normalisation: mean {_numbers(p.mean)}, std {_numbers(p.std)}",
        "features cached: " + ", ".join(f"{k} ({d}-d)" for k, d in m.dims.items()),
        f"text tower: {f'yes, {m.text_dim}-d (zero-shot and CLIP-Adapt heads)' if m.has_text else 'no'}",
        *_licence_lines(m),
    ]


def _numbers(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def datasets_table(specs) -> Table:
    """The dataset adapters; layouts, download sources and options are in each one's detail view."""
    t = table("fmcache datasets", caption="`fmcache datasets NAME` shows where to get it, its layout and options;\n"
              "`fmcache datasets check NAME --data PATH` checks your copy")
    t.add_column("key", no_wrap=True)
    for col in ("dataset", "modality", "labels", "attributes"):
        t.add_column(col)
    for s in specs:
        t.add_row(s.key, s.title, s.modality, _labels_text(s), ", ".join(s.attributes) or "(yours)")
    return t


def _labels_text(s, yours: str = "(yours)") -> str:
    """A segmentation dataset's ground truth is its mask classes, a classifier's its labels."""
    if s.mask_classes:
        return "mask " + ", ".join(s.mask_classes)
    return ", ".join(s.labels) or yours


def dataset_detail(s, more_options: dict[str, str]) -> Group:
    """One dataset: where to get it, the layout to pass as --data, its groups and options."""
    out = Text()

    def heading(title: str, note: str = "") -> None:
        out.append(f"\n{title}", style="bold")
        out.append(f"{note}\n")

    out.append(s.key, style="bold")
    truth = _labels_text(s) if s.mask_classes else f"labels {', '.join(s.labels) or 'from your options'}"
    out.append(f": {s.title} ({s.modality}; task {s.task}; {truth})\n")
    heading("Where to get it")
    out.append(f"{s.obtain}\n")
    heading("Expected layout", " (pass its root as --data)")
    out.append(_reflow_prose(s.layout))
    out.rstrip()
    parts: list[Text | Table] = [out]
    if s.attributes:
        parts += [Text("\nSensitive attributes", style="bold"),
                  _hanging({a: f"groups {', '.join(r.groups)}; {r.description}" + (f" [{r.source}]" if r.source else "")
                            for a, r in s.attributes.items()})]
    parts += [Text("\nOptions", style="bold") + Text(" (-o KEY=VALUE)"), _hanging({**s.options, **more_options})]
    return Group(*parts)


def _hanging(items: dict[str, str]) -> Table:
    """Key and text side by side, the text wrapping under itself, not under the key."""
    grid = Table.grid(padding=(0, 2), pad_edge=True)
    grid.add_column(no_wrap=True)
    grid.add_column()
    for k, v in items.items():
        grid.add_row(Text(k), Text(v))
    return grid


def _reflow_prose(text: str) -> str:
    """Folder trees and examples (indented lines, ``<data>/...``) as written; runs of prose
    lines joined (up to a line ending in a colon), so that the terminal wraps them evenly."""
    out: list[str] = []
    prose: list[str] = []
    for line in text.rstrip().splitlines():
        if line.startswith((" ", "<")) or not line.strip():
            if prose:
                out.append(" ".join(prose))
                prose = []
            out.append(line)
        else:
            prose.append(line.strip())
            if line.rstrip().endswith(":"):  # it introduces the block below it
                out.append(" ".join(prose))
                prose = []
    if prose:
        out.append(" ".join(prose))
    return "\n".join(out) + "\n"


# provenance keys in the order `cache info DATASET MODEL` shows them, with their row names;
# keys not listed follow under their own names, so nothing recorded goes unshown
_ENTRY_ROWS = (
    ("model", "model"), ("model_title", "title"), ("family", "family"),
    ("weights_id", "weights"), ("weights_sha256", "weights sha256"),
    ("preprocess", "preprocessing"), ("dims", "features"), ("text_dim", "text features"),
    ("logit_scale", "logit scale"), ("volume", "volumes"), ("dtype", "stored as"),
    ("compute_dtype", "computed in"), ("n", "rows"), ("chunk_rows", "rows per chunk"),
    ("state", "state"), ("batch_size", "batch size"), ("created", "created"), ("completed", "completed"),
    ("last_run", "last run"), ("row_fingerprint", "rows fingerprint"), ("fmcache_version", "fmcache version"),
    ("format", "cache format"), ("generation", "generation"),
)
# shown within another row
_FOLDED = {"feature_kinds"}
# facts of some models only (a text tower): nothing to say when absent
_ONLY_IF_SET = {"text_dim", "logit_scale"}


def entry_table(emb: Embeddings) -> Table:
    """A cache entry's provenance as a two-column table that reads at 80 columns: the names
    never wrap, long values fold onto further lines."""
    prov = emb.provenance
    t = table(f"{emb.dataset}/{emb.model}", "`--json` prints the provenance as recorded")
    t.show_header = False
    t.add_column("what", no_wrap=True, style="bold")
    t.add_column("value", overflow="fold")
    rows = [(label, key) for key, label in _ENTRY_ROWS if key in prov]
    rows += [(key.replace("_", " "), key) for key in prov if key not in dict(_ENTRY_ROWS) and key not in _FOLDED]
    for label, key in rows:
        if prov[key] is None and key in _ONLY_IF_SET:
            continue
        t.add_row(label, _provenance_value(key, prov))
        if key == "chunk_rows":
            progress = emb.chunks_done()
            t.add_row("chunks done", "damaged: see `fmcache cache verify`" if progress is None else f"{progress[0]}/{progress[1]}")
    prompts = emb.prompt_sets()
    if prompts:
        t.add_row("text prototypes", ", ".join(prompts))
    return t


def _provenance_value(key: str, prov: dict[str, Any]) -> str:
    v = prov[key]
    if key == "preprocess" and isinstance(v, dict) and {"size", "resize"} <= set(v):
        rest = {k: x for k, x in v.items() if k not in ("size", "resize", "interpolation", "mean", "std")}
        text = f"resize {v['resize']}, centre crop {v['size']} px, {v.get('interpolation', '?')}"
        if "mean" in v:
            text += f"; mean {_numbers(v['mean'])}, std {_numbers(v.get('std'))}"
        return text + (f"; {_plain(rest)}" if rest else "")
    if key == "dims" and isinstance(v, dict):
        return ", ".join(f"{kind} {dim}" for kind, dim in v.items())
    if key == "last_run" and isinstance(v, dict) and {"encoded", "seconds"} <= set(v):
        return f"{v['encoded']} rows encoded in {v['seconds']} s on {v.get('device', '?')}"
    if v is None:
        return {"volume": "none: 2D images", "weights_sha256": "none recorded"}.get(key, "none")
    return _plain(v)


def _plain(v: Any) -> str:
    """A recorded value as text: dicts as "key value" pairs, lists comma-separated."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_plain(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v)
    return v if isinstance(v, str) else json.dumps(v, default=str)


def protocols_view() -> Group:
    """Every switch's value under each protocol side by side, then where each value comes from."""
    from fmcache.protocols import NOT_REPRODUCED, PROTOCOLS, REFERENCE_COMMIT, SWITCHES

    t = table("fmcache protocols", caption="--protocol NAME on `embed` and `probe`; each switch is also an option of "
              "its own\nstage: embed = part of the cache entry; data = a dataset option (-o); probe = recorded in the run")
    t.add_column("switch", no_wrap=True)
    t.add_column("stage")
    for p in PROTOCOLS:
        t.add_column(p)
    for s in SWITCHES.values():
        t.add_row(s.name, s.stage, *(s.value[p] for p in PROTOCOLS))
    cites = {s.name: f"{s.meaning}.\n" + "\n".join(f"{p}: {s.value[p]} - {s.cite[p]}" for p in PROTOCOLS)
             for s in SWITCHES.values()}
    return Group(
        t,
        Text("\nWhat each switch does, and where each value comes from", style="bold")
        + Text(f" (code cited as paths in {REFERENCE_COMMIT})"),
        _hanging(cites),
        Text("\nWhat no switch reproduces", style="bold"),
        _hanging({"-": line for line in NOT_REPRODUCED}),
    )


def segmentation_table(metrics: pd.DataFrame, title: str) -> Table:
    """A prompt sweep's Dice per (attribute, prompt): overall, per group, and the Dice gap
    (and the NSD overall and its gap, in a run that measured it)."""
    t = table(title, caption="value, and under it its 95% bootstrap interval")
    for key in ("attribute", "prompt"):
        t.add_column(key, no_wrap=True)
    groups = [g for g in pd.unique(metrics["group"]) if g not in ("overall", "gap")]
    columns = [("dsc", "overall", "dsc"), *[("dsc", g, f"dsc {g}") for g in groups], ("dsc_delta", "gap", "dsc_delta")]
    if (metrics["metric"] == "nsd").any():
        columns += [("nsd", "overall", "nsd"), ("nsd_delta", "gap", "nsd_delta")]
    for *_, heading in columns:
        t.add_column(heading, justify="right", overflow="fold")
    for (attr, prompt), block in metrics.groupby(["attribute", "prompt"], sort=False):
        cells = []
        for metric, group, _ in columns:
            hit = block[(block["metric"] == metric) & (block["group"] == group)]
            cells.append(_stacked(hit.iloc[0]) if len(hit) else "")
        t.add_row(str(attr), str(prompt), *cells)
    return t
