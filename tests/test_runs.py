"""Run directories round-trip, and a half-written run is not listed."""

from __future__ import annotations

import subprocess
import sys
import uuid
import warnings
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


def test_a_run_loads_by_name_as_by_path(toy_run, tmp_path):
    name = toy_run.run.path.name
    by_path = load_results(toy_run.run.path)
    by_name = fmcache.load_results(name, root=toy_run.root)
    assert by_name.path == by_path.path and by_name.config == by_path.config
    pd.testing.assert_frame_equal(by_name.metrics, by_path.metrics)
    # a runs folder given directly, as with --runs
    assert fmcache.load_results(name, runs=toy_run.root / "runs").path == by_path.path


def test_a_run_not_found_names_the_folder_and_its_runs(tmp_path):
    paths = [_write(tmp_path, f"synthetic-m{i}")[0] for i in range(7)]
    newest_first = sorted((p.name for p in paths), reverse=True)
    with pytest.raises(FmcacheError) as err:
        load_results("20990101-000000-synthetic-typo", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "runs") in message and "\n" not in message
    assert all(n in message for n in newest_first[:5]) and newest_first[5] not in message and "2 more" in message
    # a mistyped directory is answered from the folder it names
    with pytest.raises(FmcacheError, match=r"no run .*typo.* newest first: " + newest_first[0]):
        load_results(tmp_path / "runs" / "typo")
    with pytest.raises(FmcacheError, match=r"that folder does not exist .*root= or runs="):
        load_results("20990101-000000-synthetic-m", root=tmp_path / "elsewhere")
    empty = tmp_path / "empty-runs"
    empty.mkdir()
    with pytest.raises(FmcacheError, match="no finished runs"):
        load_results("x", runs=empty)


@pytest.fixture
def zarr_warnings(monkeypatch):
    """Every warning Zarr raises, recorded before any filter can hide it (a filter is process-wide
    on some interpreters and per thread or context on others, so hiding one is no cure)."""
    raised, real = [], warnings.warn

    def recording(message, category=None, *args, **kwargs):
        if category is not None and category.__name__ == "ZarrUserWarning":
            raised.append(str(message))
        return real(message, category, *args, **kwargs)

    monkeypatch.setattr(warnings, "warn", recording)
    return raised


def _no_warnings_listing(root, raised) -> None:
    """Every listing of the cache, with any warning an error (Zarr's included)."""
    import zarr

    from fmcache.cache.verify import verify

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = fmcache.open_cache(root)
        assert cache.datasets() == ["synthetic"] and cache.models("synthetic") == ["toy"]
        assert list(cache.entries()["state"]) == ["complete"]
        assert [f.dataset for f in verify(str(root))] in ([], ["synthetic"])  # the toy entry is written without batch_size
        assert len(list_runs(root)) >= 1
    assert raised == []
    # the reference: Zarr's own listing of the root, which warns about each object that is no node
    # (other tests leave a report beside the shared cache; the runs folder must not be one)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert {"runs", "synthetic"} <= set(zarr.open_group(str(root), mode="r").group_keys())
    assert not [w for w in seen if "runs" in str(w.message)], [str(w.message) for w in seen]


def test_the_runs_folder_is_a_group_of_the_hierarchy_and_no_listing_warns(toy_run, zarr_warnings):
    import zarr

    assert dict(zarr.open_group(str(toy_run.root), mode="r")["runs"].attrs) == {"fmcache": "runs"}
    _no_warnings_listing(toy_run.root, zarr_warnings)


def test_a_runs_folder_from_before_is_passed_over_then_made_a_group(toy_run, tmp_path, zarr_warnings):
    import shutil

    root = Path(shutil.copytree(toy_run.root, tmp_path / "cache"))
    (root / "runs" / "zarr.json").unlink()  # as fmcache wrote it before runs were a group
    (root / ".locks" / "synthetic").mkdir(parents=True)  # and the writers' locks beside them
    cache = fmcache.open_cache(root)
    assert cache.datasets() == ["synthetic"] and cache.models("synthetic") == ["toy"] and len(cache.entries()) == 1
    assert zarr_warnings == []
    new_run_dir("synthetic-toy", root)
    shutil.rmtree(root / ".locks")  # Zarr's own listing, the reference below, would warn about it
    _no_warnings_listing(root, zarr_warnings)


def test_runs_beside_a_cache_on_an_object_store_are_a_group_too(zarr_warnings):
    import zarr

    from helpers import toy

    root = f"memory://runs-group-{uuid.uuid4().hex}"
    toy.write_cache(root, n=120)
    path = new_run_dir("synthetic-toy", root)
    assert path.is_dir() or path.protocol == "memory"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(zarr.open_group(root, mode="r").group_keys()) == ["runs", "synthetic"]
        assert fmcache.open_cache(root).datasets() == ["synthetic"]
    assert zarr_warnings == []


def test_runs_kept_elsewhere_stay_a_plain_folder(tmp_path):
    path = new_run_dir("synthetic-m", runs=tmp_path / "my-runs")
    assert sorted(p.name for p in (tmp_path / "my-runs").iterdir()) == [path.name]


def test_the_commands_print_no_zarr_warning(toy_run, tmp_path, run_cli, zarr_warnings):
    import os
    import shutil

    root = Path(shutil.copytree(toy_run.root, tmp_path / "cache"))
    # a cache as users have it: the writers' lock folder, and a runs folder from before runs were a group
    (root / ".locks" / "synthetic").mkdir(parents=True)
    (root / "runs" / "zarr.json").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "always"}  # shown every time, wherever they come from
    for args in (["cache", "ls"], ["cache", "info", "synthetic"], ["cache", "verify"],
                 ["probe", "-d", "synthetic", "-m", "toy", "--heads", "linear", "--n-boot", "20", "--epochs", "3"],
                 ["cache", "ls"], ["results"]):
        done = subprocess.run([sys.executable, "-m", "fmcache.cli", *args, "--root", str(root)],
                              capture_output=True, text=True, env=env)
        assert done.returncode == (1 if args == ["cache", "verify"] else 0), done.stderr  # verify: the toy entry has no batch_size
        assert "ZarrUserWarning" not in done.stderr and "not recognized as a component" not in done.stderr, done.stderr
    # in process too, where a warning is seen even if something filtered it out
    for args in (["cache", "ls"], ["probe", "-d", "synthetic", "-m", "toy", "--heads", "linear", "--n-boot", "20", "--epochs", "3"]):
        code, _, err = run_cli(*args, "--root", str(root))
        assert code == 0, err
    assert zarr_warnings == []
