"""Heads trained on features streamed from the cache against the same features loaded whole.

Writes a cache entry of ``--rows`` synthetic rows x ``--d`` float16 features (a real entry:
chunks, checksums, done bitmap), then trains the same stack of linear heads twice, each in
its own process: (i) streamed under ``--budget`` (the train split read window by window,
the next window on a background thread), (ii) with the features read into memory first.
Both use the chunk-wise minibatch order, so they train the same heads. Each process reports
its second fit's time (the first compiles) and its peak resident memory (VmHWM, whole process: Python, JAX, the samples
table and the features).

``RESULT sweep_streaming ratio=<streamed rows/s / in-memory rows/s>``.

    python benchmarks/sweep_streaming.py [--rows 200000] [--d 1024] [--budget 512M]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np


def build(root: str, rows: int, d: int) -> float:
    from fmcache.cache.store import open_root
    from fmcache.cache.writer import open_entry, write_samples
    from fmcache.datasets import load_dataset

    start = time.perf_counter()
    ds = load_dataset("synthetic", options={"size": str(rows), "image_size": "16"})
    group = write_samples(open_root(root, mode="a"), ds.name, ds.table, ds.group_attrs())
    w = open_entry(group, "bench", {"model": "bench", "family": None, "weights_id": "bench", "weights_sha256": None,
                                    "preprocess": {}, "dims": {"image": d}, "row_fingerprint": ds.fingerprint},
                   chunk_rows=4096)
    rng = np.random.default_rng(0)
    y = ds.table["label/lesion"].to_numpy()
    for c in w.pending_chunks():
        a, b = w.rows(c)
        X = rng.standard_normal((b - a, d), dtype=np.float32)
        X[:, 0] += y[a:b]
        w.write_chunk(c, {"image": X})
    w.finish()
    return time.perf_counter() - start


def child(root: str, budget: int, epochs: int, heads: int, window: int) -> None:
    from fmcache.cache.reader import open_cache
    from fmcache.heads.train import fit_stack
    from fmcache.probe.data import load_probe_data

    emb = open_cache(root).embeddings("synthetic", "bench")
    start = time.perf_counter()
    data = load_probe_data(emb, memory_budget=budget)
    X, y, g = data.training_set(shuffle="chunks")
    loaded = time.perf_counter() - start
    hp = {"lr": np.geomspace(1e-4, 1e-2, heads)}
    for _ in range(2):  # the second fit is timed: the first one compiles
        fit = fit_stack("linear", X, y, g, hp, epochs=epochs, batch_size=128, shuffle="chunks", window=window,
                        memory_budget=budget)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"streamed": data.streamed, "load_s": loaded, "fit_s": fit.log["seconds"], "rows": X.n,
                      "peak": peak, "w0": float(np.asarray(fit.params["w"]).ravel()[0])}))


def _run(args: argparse.Namespace, root: str, budget: str) -> dict:
    cmd = [sys.executable, __file__, "--child", root, "--epochs", str(args.epochs), "--heads", str(args.heads),
           "--window", str(args.window), "--child-budget", budget]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--budget", default="512M")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--window", type=int, default=16384)
    p.add_argument("--child", metavar="ROOT", help=argparse.SUPPRESS)
    p.add_argument("--child-budget", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        from fmcache.heads.memory import parse_bytes

        child(args.child, parse_bytes(args.child_budget), args.epochs, args.heads, args.window)
        return
    gib = 1 << 30
    with tempfile.TemporaryDirectory() as root:
        built = build(root, args.rows, args.d)
        print(f"cache entry: {args.rows} rows x {args.d} float16 ({args.rows * args.d * 2 / gib:.2f} GiB of features) "
              f"written in {built:.1f}s")
        s = _run(args, root, args.budget)
        # a budget the whole features fit in (the default one may be smaller than them)
        m = _run(args, root, f"{max(args.rows * args.d * 4 * 4 >> 20, 1024)}M")
    for name, r in (("streamed", s), ("in memory", m)):
        rate = r["rows"] * args.epochs / r["fit_s"]
        print(f"{name:>9}: {args.heads} heads, {args.epochs} epoch(s) over {r['rows']} train rows in {r['fit_s']:.1f}s "
              f"({rate:,.0f} rows/s; loading {r['load_s']:.1f}s), peak resident memory {r['peak'] / gib:.2f} GiB")
    assert s["streamed"] and not m["streamed"], "the budget did not decide as intended"
    ratio = (s["rows"] / s["fit_s"]) / (m["rows"] / m["fit_s"])
    print(f"RESULT sweep_streaming ratio={ratio:.2f} target=0.8 streamed_peak_gib={s['peak'] / gib:.2f} "
          f"memory_peak_gib={m['peak'] / gib:.2f} budget={args.budget} rows={args.rows} d={args.d} "
          f"same_heads={s['w0'] == m['w0']}")


if __name__ == "__main__":
    main()
