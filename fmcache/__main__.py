"""`python -m fmcache`: the `fmcache` command, as launchers that run modules call it (`torchrun -m fmcache embed ...`)."""

from fmcache.cli import main

main()
