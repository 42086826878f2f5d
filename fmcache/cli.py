"""The `fmcache` command. Each command is a thin wrapper over a library call."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

# JAX would otherwise reserve most of a GPU's memory, leaving none to the torch stage
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from fmcache.errors import FmcacheError  # noqa: E402

app = typer.Typer(
    name="fmcache",
    help=(
        "Is a medical-imaging foundation model fair? Embed each image once into a cache, then "
        "train probes and measure group gaps from the cache.\n\n"
        "Start with `fmcache demo` (offline, about a minute). Then: `fmcache datasets` and "
        "`fmcache models` to see what exists; `fmcache embed --model M --dataset D --data PATH` "
        "to cache a dataset; `fmcache probe -d D -m M --sweep all` to train every fairness head "
        "on the cache and test it; `fmcache report RUN --out study.html` to share the results."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect and look after the cache: `ls` lists entries, `info` shows one, `verify` checks (and repairs), `rm` removes.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

RootOpt = Annotated[
    Optional[str],
    typer.Option("--root", help="Cache folder or fsspec URL (default: $FMCACHE_HOME, else ~/.cache/fmcache).", show_default=False),
]
RunsOpt = Annotated[
    Optional[str],
    typer.Option("--runs", help="Folder (or fsspec URL) of the runs (default: <root>/runs); use it when the cache is read-only.",
                 show_default=False),
]


def _options(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise FmcacheError(f"dataset option {v!r} is not KEY=VALUE (e.g. -o uncertain=one)")
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


@app.command()
def embed(
    model: Annotated[str, typer.Option("--model", "-m", help="Model key (see `fmcache models`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset key (see `fmcache datasets`).")],
    data: Annotated[
        Optional[str],
        typer.Option("--data", help="Root of your copy of the release (default $FMCACHE_DATA/<dataset>); for `csv`, the CSV file.", show_default=False),
    ] = None,
    option: Annotated[
        Optional[list[str]],
        typer.Option("--option", "-o", help="Dataset option KEY=VALUE, repeatable (see `fmcache datasets DATASET`).", show_default=False),
    ] = None,
    dataset_config: Annotated[
        Optional[Path], typer.Option("--dataset-config", help="YAML file of dataset options (the csv adapter's rules).", show_default=False)
    ] = None,
    root: RootOpt = None,
    weights: Annotated[
        Optional[str], typer.Option("--weights", help="Local checkpoint file/folder instead of the model's default source.", show_default=False)
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", "-b", min=1, help="Images per forward pass (default: what the entry was made with, "
                     "else 64). Part of the entry's identity: it can change the last bits of a feature.", show_default=False),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    num_workers: Annotated[
        Optional[int], typer.Option("--num-workers", min=0, help="Image-decoding worker processes (default: cores - 1).", show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the patient-level train/val/test split.")] = 0,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per cache chunk: the unit that is written, marked done and resumed.")] = 256,
    slices: Annotated[int, typer.Option("--slices", min=1, help="3D datasets: slices each volume is resampled to (2.5D).")] = 32,
    pool: Annotated[str, typer.Option("--pool", help="3D datasets: volume feature from its slices' features, max | mean.")] = "max",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cache entry made with other weights, preprocessing or data.")] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="If another process is writing this entry, stop (naming it) instead of waiting.")
    ] = False,
    trust_code: Annotated[
        bool,
        typer.Option("--trust-code", help="Also load --weights files whose loading runs code they carry (TorchScript "
                     "archives, e.g. OpenAI's CLIP .pt; the clip model's default hub safetensors need no flag). Refused "
                     "by default, as such a file can run anything: only for files from a source you trust."),
    ] = False,
) -> None:
    """Encode every image of a dataset with a frozen model into the cache (resumable).

    Rerunning after an interruption continues where it stopped; rerunning a finished entry is
    a no-op that writes nothing. A request whose weights, preprocessing, batch size or samples
    differ from the cached entry is refused unless --overwrite. One process writes an entry at a
    time: a second one waits for the first (or, with --no-wait, stops), and --overwrite never
    deletes an entry that another process is writing.

    Example: fmcache embed --model dinov2 --dataset ham10000 --data ~/data/HAM10000
    """
    from fmcache.datasets import load_dataset
    from fmcache.embed.encode import embed as run_embed

    opts = _options(option)
    if dataset_config is not None:
        opts["config"] = str(dataset_config)
    ds = load_dataset(dataset, data, options=opts, seed=seed)
    summary = run_embed(ds, model, root=root, weights=weights, batch_size=batch_size, device=device,
                        num_workers=num_workers, overwrite=overwrite, chunk_rows=chunk_rows, slices=slices, pool=pool,
                        wait=not no_wait, on_wait=_say, on_repair=_say, trust_code=trust_code)
    typer.echo(summary.line())


def _say(line: str) -> None:
    typer.echo(line, err=True)


def _csv(values: list[str] | None) -> list[str] | None:
    out = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    return out or None


@app.command()
def probe(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name in the cache (`fmcache cache ls`).")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Cached model(s): repeat or comma-separate; `all` = every cached model of the dataset.")],
    heads: Annotated[
        Optional[list[str]],
        typer.Option("--heads", help="Head types, comma-separated: linear, resample, groupdro, laftr, laftr_eqodd, laftr_eqopp, "
                     "fairpenalty, fairpenalty_eo, domain_ind, zeroshot, clip_adapt.", show_default=False),
    ] = None,
    sweep: Annotated[
        str, typer.Option("--sweep", help="default: the benchmark's hyperparameters (lr 2.5e-4, wd 0.05, 100 epochs), linear unless "
                          "--heads; all: every head type (or --heads) over its grid; or a YAML file of grids.")
    ] = "default",
    attributes: Annotated[Optional[list[str]], typer.Option("--attributes", "-a", help="Sensitive attributes (default: all).", show_default=False)] = None,
    labels: Annotated[Optional[list[str]], typer.Option("--labels", "-l", help="Labels (default: all).", show_default=False)] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Initialisation seeds per grid point.")] = 1,
    criterion: Annotated[str, typer.Option("--criterion", help="Validation selection: auc | worst_group_auc | tradeoff (auc - auc_delta).")] = "auc",
    threshold: Annotated[str, typer.Option("--threshold", help="A number, or val / val:f1 / val:sensitivity:0.9 (chosen on validation).")] = "val",
    convention: Annotated[str, typer.Option("--convention", help="Metric convention: paper | fairmedfm | fairlearn.")] = "paper",
    n_boot: Annotated[int, typer.Option("--n-boot", min=0, help="Bootstrap resamples for the test intervals.")] = 1000,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs (default 100, or the sweep file's).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Minibatch size (default 128).", show_default=False)] = None,
    feature_kind: Annotated[str, typer.Option("--feature-kind", help="auto (projected if the model has it) | image | image_proj.")] = "auto",
    volume: Annotated[
        str, typer.Option("--volume", help="3D datasets: max | mean of per-slice predictions (heads trained on slices), "
                          "or features: heads trained on the pooled volume feature.")
    ] = "max",
    seed: Annotated[int, typer.Option("--seed", help="Seed of minibatch order and bootstrap resamples.")] = 0,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Train fairness heads on cached embeddings, select on validation, evaluate on test.

    Every head of one type is trained at once (JAX, vmapped). Heads are chosen per label and
    attribute on the validation split by --criterion, then evaluated on the test split with
    bootstrap intervals. Each (dataset, model) writes a run directory under <root>/runs.
    Multi-class labels are not supported yet (binary and multi-label are).

    Example: fmcache probe -d chexpert -m medclip --sweep all --attributes sex,age
    """
    import fmcache
    from fmcache.probe import SweepConfig, load_sweep, run_sweep
    from fmcache.views import frame_table, headline, make_console

    grids, settings = load_sweep(sweep, _csv(heads))
    models = _csv(model) or []
    if models == ["all"]:
        models = fmcache.open_cache(root).models(dataset)
    console = make_console()
    for m in models:
        cfg = SweepConfig(
            dataset=dataset, model=m, heads=grids, labels=_csv(labels), attributes=_csv(attributes), seeds=seeds,
            criterion=criterion, threshold=float(threshold) if _is_number(threshold) else threshold,
            convention=convention, n_boot=n_boot, epochs=epochs or settings.get("epochs", 100),
            batch_size=batch_size or settings.get("batch_size", 128), kind=feature_kind, volume=volume, seed=seed,
        )
        with console.status(f"{dataset}/{m}: loading") as status:
            run = run_sweep(cfg, root=root, runs=runs, on_head=lambda h, k: status.update(f"{dataset}/{m}: training {k} {h} heads"))
        console.print(frame_table(headline(run.metrics), f"{dataset}/{m} — test metrics of the heads chosen by val {criterion}"))
        for h, why in run.config["skipped"].items():
            console.print(f"skipped {h}: {why}", markup=False)
        console.print(f"run: {run.path}", markup=False)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@app.command()
