"""Stacks of heads spread over several devices train and score as on one.

JAX fixes its devices when it starts, so the runs happen in fresh processes with 4 forced
host devices (``--xla_force_host_platform_device_count``): one process fits every head type
on 4 devices and again with the mesh restricted to 1 (``devices.use(1)``); two more make
one computation across 2 processes of 2 devices each (jax.distributed, gloo on CPU).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
K = 6  # not a multiple of 4: the last chunk is padded with copies of the last head

DATA = """
import numpy as np
rng = np.random.default_rng(0)
n = 240
X = rng.normal(size=(n, 12)).astype(np.float32)
g = rng.integers(0, 2, (n, 2))
y = ((X[:, 0] + 0.5 * g[:, 0] + rng.normal(size=n)) > 0).astype(np.int8)
HP = {
    "linear": {"lr": np.geomspace(1e-3, 3e-2, 6), "weight_decay": [0, .01, .05, 0, .01, .05], "seed": [0, 1, 2, 0, 1, 2]},
    "groupdro": {"lr": np.geomspace(1e-3, 3e-2, 6), "dro_step": [.01, .1, .01, .1, .01, .1], "attribute": [0, 1, 0, 1, 0, 1]},
    "fairpenalty": {"lr": np.geomspace(1e-3, 3e-2, 6), "penalty": [0.1, 1.0, 0.1, 1.0, 0.1, 1.0]},
    "domain_ind": {"lr": np.geomspace(1e-3, 3e-2, 6), "attribute": [0, 1, 0, 1, 0, 1]},
    "lbfgs": {"C": np.geomspace(1e-2, 1e2, 6)},
}
"""

# every case: (name in the saved file, head, devices, max_heads_per_chunk)
SINGLE = DATA + """
import json, sys
import jax
from fmcache.heads import devices, fit_stack, train

seen = {}
def watch(module, name):
    # records how the inputs of the compiled trainer / solver were laid out, per call
    make = getattr(module, name)
    def record(fn, key):
        def run(*args):
            leaves = jax.tree_util.tree_leaves(args)
            seen.setdefault(key, []).append([
                [len(a.sharding.device_set), a.sharding.is_fully_replicated, list(a.sharding.shard_shape(a.shape))]
                for a in leaves if hasattr(a, "sharding")])
            return fn(*args)
        return run
    def wrapped(*a, **k):
        opt_init, steps = make(*a, **k)
        return opt_init, record(steps, "trainer")
    setattr(module, name, wrapped)
watch(train, "_trainer")

out, meta = {}, {"device_count": jax.device_count()}
for head in ("linear", "groupdro", "fairpenalty", "domain_ind", "lbfgs"):
    name = "linear" if head == "lbfgs" else head
    solver = "lbfgs" if head == "lbfgs" else "adamw"
    cases = [("d4", 4, None), ("d1", 1, None), ("d1c2", 1, 2)]
    if head in ("linear", "lbfgs"):  # several chunks on 4 devices, the last one padded
        cases += [("d4c1", 4, 1), ("d1c1", 1, 1)]
    for tag, n_dev, cap in cases:
        seen.clear()
        with devices.use(n_dev):
            fit = fit_stack(name, X, y, g, HP[head], epochs=3, batch_size=64, solver=solver, max_heads_per_chunk=cap)
            # scored on 4 devices and on 1 from the same parameters: the scoring alone
            for m in (4, 1):
                with devices.use(m):
                    out[f"{head}/{tag}/pred{m}"] = fit.predict(X, g if head == "domain_ind" else None)
        for path, v in jax.tree_util.tree_leaves_with_path(fit.params):
            out[f"{head}/{tag}/{jax.tree_util.keystr(path)}"] = v
        meta[f"{head}/{tag}"] = {"devices": int(fit.log["devices"]), "chunks": int(fit.log["chunks"]),
                                 "heads_per_chunk": int(fit.log["heads_per_chunk"]), "seen": seen.get("trainer")}
