"""A toy cache entry written directly (no model): the synthetic samples table with 16-d features
that carry the label, more weakly in one sex group, and the probe run the sweep and report
tests share."""

from __future__ import annotations

import numpy as np

from fmcache.cache.store import open_root
from fmcache.cache.writer import open_entry, write_samples
from fmcache.datasets import load_dataset
from fmcache.probe import SweepConfig, load_sweep, run_sweep

D = 16


def write_cache(root, *, n=300, chunk_rows=64, finish=True, poison=False, vlm=False, protos=None, model="toy",
                family=None) -> None:
    """The synthetic samples table with features that carry the label, more weakly for sex 1.

    ``vlm``: also projected features and text prototypes, the class-1 prototype pointing
    where positive images lie; ``protos`` replaces those (2 classes, T templates, 8).
    ``model`` (and ``family``) name the entry as a registered model's would be.
    """
    ds = load_dataset("synthetic", options={"size": str(n), "image_size": "32"})
    t = ds.table
    rng = np.random.default_rng(0)
    y = t["label/lesion"].to_numpy()
    strength = np.where(t["sa/sex"].to_numpy() == 1, 0.4, 1.5)
    X = rng.normal(size=(n, D)).astype(np.float32)
    X[:, 0] += y * strength
    X[:, 1] += 0.5 * (t["sa/sex"].to_numpy() == 1)
    if poison:
        X[np.flatnonzero(t["split"].to_numpy() == 0)[0], 3] = np.inf  # NaN is what a missing chunk reads as
    dims = {"image": D, "image_proj": 8} if vlm else {"image": D}
    proj = X[:, :8] * 0.5
    proj[:, 0] += 2.0 * (y == 1)
    proj[:, 1] += 2.0 * (y == 0)
    group = write_samples(open_root(str(root), mode="a"), ds.name, t, ds.group_attrs())
    w = open_entry(group, model, {"model": model, "family": family, "weights_id": "toy", "weights_sha256": None,
                                  "preprocess": {}, "dims": dims, "row_fingerprint": ds.fingerprint, "logit_scale": 10.0},
                   chunk_rows=chunk_rows)
    if vlm:
        if protos is None:
            protos = np.zeros((2, 2, 8), np.float32)
            protos[1, :, 0] = protos[0, :, 1] = 1.0
        templates = ["a {}", "an image of a {}", "a scan of a {}", "a photo of a {}"][:protos.shape[1]]
        w.write_text("default", protos, {"templates": templates, "classes": ["normal", "lesion"], "label": None})
    for c in w.pending_chunks() if finish else [0]:
        a, b = w.rows(c)
        w.write_chunk(c, {"image": X[a:b], "image_proj": proj[a:b]})
    if finish:
        w.finish()


def config(**over) -> SweepConfig:
    grids, _ = load_sweep("all", ["linear", "groupdro"])
    cfg = dict(dataset="synthetic", model="toy", heads=grids, n_boot=50, epochs=40, batch_size=64)
    cfg.update(over)
    return SweepConfig(**cfg)


def shared_run(root):
    """The run the probe and report tests read: linear and GroupDRO over their search grids."""
    write_cache(root)
    return run_sweep(config(), root=root)
