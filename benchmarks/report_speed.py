"""How long `fmcache report` takes for a study of 10 models x 3 datasets x 2 attributes.

Builds 30 synthetic probe runs (four head types each, metric tables from
`fairness.evaluate` with bootstrap intervals, saved predictions), then times
`build_report` over all of them. Target: under 30 s on a 2-core machine.

    python benchmarks/report_speed.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fmcache.fairness import evaluate
from fmcache.report import build_report
from fmcache.runs import new_run_dir, write_run

MODELS = [f"model{i:02d}" for i in range(10)]
DATASETS = ["chexpert", "ham10000", "fitzpatrick"]
ATTRIBUTES = {"sex": ["male", "female"], "age": ["young", "old"]}
HEADS = ["linear", "resample", "groupdro", "fairpenalty"]
N_TEST = 600
TARGET_S = 30.0


def synthetic_run(root: Path, dataset: str, model: str, seed: int) -> Path:
    """One probe run whose tables look like a real sweep's: a model-specific skill and group disparity."""
    rng = np.random.default_rng(seed)
    skill, disparity = rng.uniform(0.8, 2.0), rng.uniform(0.0, 0.8)
    y = rng.integers(0, 2, N_TEST).astype(np.int8)
    blocks, preds = [], {}
    for h, head in enumerate(HEADS):
        for attr, names in ATTRIBUTES.items():
            g = rng.integers(0, 2, N_TEST).astype(np.int8)
            # mitigations trade a little skill for a smaller disparity
            strength = np.where(g == 1, skill - disparity / (1 + h), skill - 0.05 * h)
            score = 1 / (1 + np.exp(-(rng.normal(size=N_TEST) + strength * (2 * y - 1))))
            blocks.append(evaluate(y, score, {attr: g}, threshold=0.5, n_boot=200, seed=0,
                                   group_names={attr: names}).assign(
                label="finding", head=head, hparams="{}", criterion="auc", val_criterion=0.8))
            preds[f"{head}.finding.{attr}"] = {"score": score.astype(np.float32), "y": y, "group": g,
                                               "row": np.arange(N_TEST), "id": np.array([f"s{i}" for i in range(N_TEST)])}
    metrics = pd.concat(blocks, ignore_index=True).assign(dataset=dataset, model=model)
    config = {"dataset": dataset, "model": model, "heads": HEADS, "labels": ["finding"],
              "attributes": list(ATTRIBUTES), "group_names": ATTRIBUTES, "convention": "paper", "n_boot": 200,
              "seed": 0, "seeds": 1, "criterion": "auc", "threshold": "val", "feature_kind": "image",
              "versions": {"fmcache": "bench"}, "created": "2026-01-01T00:00:00+00:00",
              "cache": {"weights_id": f"hub:{model}", "weights_sha256": "0" * 64, "preprocess": {"size": 224},
                        "row_fingerprint": f"{seed:016x}", "created": "2026-01-01T00:00:00+00:00"}}
    path = new_run_dir(f"{dataset}-{model}", root)
    write_run(path, config=config, metrics=metrics, sweep=pd.DataFrame({"head": HEADS}), predictions=preds)
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        runs = [synthetic_run(root, d, m, seed=i * 100 + j) for i, d in enumerate(DATASETS) for j, m in enumerate(MODELS)]
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = build_report(runs, root / "study.html")
        seconds = time.perf_counter() - t0
        size_mb = out.stat().st_size / 1e6
    print(f"{len(runs)} runs ({len(MODELS)} models x {len(DATASETS)} datasets x {len(ATTRIBUTES)} attributes, "
          f"{len(HEADS)} heads each) written in {made:.1f} s; report {size_mb:.1f} MB in {seconds:.1f} s")
    print(f"RESULT report_speed ratio={TARGET_S / seconds:.2f} target=1 seconds={seconds:.1f} runs={len(runs)} "
          f"size_mb={size_mb:.1f}")


if __name__ == "__main__":
    main()
