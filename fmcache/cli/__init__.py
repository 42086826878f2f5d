"""The `fmcache` command. Each command is a thin wrapper over a library call; names are
checked against the registries before torch or JAX is imported, so a typo is answered at once."""

from fmcache.cli import work, finetune, compare, catalogue, cache  # noqa: F401, I001 - registering the commands, in --help's order
from fmcache.cli.app import app
from fmcache.cli.main import main

__all__ = ["app", "main"]
