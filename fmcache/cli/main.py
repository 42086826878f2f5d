"""The one error path of the `fmcache` command.

Usage errors: click's short usage, one ``error:`` line, exit 2. A FmcacheError (bad input,
a missing cache entry, damage): one ``error:`` line, exit 1. Ctrl-C: what was kept and how
to go on, exit 130. Anything unexpected: one line naming it, exit 1, and the traceback only
with ``--debug`` or ``FMCACHE_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence

import typer
from typer._click import exceptions as click  # typer 0.29 raises its own copy of click's exceptions (pinned)

from fmcache.cli.app import Interrupted, app
from fmcache.errors import FmcacheError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"


def _debug_wanted(args: list[str]) -> bool:
    return DEBUG_FLAG in args or os.environ.get("FMCACHE_DEBUG", "") not in ("", "0")


def _usage_error(e: click.UsageError) -> int:
    if isinstance(e, click.NoArgsIsHelpError):  # `fmcache` or `fmcache cache` alone
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        return 0
    if e.ctx is not None:
        typer.echo(e.ctx.get_usage(), err=True)
        typer.echo(f"Try '{e.ctx.command_path} --help' for help.", err=True)
    message = e.format_message()
    typer.echo(f"error: {message[:1].lower()}{message[1:]}", err=True)
    return EXIT_USAGE


SECONDARY_GRACE_SECONDS = 2.0


def _told_here(e: BaseException) -> bool:
    """Under torchrun rank 0 speaks for the job; another rank says only what failed in its own share
    (rank 0's errors reach it as copies, and checks every rank makes alike would say it N times)."""
    from fmcache.embed.distributed import says

    if says(e):
        return True
    # torchrun stops every process once one exits: a silent rank leaves rank 0 time to say it
    time.sleep(SECONDARY_GRACE_SECONDS)
    return False


def _unexpected(e: BaseException, args: list[str]) -> int:
    what = " ".join(a for a in args[:2] if not a.startswith("-")) or "fmcache"
    typer.echo(f"error: `fmcache {what}` failed unexpectedly: {type(e).__name__}: {e}; rerun with "
               f"{DEBUG_FLAG} (or FMCACHE_DEBUG=1) to see where, and report it if it is not your input", err=True)
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exits with the code of the outcome, never with a traceback
    unless asked for."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_wanted(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        code = app(args=args, prog_name="fmcache", standalone_mode=False)
    except Interrupted as e:
        if _told_here(e):
            typer.echo(f"\ninterrupted: {e}", err=True)
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before a command started (while parsing or importing)
        typer.echo("\ninterrupted before anything was written", err=True)
        code = EXIT_INTERRUPTED
    except click.UsageError as e:
        code = _usage_error(e)
    except click.ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        code = e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 1
    except FmcacheError as e:
        if debug:
            traceback.print_exc()
        if _told_here(e):
            typer.echo(f"error: {e}", err=True)
        code = 1
    except SystemExit as e:
        code = e.code
    except Exception as e:
        if debug:
            traceback.print_exc()
        code = _unexpected(e, args)
    sys.exit(code if isinstance(code, int) else 0 if code is None else 1)