def results(
    run: Annotated[Optional[str], typer.Argument(help="Run name (from the list) or path; omit to list runs.", show_default=False)] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write the run's full metric table to this CSV file.", show_default=False)] = None,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """List sweep runs, or show one run's headline table (and export its metrics as CSV).

    From Python: fmcache.load_results(path) returns .metrics, .sweep, .predictions, .config.
    """
    from fmcache.runs import list_runs, load_results, run_path, runs_dir
    from fmcache.views import frame_table, headline, make_console

    console = make_console()
    if run is None:
        listed = list_runs(root, runs)
        if listed.empty:
            typer.echo(f"no runs under {runs_dir(root, runs)} yet: `fmcache probe` makes them")
            return
        console.print(frame_table(listed.drop(columns=["path"]), f"runs under {runs_dir(root, runs)}"))
        return
    r = load_results(run_path(run, root, runs))
    for label in r.metrics["label"].unique():
        console.print(frame_table(headline(r.metrics, label), f"{r.path.name} — label {label}"))
    if csv is not None:
        r.metrics.to_csv(csv, index=False)
        typer.echo(f"wrote {len(r.metrics)} rows to {csv}")


@app.command()
def report(
    names: Annotated[list[str], typer.Argument(metavar="RUNS", help="Run names (see `fmcache results`) or run directories.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("study.html"),
    no_representation: Annotated[
        bool, typer.Option("--no-representation", help="Skip the t-SNE maps and attribute probes on the cached features.")
    ] = False,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Write one self-contained HTML report (no network needed to view it) from one or more runs.

    Setup, headline tables with bootstrap intervals, trade-off, per-group and calibration
    figures, ranks across datasets, representation fairness, and a summary generated from the
    tables. Tables sort on click and download as CSV.

    Example: fmcache report 20261127-101500-synthetic-medclip 20261127-103000-chexpert-medclip --out study.html
    """
    from fmcache.report import build_report
    from fmcache.runs import run_path

    path = build_report([run_path(r, root, runs) for r in names], out, representation=not no_representation)
    typer.echo(f"report: {path.resolve()}")


@app.command()
def demo(
    root: RootOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to embed with.")] = "efficientnet_lite0",
    size: Annotated[int, typer.Option("--size", min=20, help="Number of synthetic images.")] = 600,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild cache entries that differ.")] = False,
) -> None:
    """Run the whole pipeline offline on the synthetic dataset with a planted disparity.

    Generates chest-X-ray-like images whose lesion is harder to see in one group, embeds them
    with real pretrained weights that ship with the installation, shows what the cache holds,
    trains every head type on the cached features, says which heads shrink the planted gap
    and at what cost, and writes the HTML report.
    """
    from fmcache.demo import run_demo

    run_demo(root=root, model=model, size=size, overwrite=overwrite)


@app.command()
def models() -> None:
    """List the foundation models: family, weights source, input, normalisation, feature dims."""
    from rich.table import Table

    from fmcache.embed.models import MODELS
    from fmcache.embed.weights import weights_dir
    from fmcache.views import make_console

    t = Table(title="fmcache models", caption=f"local checkpoints go in {weights_dir()} ($FMCACHE_WEIGHTS) or pass --weights PATH")
    t.add_column("key", no_wrap=True)
    for col in ("model", "family", "weights", "input", "normalisation (mean / std)", "features", "text"):
        t.add_column(col, overflow="fold")
    for m in MODELS.values():
        if m.hidden:
            continue
        p = m.preprocess
        t.add_row(
            m.key, m.title, m.family, m.weights, f"{p.resize}->{p.size}px {p.interpolation}",
            f"{_fmt(p.mean)} / {_fmt(p.std)}", ", ".join(f"{k} {d}" for k, d in m.dims.items()),
            f"yes ({m.text_dim})" if m.has_text else "no",
        )
    make_console().print(t)


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


@app.command()
def datasets(
    name: Annotated[
        Optional[str],
        typer.Argument(help="A dataset to show (layout, options, rules); or `check` to validate your copy of DATASET.", show_default=False),
    ] = None,
    dataset: Annotated[Optional[str], typer.Argument(help="With `check`: the dataset key.", show_default=False)] = None,
    data: Annotated[
        Optional[str],
        typer.Option("--data", "--path", help="With `check`: root of your copy of the release (default $FMCACHE_DATA/<dataset>).", show_default=False),
    ] = None,
    option: Annotated[
        Optional[list[str]], typer.Option("--option", "-o", help="With `check`: dataset option KEY=VALUE, repeatable.", show_default=False)
    ] = None,
) -> None:
    """List the datasets, show one (`fmcache datasets NAME`), or check your copy of one.

    `fmcache datasets check DATASET --data PATH` reads your copy as `embed` would, checks that
    every image file is there, prints rows, subjects, label and group counts, and exits
    non-zero naming each problem and its fix.
    """
    from rich.table import Table

    from fmcache.datasets import DATASETS, get_dataset
    from fmcache.datasets.samples import RESERVED_OPTIONS
    from fmcache.views import make_console

    console = make_console()
    if name == "check":
        if dataset is None:
            raise FmcacheError("`fmcache datasets check` needs a dataset key: fmcache datasets check DATASET --data PATH")
        _check(dataset, data, _options(option))
        return
    if dataset is not None or data is not None or option:
        raise FmcacheError(f"`fmcache datasets {name or ''}` takes no further arguments; to validate a copy: fmcache datasets check DATASET --data PATH")
    if name is None:
        t = Table(title="fmcache datasets", caption="`fmcache datasets NAME` shows the expected layout and options; `fmcache datasets check NAME --data PATH` checks your copy")
        for col in ("key", "dataset", "modality", "labels", "sensitive attributes", "where to get it"):
            t.add_column(col, overflow="fold")
        for s in DATASETS.values():
            t.add_row(s.key, s.title, s.modality, ", ".join(s.labels), ", ".join(s.attributes) or "(from your rules)", s.obtain)
        console.print(t)
        return
    s = get_dataset(name)
    console.print(f"[bold]{s.key}[/bold]: {s.title} ({s.modality}; task {s.task}; labels {', '.join(s.labels)})")
    console.print(f"\n[bold]Where to get it[/bold]\n{s.obtain}")
    console.print("\n[bold]Expected layout[/bold] (pass its root as --data)")
    console.print(s.layout, markup=False, highlight=False)
    if s.attributes:
        console.print("\n[bold]Sensitive attributes[/bold]")
        for a, r in s.attributes.items():
            console.print(f"  {a}: groups {list(r.groups)}; {r.description}" + (f" [{r.source}]" if r.source else ""), markup=False)
    console.print("\n[bold]Options[/bold] (-o KEY=VALUE)")
    for k, h in {**s.options, **RESERVED_OPTIONS}.items():
        console.print(f"  {k}: {h}", markup=False)


def _check(dataset: str, data: str | None, options: dict[str, str]) -> None:
    from fmcache.datasets.check import check_dataset

    report = check_dataset(dataset, data, options)
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


@cache_app.command("ls")
def cache_ls(root: RootOpt = None) -> None:
    """List every (dataset, model) entry with its state, size and weights."""
    import fmcache
    from fmcache.views import entries_table, make_console

    c = fmcache.open_cache(root)
    if not any(c.models(d) for d in c.datasets()):
        typer.echo(f"the cache at {c.root} holds no embeddings yet (datasets: {', '.join(c.datasets()) or 'none'})")
        return
    make_console().print(entries_table(c))


@cache_app.command("info")
def cache_info(
    dataset: Annotated[str, typer.Argument(help="Dataset name in the cache.")],
    model: Annotated[Optional[str], typer.Argument(help="Model key; omit to describe the dataset.", show_default=False)] = None,
    root: RootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what is recorded, as JSON: the entry's provenance, "
                                          "or without MODEL the dataset's attributes.")] = False,
) -> None:
    """Show a cached dataset (samples, splits, groups) or a model entry's provenance."""
    import json

    import fmcache
    from fmcache.views import describe_dataset, entry_table, make_console

    c = fmcache.open_cache(root)
    if model is None:
        typer.echo(json.dumps(c.dataset_info(dataset), indent=2, default=str) if as_json else describe_dataset(c, dataset))
        return
    e = c.embeddings(dataset, model, allow_partial=True)
    if as_json:
        typer.echo(json.dumps(e.provenance, indent=2, default=str))
        return
    make_console().print(entry_table(e))


