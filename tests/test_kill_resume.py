"""A real kill (SIGKILL) in the middle of `fmcache embed`, then a rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import fmcache

ARGS = ["embed", "-m", "efficientnet_lite0", "-d", "synthetic", "-o", "size=80", "-o", "image_size=48",
        "--chunk-rows", "8", "-b", "4", "--num-workers", "1"]


def _cli(root, *extra) -> subprocess.Popen:
    env = {**os.environ, "FMCACHE_HOME": str(root)}
    return subprocess.Popen([sys.executable, "-m", "fmcache.cli", *ARGS, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(root) -> np.ndarray:
    try:
        return np.asarray(zarr.open_group(str(root), mode="r")["synthetic/efficientnet_lite0/done"][...])
    except (FileNotFoundError, KeyError):
        return np.zeros(0, bool)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_result(tmp_path):
    killed = tmp_path / "killed"
    p = _cli(killed)
    deadline = time.time() + 300
    while _done(killed).sum() < 3:
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_at_kill = _done(killed)
    assert 3 <= done_at_kill.sum() < done_at_kill.size

    out, err = _cli(killed).communicate()
    assert "reused from an earlier run" in out, err
    encoded = int(out.split("encoded ")[1].split()[0])
    # only the unfinished chunks were computed again (a chunk finished after our look counts too)
    assert encoded <= 8 * int((~done_at_kill).sum())

    fresh = tmp_path / "fresh"
    out, err = _cli(fresh).communicate()
    assert "80 images cached" in out, err
    a = fmcache.open_cache(killed).embeddings("synthetic", "efficientnet_lite0").features()
    b = fmcache.open_cache(fresh).embeddings("synthetic", "efficientnet_lite0").features()
    np.testing.assert_array_equal(a, b)
