"""The rich console that commands print through."""

from __future__ import annotations

from rich.console import Console


def make_console() -> Console:
    c = Console()
    # piped output (files, CI logs) gets wide tables instead of cells folded to 80 columns
    return c if c.is_terminal else Console(width=200)
