"""The probe workflow: read a cache entry, build each head type's grid, train the stacks with
the JAX engine (``fmcache.heads``), select on validation, evaluate on test with
``fmcache.fairness`` and write a run (``fmcache.runs``).

    from fmcache.probe import SweepConfig, load_sweep, run_sweep
    grids, _ = load_sweep("all", None)
    run = run_sweep(SweepConfig(dataset="chexpert", model="medclip", heads=grids))

JAX loads on first use of these names.
"""

from __future__ import annotations

from fmcache._lazy import lazy_exports

_LAZY = {
    "ProbeData": "fmcache.probe.data",
    "load_probe_data": "fmcache.probe.data",
    "default_grid": "fmcache.probe.grids",
    "load_sweep": "fmcache.probe.grids",
    "search_grid": "fmcache.probe.grids",
    "CRITERIA": "fmcache.probe.selection",
    "SweepConfig": "fmcache.probe.sweep",
    "run_sweep": "fmcache.probe.sweep",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
