"""The `fmcache` command. Each command is a thin wrapper over a library call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcache.console import make_console
from fmcache.errors import FmcacheError

app = typer.Typer(
    name="fmcache",
    help=(
        "Is a medical-imaging foundation model fair? Embed each image once into a cache, then "
        "train probes and measure group gaps from the cache.\n\n"
        "Start with `fmcache demo` (offline, about a minute). Then: `fmcache datasets` and "
        "`fmcache models` to see what exists, `fmcache embed --model M --dataset D --data PATH` "
        "to cache a dataset, `fmcache cache ls` to see what is cached."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect the cache: `ls` lists entries, `info` shows one.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

RootOpt = Annotated[
    Optional[str],
    typer.Option("--root", help="Cache folder or fsspec URL (default: $FMCACHE_HOME, else ~/.cache/fmcache).", show_default=False),
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
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    num_workers: Annotated[
        Optional[int], typer.Option("--num-workers", min=0, help="Image-decoding worker processes (default: cores - 1).", show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the patient-level train/val/test split.")] = 0,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows per cache chunk: the unit that is written, marked done and resumed.")] = 256,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cache entry made with other weights, preprocessing or data.")] = False,
) -> None:
    """Encode every image of a dataset with a frozen model into the cache (resumable).

    Rerunning after an interruption continues where it stopped; rerunning a finished entry is
    a no-op. A request whose weights, preprocessing or samples differ from the cached entry is
    refused unless --overwrite.

    Example: fmcache embed --model dinov2 --dataset ham10000 --data ~/data/HAM10000
    """
    from fmcache.datasets import load_dataset
    from fmcache.embed.encode import embed as run_embed

    opts = _options(option)
    if dataset_config is not None:
        opts["config"] = str(dataset_config)
    ds = load_dataset(dataset, data, options=opts, seed=seed)
    summary = run_embed(ds, model, root=root, weights=weights, batch_size=batch_size, device=device,
                        num_workers=num_workers, overwrite=overwrite, chunk_rows=chunk_rows)
    typer.echo(summary.line())


@app.command()
def demo(
    root: RootOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to embed with.")] = "efficientnet_lite0",
    size: Annotated[int, typer.Option("--size", min=20, help="Number of synthetic images.")] = 600,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild cache entries that differ.")] = False,
) -> None:
    """Run the whole pipeline offline on the synthetic dataset with a planted disparity.

    Generates chest-X-ray-like images whose lesion is harder to see in one group, embeds them
    with real pretrained weights that ship with the installation, and shows what the cache holds.
    """
    from fmcache.demo import run_demo

    run_demo(root=root, model=model, size=size, overwrite=overwrite)


@app.command()
def models() -> None:
    """List the foundation models: family, weights source, input, normalisation, feature dims."""
    from rich.table import Table

    from fmcache.embed.models import MODELS
    from fmcache.embed.weights import weights_dir

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
    name: Annotated[Optional[str], typer.Argument(help="Show one dataset's expected layout, options and rules.", show_default=False)] = None,
) -> None:
    """List the datasets, or show one dataset's expected layout, options and attribute rules."""
    from rich.table import Table

    from fmcache.datasets import DATASETS, get_dataset

    console = make_console()
    if name is None:
        get_dataset("synthetic")  # loads the built-in adapters
        t = Table(title="fmcache datasets", caption="`fmcache datasets NAME` shows the expected layout and options")
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
    if s.options:
        console.print("\n[bold]Options[/bold] (-o KEY=VALUE)")
        for k, h in s.options.items():
            console.print(f"  {k}: {h}", markup=False)


@cache_app.command("ls")
def cache_ls(root: RootOpt = None) -> None:
    """List every (dataset, model) entry with its state, size and weights."""
    import fmcache
    from fmcache.cache.summary import entries_table

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
) -> None:
    """Show a cached dataset (samples, splits, groups) or a model entry's provenance."""
    import json

    import fmcache
    from fmcache.cache.summary import describe_dataset

    c = fmcache.open_cache(root)
    if model is None:
        typer.echo(describe_dataset(c, dataset))
        return
    e = c.embeddings(dataset, model, allow_partial=True)
    typer.echo(json.dumps(e.provenance, indent=2, default=str))


def main() -> None:
    """Console entry point: one line on a user error, non-zero exit, no traceback."""
    try:
        app(standalone_mode=False)
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
