"""Real processes: `fmcache embed` killed with SIGKILL at random moments, and two `fmcache embed`
processes at once (one of them --overwrite with other weights). Slow: each is a full run of the
command with a real model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import fmcache
from fmcache.embed.registry import get_model

N = 40
ARGS = ["embed", "-m", "efficientnet_lite0", "-d", "synthetic", "-o", f"size={N}", "-o", "image_size=48",
        "--chunk-rows", "8", "-b", "4", "--num-workers", "1"]


def _cli(root, *extra) -> subprocess.Popen:
    env = {**os.environ, "FMCACHE_HOME": str(root)}
    return subprocess.Popen([sys.executable, "-m", "fmcache.cli", *ARGS, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(root, *extra) -> str:
    out, err = _cli(root, *extra).communicate()
    assert f"{N} images" in out, err
    return out


def _entry(root):
    emb = fmcache.open_cache(root).embeddings("synthetic", "efficientnet_lite0")
    return emb.features(), emb.provenance["weights_id"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    _run(root)
    return _entry(root)[0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_then_a_plain_rerun_gives_the_uninterrupted_result(reference, tmp_path, seed):
    delay = random.Random(seed).uniform(1.0, 12.0)  # model loading, the samples table, or chunks
    p = _cli(tmp_path)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    out = _run(tmp_path)
    assert "--overwrite" not in out
    np.testing.assert_array_equal(_entry(tmp_path)[0], reference)


@pytest.mark.slow
def test_two_processes_at_once_never_mix(reference, tmp_path):
    first, second = _cli(tmp_path), _cli(tmp_path)
    outs = [p.communicate() for p in (first, second)]
    assert all(p.returncode == 0 for p in (first, second)), outs
    # one encoded the images, the other waited for it and found them cached
    assert sorted("already cached" in out for out, _ in outs) == [False, True], outs
    np.testing.assert_array_equal(_entry(tmp_path)[0], reference)


@pytest.mark.slow
def test_overwrite_with_other_weights_against_a_running_embed(reference, tmp_path):
    other = tmp_path / "other.pth"
    from fmcache.embed.registry import load_model

    state = load_model("efficientnet_lite0").module.state_dict()
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, other)
    alone = tmp_path / "alone"
    _run(alone, "--weights", str(other))
    expected, expected_id = _entry(alone)

    mixed = tmp_path / "cache"
    first = _cli(mixed)
    time.sleep(4.0)
    second = _cli(mixed, "--overwrite", "--weights", str(other))
    outs = [p.communicate() for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    features, weights_id = _entry(mixed)
    assert weights_id == expected_id != get_model("efficientnet_lite0").weights
    np.testing.assert_array_equal(features, expected)
