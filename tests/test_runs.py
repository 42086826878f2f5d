"""Run directories round-trip, and a half-written run is not listed."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fmcache
from fmcache.errors import FmcacheError
from fmcache.runs import list_runs, load_results, new_run_dir, prediction_key, write_run


def _write(root, name="synthetic-m"):
    path = new_run_dir(name, root)
    metrics = pd.DataFrame({"head": ["linear"] * 2, "metric": ["auc", "auc_delta"], "group": ["overall", "gap"], "value": [0.8, 0.1]})
    sweep = pd.DataFrame({"head": ["linear", "linear"], "lr": [1e-3, 1e-2], "val_auc": [0.7, 0.75]})
    preds = {prediction_key("linear", "lesion", "sex"): {"score": np.array([0.1, 0.9], np.float32), "row": np.array([3, 5]), "id": np.array(["a", "b"])}}
    write_run(path, config={"dataset": "synthetic", "model": "m", "heads": ["linear"], "seed": np.int64(0)},
              metrics=metrics, sweep=sweep, predictions=preds)
    return path, metrics


@pytest.mark.parametrize("store", ["local", "memory"])
def test_round_trip_and_listing(tmp_path, store):
    # an object-store root stays a URL (memory:// stands in for s3://), never a local folder "memory:/..."
    root = tmp_path if store == "local" else f"memory://runs-test-{uuid.uuid4().hex}/prefix"
    path, metrics = _write(root)
    assert str(path).startswith(f"{root}/runs/")
    if store == "memory":
        assert not any(tmp_path.iterdir()) and not Path("memory:").exists()
    second = new_run_dir("synthetic-m", root)  # same second: made unique, and unfinished
    assert second != path
    run = load_results(path)
    pd.testing.assert_frame_equal(run.metrics, metrics)
    assert run.config["seed"] == 0 and run.config["heads"] == ["linear"]
    p = run.predictions[prediction_key("linear", "lesion", "sex")]
    np.testing.assert_array_equal(p["score"], np.array([0.1, 0.9], np.float32))
    assert list(p["id"]) == ["a", "b"]
    runs = list_runs(root)
    assert list(runs["run"]) == [path.name]  # the unfinished one is not listed
    with pytest.raises(FmcacheError, match="not a finished run"):
        load_results(second)
    listed = load_results(runs["path"].iloc[0])
    assert list(listed.prediction("linear", "lesion", "sex")["id"]) == ["a", "b"]
    assert listed.prediction("linear", "lesion", "age") is None
    assert fmcache.load_results(path).metrics.shape == metrics.shape


def test_loading_results_needs_neither_torch_nor_jax(tmp_path):
    path, _ = _write(tmp_path)
    code = (
        "import sys, fmcache\n"
        f"r = fmcache.load_results({str(path)!r}); r.predictions\n"
        "import fmcache.runs, fmcache.report\n"
        "bad = [m for m in ('torch', 'jax') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runs_started_together_each_claim_their_own_directory(tmp_path):
    import threading

    paths, start = [], threading.Barrier(6)

    def claim():
        start.wait()
        paths.append(new_run_dir("synthetic-m", tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(map(str, paths))) == 6 and all(p.is_dir() for p in paths)


def test_a_sweep_claims_its_run_before_training_and_gives_it_back_on_failure(toy_run, tmp_path, monkeypatch):
    import shutil

    from helpers import toy

    import fmcache.probe.sweep as sweep
    from fmcache.probe import run_sweep

    root = shutil.copytree(toy_run.root, tmp_path / "cache")
    claimed = []

    def failing_fit(*args, **kwargs):
        claimed.extend(p.name for p in (root / "runs").iterdir())
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sweep, "fit_stack", failing_fit)
    before = sorted(p.name for p in (root / "runs").iterdir())
    with pytest.raises(RuntimeError):
        run_sweep(toy.config(), root=root)
    assert len(claimed) == len(before) + 1  # the directory existed while training
    assert sorted(p.name for p in (root / "runs").iterdir()) == before  # and is gone again


def test_runs_can_live_away_from_a_read_only_cache(toy_run, run_cli, tmp_path, monkeypatch):
    import errno

    import zarr.storage

    elsewhere = tmp_path / "my-runs"
    before = sorted(p.name for p in (toy_run.root / "runs").iterdir())
    original = zarr.storage.LocalStore.set

    async def read_only_cache(self, key, value):
        if str(self.root).startswith(str(toy_run.root)):
            raise OSError(errno.EROFS, "Read-only file system", str(self.root / key))
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", read_only_cache)
    code, out, err = run_cli("probe", "-d", "synthetic", "-m", "toy", "--heads", "linear", "--n-boot", "20", "--epochs", "3",
                             "--root", str(toy_run.root), "--runs", str(elsewhere))
    assert code == 0, err
    assert sorted(p.name for p in (toy_run.root / "runs").iterdir()) == before
    (made,) = list(elsewhere.iterdir())
    code, out, _ = run_cli("results", "--root", str(toy_run.root), "--runs", str(elsewhere))
    assert code == 0 and made.name in out