np.savez(sys.argv[1], **out)
print("META " + json.dumps(meta))
"""

# the same fits in one computation across two processes of 2 devices each
ACROSS = DATA + """
import sys
import jax
from fmcache.heads import devices
devices.join(sys.argv[2], 2, int(sys.argv[3]))
from fmcache.heads import fit_stack
assert jax.device_count() == 4 and jax.local_device_count() == 2
out = {}
for head in ("linear", "lbfgs"):
    name = "linear" if head == "lbfgs" else head
    fit = fit_stack(name, X, y, g, HP[head], epochs=3, batch_size=64, solver="lbfgs" if head == "lbfgs" else "adamw")
    assert fit.log["devices"] == 4
    out[f"{head}/w"] = fit.params["w"]
    out[f"{head}/pred"] = fit.predict(X)
np.savez(sys.argv[1], **out)
print("done", jax.process_index())
"""


def _env(n_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    script = tmp / "single.py"
    script.write_text(textwrap.dedent(SINGLE))
    done = subprocess.run([sys.executable, str(script), str(tmp / "out.npz")], env=_env(4), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads(next(line[5:] for line in done.stdout.splitlines() if line.startswith("META ")))
    assert meta["device_count"] == 4
    with np.load(tmp / "out.npz") as f:
        return dict(f), meta


ADAMW = ("linear", "groupdro", "fairpenalty", "domain_ind")


def _params(out: dict, head: str, tag: str) -> dict[str, np.ndarray]:
    prefix = f"{head}/{tag}/"
    return {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix) and not k[len(prefix):].startswith("pred")}


@pytest.mark.parametrize("head", ADAMW)
def test_heads_on_4_devices_equal_heads_on_one(fits, head):
    out, meta = fits
    assert meta[f"{head}/d4"]["heads_per_chunk"] == 8 and meta[f"{head}/d4"]["chunks"] == 1
    pairs = [("d4", "d1c2")]
    if head == "linear":
        assert meta[f"{head}/d4c1"]["heads_per_chunk"] == 4 and meta[f"{head}/d4c1"]["chunks"] == 2
        pairs.append(("d4c1", "d1c1"))
    # each device runs the program one device runs for the same number of heads: bit-equal
    # to one device training chunks of that size (the fallback for stacks too large)
    for four, one in pairs:
        p4, p1 = _params(out, head, four), _params(out, head, one)
        assert p4.keys() == p1.keys() and p4
        for k in p4:
            assert p4[k].shape[0] == K
            np.testing.assert_array_equal(p4[k], p1[k], err_msg=f"{head} {k}: {four} vs {one}")
    # against one device training all 6 at once: XLA's CPU kernels for the batched products
    # choose their blocking by the number of heads, so sums can round in another order (one
    # device alone shows it between chunk sizes, by an ulp or two at larger sizes)
    p4, p1 = _params(out, head, "d4"), _params(out, head, "d1")
    for k in p4:
        np.testing.assert_allclose(p4[k], p1[k], rtol=1e-5, atol=1e-7, err_msg=f"{head} {k}")


@pytest.mark.parametrize("head", (*ADAMW, "lbfgs"))
def test_predictions_on_4_devices_equal_predictions_on_one(fits, head):
    out, _ = fits
    for tag in ("d4", "d1"):
        p4, p1 = out[f"{head}/{tag}/pred4"], out[f"{head}/{tag}/pred1"]
        assert p4.shape == (K, 240)
        # the same parameters scored with 2 heads per device or 6 on one: see above
        np.testing.assert_allclose(p4, p1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[f"{head}/d4/pred4"], out[f"{head}/d1/pred1"], rtol=1e-4, atol=1e-5)


def test_lbfgs_on_4_devices_equals_lbfgs_on_one(fits):
    out, meta = fits
    assert meta["lbfgs/d4"]["devices"] == 4 and meta["lbfgs/d4"]["heads_per_chunk"] == 8
    assert meta["lbfgs/d4c1"]["devices"] == 4 and meta["lbfgs/d4c1"]["chunks"] == 2
    # not bit-equal: the partitioned solver's first gradient already differs from the
    # one-device solver's in the last bits (its products over the rows are summed in another
    # order), and a solver stopped at tol=1e-5 settles each head only to about that; one
    # device alone differs as much between chunks of 1 head and of 2
    ref = _params(out, "lbfgs", "d1")
    for tag in ("d4", "d4c1", "d1c2", "d1c1"):
        got = _params(out, "lbfgs", tag)
        assert got.keys() == ref.keys() and ref
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=f"lbfgs {k} {tag}")


def test_the_heads_are_split_over_4_devices(fits):
    _, meta = fits
    for head in ADAMW:
        assert meta[f"{head}/d4"]["devices"] == 4 and meta[f"{head}/d1"]["devices"] == 1
        calls = meta[f"{head}/d4"]["seen"]
        assert len(calls) == 1
        # params, state, X, Y, G, hparams, order: every input on all 4 devices; the heads'
        # leaves split 2 per device, the features whole on each
        leaves = calls[0]
        assert all(n == 4 for n, _, _ in leaves)
        assert any(not replicated and shape[0] == 2 for _, replicated, shape in leaves)
        assert [240, 12] in [shape for _, replicated, shape in leaves if replicated]
        assert all(n == 1 for n, _, _ in meta[f"{head}/d1"]["seen"][0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_of_as_many_devices(fits, tmp_path):
    out, _ = fits
    script = tmp_path / "across.py"
    script.write_text(textwrap.dedent(ACROSS))
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"p{i}.npz"), address, str(i)], env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for i, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        assert f"done {i}" in stdout
    for i in range(2):
        with np.load(tmp_path / f"p{i}.npz") as f:
            got = dict(f)
        # the same partitioned programs on the same 4 devices' worth of heads: bit-equal,
        # and every process holds all the results
        for head in ("linear", "lbfgs"):
            np.testing.assert_array_equal(got[f"{head}/w"], out[f"{head}/d4/['w']"])
            np.testing.assert_array_equal(got[f"{head}/pred"], out[f"{head}/d4/pred4"])


def _probe_across(roots: list[Path]) -> tuple[list[subprocess.Popen], list[tuple[str, str]]]:
    """`fmcache probe` as two processes of one computation, process i reading the cache at roots[i]."""
    address = f"localhost:{_free_port()}"
    args = ["probe", "-d", "synthetic", "-m", "toy", "--heads", "linear", "--n-boot", "20", "--epochs", "3",
            "--coordinator", address, "--num-processes", "2"]
    procs = [subprocess.Popen([sys.executable, "-c", "from fmcache.cli import main; main()", *args, "--root", str(root),
                               "--process-id", str(i)], env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i, root in enumerate(roots)]
    return procs, [p.communicate(timeout=240) for p in procs]


def test_probe_across_two_processes_writes_one_run(tmp_path):
    from helpers import toy

    toy.write_cache(tmp_path / "cache")
    procs, outs = _probe_across([tmp_path / "cache"] * 2)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "run:" in outs[0][0]
    # the other process trained its share and says so in one line; it writes nothing
    assert outs[1][0].strip().splitlines() == ["process 1 of 2: trained its share of the heads; process 0 writes the run(s)"]
    assert len([p for p in (tmp_path / "cache" / "runs").iterdir() if p.is_dir()]) == 1


def test_processes_reading_different_caches_are_refused_on_every_process(tmp_path):
    from helpers import toy

    # the same features written twice: two entries that read alike but are not the same write
    for name in ("a", "b"):
        toy.write_cache(tmp_path / name)
    procs, outs = _probe_across([tmp_path / "a", tmp_path / "b"])
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 1, err[-3000:]
        assert "differs between the processes" in err and "process(es) 1" in err and "Traceback" not in err
    assert not (tmp_path / "a" / "runs").exists() or not any(p.is_dir() for p in (tmp_path / "a" / "runs").iterdir())
