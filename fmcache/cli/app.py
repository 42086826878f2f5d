"""The command tree and the conventions every command shares: help text that the terminal
wraps, flags that read as flags, the shared options, and Ctrl-C turned into a message."""

from __future__ import annotations

import inspect
import os
import re
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from fmcache.errors import FmcacheError

# JAX would otherwise reserve most of a GPU's memory, leaving none to the torch stage
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


class Interrupted(FmcacheError):
    """Ctrl-C: the message says what was kept and how to go on."""


def _flags_read_as_flags(params: list[Any]) -> list[Any]:
    # typer shows every option's type, a flag's too ("--overwrite <bool>"), as if it took a value
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        return _flags_read_as_flags(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx):  # noqa: ANN001, ANN201
        return _flags_read_as_flags(super().get_params(ctx))

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        # typer turns KeyboardInterrupt into a silent exit 130; a command that knows more
        # raises Interrupted itself
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted("nothing is left half-written; rerun the same command to go on") from None


def reflow(doc: str | None) -> str:
    """A docstring as help text: each paragraph one line, for the terminal to wrap; indented
    lines (examples) keep their line breaks."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")):
        lines = block.splitlines()
        if any(line.startswith(" ") for line in lines):
            paragraphs.append(block)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def command(group: typer.Typer, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``f`` on ``group`` with its docstring reflowed as the help text."""

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        return group.command(name, cls=Command, help=reflow(f.__doc__))(f)

    return register


app = typer.Typer(
    name="fmcache",
    cls=Group,
    help=reflow("""
        Is a medical-imaging foundation model fair? Embed each image once into a cache, then
        train probes and measure group gaps from the cache.

        Start with `fmcache demo` (offline, about a minute). Then `fmcache datasets` and
        `fmcache models` show what exists, and:

          fmcache embed -m MODEL -d DATASET --data PATH    cache the embeddings
          fmcache probe -d DATASET -m MODEL --sweep all    train fairness heads
          fmcache segment -d DATASET -m sam --data PATH    or decode SAM prompts
          fmcache report RUN --out study.html              share the results

        Any command: --debug (or FMCACHE_DEBUG=1) shows the traceback of an unexpected error.
    """),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(
    cls=Group,
    help="Inspect and look after the cache: `ls` lists entries, `info` shows one, `verify` checks (and repairs), `rm` removes.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error (also FMCACHE_DEBUG=1).")] = False,
) -> None:
    # --debug is read (anywhere on the command line) by main(); declared here for --help
    del debug


RootOpt = Annotated[
    Optional[str],
    typer.Option("--root", metavar="PATH", show_default=False,
                 help="Cache folder or fsspec URL (default: $FMCACHE_HOME, else ~/.cache/fmcache)."),
]
RunsOpt = Annotated[
    Optional[str],
    typer.Option("--runs", metavar="PATH", show_default=False,
                 help="Folder (or fsspec URL) of the runs (default: <root>/runs); use it when the cache is read-only."),
]


def dataset_options(values: list[str] | None) -> dict[str, str]:
    """``-o KEY=VALUE`` pairs."""
    out = {}
    for v in values or []:
        if "=" not in v:
            raise typer.BadParameter(f"{v!r} is not KEY=VALUE (e.g. -o uncertain=one)", param_hint="'--option' / '-o'")
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


def say(line: str) -> None:
    """A side note on stderr, so that stdout stays the command's result; under torchrun, rank 0's alone."""
    from fmcache.embed.distributed import is_secondary

    if not is_secondary():
        typer.echo(line, err=True)
