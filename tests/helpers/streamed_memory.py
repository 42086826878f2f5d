"""Run as a program: train one stack of heads from a cache entry under a memory limit, first
streamed from the cache, then from the features loaded whole, and print (JSON) whether each
ran, how far it raised peak resident memory, and whether both trained the same heads.

    python streamed_memory.py ROOT DATASET MODEL BUDGET_BYTES WINDOW

The limit is RLIMIT_DATA (heap and private mappings) at what the process uses once everything
is compiled plus the budget; the whole-features run is then repeated without it, to compare.
"""

from __future__ import annotations

import json
import resource
import sys

import jax
import numpy as np

from fmcache.cache.reader import open_cache
from fmcache.heads.train import fit_stack
from fmcache.probe.data import load_probe_data

HP = {"lr": np.array([1e-3, 3e-3])}
EPOCHS = 2


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _fit(emb, budget: int | None, window: int):
    data = load_probe_data(emb, memory_budget=budget)
    X, y, g = data.training_set(shuffle="chunks")
    fit = fit_stack("linear", X, y, g, HP, epochs=EPOCHS, batch_size=256, shuffle="chunks", window=window,
                    memory_budget=budget)
    return data.streamed, jax.tree_util.tree_leaves(fit.params)


def _limited(run, limit: int):
    """``run()`` under a soft data limit: (what it returned or None on MemoryError, peak rise)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _status("VmRSS")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        out = run()
    except MemoryError:
        out = None
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    return out, _status("VmHWM") - before


def main() -> None:
    root, dataset, model, budget, window = sys.argv[1:6]
    budget, window = int(budget), int(window)
    emb = open_cache(root).embeddings(dataset, model)
    _fit(emb, budget, window)  # compiles what the limited runs use
    limit = _status("VmData") + budget
    streamed, rise_streamed = _limited(lambda: _fit(emb, budget, window), limit)
    whole, rise_whole = _limited(lambda: _fit(emb, None, window), limit)
    _, reference = _fit(emb, None, window)
    print(json.dumps({
        "streamed": streamed is not None and streamed[0], "rise_streamed": rise_streamed,
        "whole_ran": whole is not None, "rise_whole": rise_whole,
        "same_heads": streamed is not None and all(np.array_equal(a, b) for a, b in zip(streamed[1], reference)),
    }))


if __name__ == "__main__":
    main()
