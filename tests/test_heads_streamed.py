"""Features larger than memory: heads trained from windows streamed out of the cache equal the
heads trained from the same features held in memory, and the streamed run keeps to a memory
limit that the whole-features run breaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fmcache.errors import FmcacheError, HeadInputError
from fmcache.heads.memory import parse_bytes
from fmcache.heads.stream import ArraySource, chunk_order, window_rows
from fmcache.heads.train import fit_stack, predict_stack

HELPERS = Path(__file__).parent / "helpers"


class _Lazy:
    """Rows read on demand from an array, counting what was read: streamed like the cache's."""

    def __init__(self, X, starts):
        self.X, self.starts = X, np.asarray(starts)
        self.n, self.d = X.shape
        self.largest = 0

    def read(self, positions):
        self.largest = max(self.largest, len(positions))
        return self.X[positions]


def _toy(n=1500, d=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    g = rng.integers(0, 2, n)
    y = (X[:, 0] + 0.8 * g * X[:, 1] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return X, y, g


def test_chunk_order_visits_every_row_once_per_epoch_window_by_window():
    starts = np.array([0, 100, 250, 300, 420, 600])
    orders = list(chunk_order(starts, epochs=3, batch_size=32, window=128, seed=5))
    width = window_rows(128, 32)
    for order in orders:
        assert order.shape == (-(-600 // 32), 32)
        flat = order.ravel()
        assert np.array_equal(np.sort(flat[flat >= 0]), np.arange(600))
        assert (flat[:600] >= 0).all() and (flat[600:] == -1).all()
        # a window draws on the few blocks it spans, not on the whole table
        block = np.searchsorted(starts, flat[:600], side="right") - 1
        for lo in range(0, 600, width):
            assert len(np.unique(block[lo:lo + width])) <= 3
    assert not np.array_equal(orders[0], orders[1])  # a fresh order each epoch
    again = list(chunk_order(starts, epochs=3, batch_size=32, window=128, seed=5))
    assert all(np.array_equal(a, b) for a, b in zip(orders, again))


@pytest.mark.parametrize("head", ["linear", "groupdro"])
def test_streamed_heads_equal_heads_trained_in_memory(head):
    X, y, g = _toy()
    starts = np.arange(0, 1501, 200).tolist() + [1500]
    hp = {"lr": np.array([1e-3, 3e-3, 1e-2])}
    kw = dict(epochs=3, batch_size=64, shuffle="chunks", window=256)
    whole = fit_stack(head, ArraySource(X, starts), y, g, hp, **kw)
    lazy = _Lazy(X, starts)
    streamed = fit_stack(head, lazy, y, g, hp, memory_budget=1 << 20, **kw)
    assert streamed.log["window"] == 256 and lazy.largest <= 256  # it did read window by window
    for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(streamed.params)):
        np.testing.assert_array_equal(a, b)
    # trained at all: the heads moved from their start and fit the label
    assert (whole.log["loss"][:, -1] < whole.log["loss"][:, 0]).all()
    scores = predict_stack(head, streamed.params, _Lazy(X, starts), memory_budget=1 << 16)
    np.testing.assert_allclose(scores, predict_stack(head, whole.params, X), rtol=1e-6, atol=1e-7)
    # a different order trains different heads: the comparison above can fail
    rows = fit_stack(head, X, y, g, hp, epochs=3, batch_size=64)
    assert not np.array_equal(jax.tree_util.tree_leaves(rows.params)[0], jax.tree_util.tree_leaves(whole.params)[0])


def test_streaming_refuses_what_it_cannot_do():
    X, y, g = _toy(n=300)
    with pytest.raises(HeadInputError, match="shuffle='chunks'"):
        fit_stack("linear", _Lazy(X, [0, 300]), y, g, {"lr": [1e-3]})
    with pytest.raises(HeadInputError, match="lbfgs solver needs the features in memory"):
        fit_stack("linear", _Lazy(X, [0, 300]), y, g, {"C": [1.0]}, solver="lbfgs", shuffle="chunks")
    with pytest.raises(HeadInputError, match="raise --memory-budget or lower --shuffle-window"):
        fit_stack("linear", _Lazy(X, [0, 300]), y, g, {"lr": [1e-3]}, shuffle="chunks", window=256, memory_budget=4096)
    assert parse_bytes("512M") == 512 << 20 and parse_bytes("1.5GiB") == 3 << 29 and parse_bytes("4096") == 4096
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_sweep_streams_features_over_the_budget_and_selects_the_same_heads(tmp_path):
    from fmcache.probe import load_sweep, run_sweep
    from tests.helpers.toy import config, write_cache

    write_cache(tmp_path, n=600)
    grids, _ = load_sweep("default", ["linear", "groupdro"])
    small = dict(heads=grids, seeds=2, epochs=8, n_boot=20, window=64, batch_size=32)
    # 600 rows x 16 float32 features are 38 KiB: over half of 48 KiB, so they stay in the cache
    streamed = run_sweep(config(memory_budget=48 << 10, **small), root=tmp_path)
    assert streamed.config["features_streamed"] and streamed.config["shuffle"] == "chunks"
    whole = run_sweep(config(shuffle="chunks", **small), root=tmp_path)
    assert not whole.config["features_streamed"]
    keys = ["head", "label", "attribute", "metric", "group"]
    a, b = (r.metrics.sort_values(keys).reset_index(drop=True) for r in (streamed, whole))
    assert len(a) and a[keys + ["hparams"]].equals(b[keys + ["hparams"]])  # the same heads selected
    # scored in other block sizes (and other head chunks) than in memory: equal to float32 rounding
    np.testing.assert_allclose(a["value"], b["value"], rtol=0, atol=1e-6)
    with pytest.raises(FmcacheError, match="--shuffle chunks"):
        run_sweep(config(memory_budget=48 << 10, shuffle="rows", **small), root=tmp_path)


def test_cli_memory_budget_is_a_size(run_cli):
    code, _, err = run_cli("probe", "-d", "synthetic", "-m", "toy", "--memory-budget", "lots")
    assert code != 0 and "--memory-budget 'lots'" in err and "Traceback" not in err


def _big_entry(root: Path, n: int, d: int) -> None:
    from fmcache.cache.store import open_root
    from fmcache.cache.writer import open_entry, write_samples
    from fmcache.datasets import load_dataset

    ds = load_dataset("synthetic", options={"size": str(n), "image_size": "16"})
    group = write_samples(open_root(str(root), mode="a"), ds.name, ds.table, ds.group_attrs())
    w = open_entry(group, "big", {"model": "big", "family": None, "weights_id": "toy", "weights_sha256": None,
                                  "preprocess": {}, "dims": {"image": d}, "row_fingerprint": ds.fingerprint},
                   chunk_rows=2048)
    rng = np.random.default_rng(0)
    y = ds.table["label/lesion"].to_numpy()
    for c in w.pending_chunks():
        a, b = w.rows(c)
        X = rng.normal(size=(b - a, d)).astype(np.float32)
        X[:, 0] += y[a:b]
        w.write_chunk(c, {"image": X})
    w.finish()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak memory from /proc")
def test_streamed_training_keeps_to_a_memory_limit_that_loading_whole_breaks(tmp_path):
    # 60k rows x 384 features: 88 MiB as float32, 46 MiB of them the training split's
    _big_entry(tmp_path, 60000, 384)
    budget = 40 << 20
    out = subprocess.run([sys.executable, str(HELPERS / "streamed_memory.py"), str(tmp_path), "synthetic", "big",
                          str(budget), "4096"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["streamed"] and result["same_heads"]
    assert result["rise_streamed"] < budget  # measured: peak resident memory above the start
    assert not result["whole_ran"]  # the limit binds: the features do not fit under it whole