@cache_app.command("verify")
def cache_verify(
    dataset: Annotated[Optional[str], typer.Argument(help="Only this dataset.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Argument(help="Only this model's entry.", show_default=False)] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Mark what is damaged for `fmcache embed` to encode again.")] = False,
    root: RootOpt = None,
) -> None:
    """Check every stored chunk, checksum, samples table and provenance; exit 1 if anything is damaged.

    With --repair, damaged chunks are marked undone (the next `fmcache embed` encodes only
    those), a damaged samples table is marked to be written again, and an entry whose metadata
    is unreadable is removed to be built again. Entries another process is writing are left alone.
    """
    from fmcache.cache.store import resolve_root
    from fmcache.cache.verify import repair as do_repair
    from fmcache.cache.verify import verify

    root_s = resolve_root(root)
    findings = verify(root_s, dataset, model)
    for f in findings:
        typer.echo(f.line())
    if not findings:
        typer.echo(f"no problems found in the cache at {root_s}")
        return
    if not repair:
        typer.echo(f"{len(findings)} problem(s); rerun with --repair, then `fmcache embed` each entry named")
        raise typer.Exit(1)
    for line in do_repair(root_s, findings):
        typer.echo(line)
    typer.echo("now rerun `fmcache embed` for each entry named to restore it")


@cache_app.command("rm")
def cache_rm(
    dataset: Annotated[str, typer.Argument(help="Dataset name in the cache.")],
    model: Annotated[Optional[str], typer.Argument(help="Model key; omit to remove the dataset with all its entries.", show_default=False)] = None,
    root: RootOpt = None,
) -> None:
    """Remove a cache entry (or a dataset with all its entries); refused while another process writes it."""
    from fmcache.cache.store import resolve_root
    from fmcache.cache.verify import remove

    root_s = resolve_root(root)
    remove(root_s, dataset, model)
    typer.echo(f"removed {dataset}{'/' + model if model else ''} from the cache at {root_s}")


def main() -> None:
    """Console entry point: one line on a user error, non-zero exit, no traceback."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) comes back as a return value here
            sys.exit(code)
    except FmcacheError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume (finished chunks are kept)", err=True)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
