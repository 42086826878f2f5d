"""`fmcache cache`: list, describe, verify and remove cache entries."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fmcache.cli.app import RootOpt, cache_app, command


@command(cache_app, "ls")
def cache_ls(root: RootOpt = None) -> None:
    """List every (dataset, model) entry with its state, size and weights."""
    import fmcache
    from fmcache.views import entries_table, make_console

    c = fmcache.open_cache(root)
    if not any(c.models(d) for d in c.datasets()):
        typer.echo(f"the cache at {c.root} holds no embeddings yet (datasets: {', '.join(c.datasets()) or 'none'})")
        return
    make_console().print(entries_table(c))


@command(cache_app, "info")
def cache_info(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name in the cache (`fmcache cache ls`).")],
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model key; omit to describe the dataset.", show_default=False)] = None,
    root: RootOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what is recorded, as JSON: the entry's provenance, "
                                          "or without MODEL the dataset's attributes.")] = False,
) -> None:
    """Show a cached dataset (samples, splits, groups and the rules that made them) or a model entry's provenance."""
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


@command(cache_app, "verify")
def cache_verify(
    dataset: Annotated[Optional[str], typer.Argument(metavar="DATASET", help="Only this dataset.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Only this model's entry.", show_default=False)] = None,
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


@command(cache_app, "rm")
def cache_rm(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name in the cache.")],
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model key; omit to remove the dataset with all its entries.",
                                                   show_default=False)] = None,
    root: RootOpt = None,
) -> None:
    """Remove a cache entry (or a dataset with all its entries); refused while another process writes it."""
    from fmcache.cache.store import resolve_root
    from fmcache.cache.verify import remove

    root_s = resolve_root(root)
    remove(root_s, dataset, model)
    typer.echo(f"removed {dataset}{'/' + model if model else ''} from the cache at {root_s}")
