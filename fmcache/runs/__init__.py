"""Runs: the one place that knows a run directory's files. Write, list and load runs, and
read each mitigation against the baseline. Needs neither torch nor JAX.

    import fmcache
    run = fmcache.load_results(path)        # .metrics, .seed_metrics, .sweep, .config, .predictions
    predicted_mask(run, "bbox", item_id, 1) # a segmentation run's saved mask (--save-masks)
"""

from fmcache.runs.directory import (
    Run,
    cache_root,
    discard_run,
    list_runs,
    load_results,
    new_run_dir,
    prediction_key,
    run_path,
    runs_dir,
    write_run,
)
from fmcache.runs.masks import has_masks, predicted_mask, read_overlays
from fmcache.runs.summary import BASELINE, compare_to_baseline

__all__ = [
    "BASELINE",
    "Run",
    "cache_root",
    "compare_to_baseline",
    "discard_run",
    "has_masks",
    "list_runs",
    "load_results",
    "new_run_dir",
    "predicted_mask",
    "prediction_key",
    "read_overlays",
    "run_path",
    "runs_dir",
    "write_run",
]
