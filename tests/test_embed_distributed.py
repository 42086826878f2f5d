"""Several processes under torchrun writing one entry: each chunk by one process, the result bit
for bit a one-process run's, a killed rank's chunks resumed by a rerun with any number of
processes, and entries whose done bitmap is one object (older fmcache) still resumed.

torchrun sets OMP_NUM_THREADS=1 in its workers; the one-process references run with one torch
thread too, so that a different reduction order cannot change the last bits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr
from helpers import dist_embed, fake_encoder
from helpers.tiny_sam import save_flat, tiny_sam

import fmcache
from fmcache.cache import layout as L
from fmcache.cache.store import open_root
from fmcache.datasets import load_dataset
from fmcache.embed import distributed
from fmcache.embed.encode import embed
from fmcache.embed.registry import load_model
from fmcache.segment.features import FEATURES, POOLED, SIZES, embed_features
from fmcache.segment.sam import load_sam

CHECKOUT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(dist_embed.__file__)
CLI_N, CLI_CHUNK = 24, 3  # 8 chunks of 3 rows, one batch each


@contextlib.contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                          "--master-port", str(_free_port()), *map(str, args)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and its workers: none left behind
        out, err = p.communicate()
        raise AssertionError(f"torchrun did not finish:\n{err}") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _reports(folder: Path) -> dict[int, dict]:
    return {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in folder.glob("rank*.json")}


def _entry(root, dataset: str, model: str) -> zarr.Group:
    return open_root(str(root))[dataset][model]


def _assert_same_entry(got_root, want_root, dataset: str, model: str) -> None:
    """Every array of the entry equal bit for bit, and both complete."""
    got, want = _entry(got_root, dataset, model), _entry(want_root, dataset, model)
    assert got.attrs["state"] == want.attrs["state"] == L.STATE_COMPLETE
    names = [*want.attrs["feature_kinds"], L.DONE]
    for name in names:
        a, b = np.asarray(got[name][...]), np.asarray(want[name][...])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), f"{name} differs"
    assert np.asarray(got[L.DONE][...]).all()


@pytest.fixture(scope="module")
def classify_reference(tmp_path_factory):
    """The launcher's classification entry written by one process."""
    root = tmp_path_factory.mktemp("classify-one")
    with _one_thread():
        embed(load_dataset("synthetic", options=dist_embed.CLASSIFY), fake_encoder.MODEL, root=root,
              encoder=fake_encoder.encoder(), **dist_embed.CLASSIFY_KW)
    return root


@pytest.fixture(scope="module")
def sam_weights(tmp_path_factory):
    return save_flat(tiny_sam(), tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")


def test_two_processes_through_the_cli_equal_one_process(tmp_path):
    args = ["embed", "-m", "efficientnet_lite0", "-d", "synthetic", "-o", f"size={CLI_N}", "-o", "image_size=32",
            "--chunk-rows", str(CLI_CHUNK), "-b", str(CLI_CHUNK), "--num-workers", "0"]
    run = _torchrun(2, "-m", "fmcache", *args, "--root", tmp_path / "two")
    assert run.returncode == 0, run.stderr
    # rank 0 alone reports, for the whole job
    assert run.stdout.count("images cached") == 1, run.stdout
    assert f"{CLI_N} images cached" in run.stdout and f"encoded {CLI_N} in" in run.stdout, run.stdout
    with _one_thread():
        embed(load_dataset("synthetic", options={"size": str(CLI_N), "image_size": "32"}), "efficientnet_lite0",
              root=tmp_path / "one", encoder=load_model("efficientnet_lite0"), batch_size=CLI_CHUNK,
              chunk_rows=CLI_CHUNK, num_workers=0, progress=False, device="cpu")
    _assert_same_entry(tmp_path / "two", tmp_path / "one", "synthetic", "efficientnet_lite0")
    done = _entry(tmp_path / "two", "synthetic", "efficientnet_lite0")[L.DONE]
    assert done.chunks == (1,) and done.shape == (CLI_N // CLI_CHUNK,)
    assert _entry(tmp_path / "two", "synthetic", "efficientnet_lite0").attrs["last_run"]["processes"] == 2


def _interrupted_entry(root, *, legacy: bool) -> None:
    """The classification entry with chunks 0-2 done, as a run stopped there leaves it; ``legacy``: its done
    bitmap one object, as an older fmcache made it."""
    def stop_after_three(chunk: int) -> None:
        if chunk == 2:
            raise KeyboardInterrupt

    with _one_thread(), pytest.raises(KeyboardInterrupt):
        embed(load_dataset("synthetic", options=dist_embed.CLASSIFY), fake_encoder.MODEL, root=root,
              encoder=fake_encoder.encoder(), on_chunk=stop_after_three, **dist_embed.CLASSIFY_KW)
    group = open_root(str(root), mode="a")["synthetic"][fake_encoder.MODEL]
    done = np.asarray(group[L.DONE][...])
    assert done[:3].all() and not done[3:].any()
    if legacy:
        group.create_array(L.DONE, shape=done.shape, dtype=bool, chunks=done.shape, fill_value=False, overwrite=True)
        group[L.DONE][...] = done


@pytest.fixture(scope="module")
def launch(tmp_path_factory, sam_weights):
    """One torchrun launch of 2 processes (starting one costs more than its work): the classification
    entry at a file:// root, SAM features at another, rank 0's refusal of a mismatching request, and
    the resumption of an entry whose done bitmap is one object."""
    tmp = tmp_path_factory.mktemp("launch")
    roots = SimpleNamespace(classify=f"file://{tmp / 'classify'}", sam=f"file://{tmp / 'sam'}", legacy=tmp / "legacy",
                            reports=tmp)
    _interrupted_entry(roots.legacy, legacy=True)
    run = _torchrun(2, LAUNCHER, roots.classify, tmp, "--sam", sam_weights, roots.sam, "--mismatch",
                    "--resume", roots.legacy)
    assert run.returncode == 0, run.stderr
    reports = _reports(tmp)
    assert sorted(reports) == [0, 1]
    return roots, reports


def test_two_processes_at_a_file_url_root_share_whole_chunks(launch, classify_reference):
    roots, reports = launch
    # whole chunks, disjoint, every one written once; the summaries count the whole job
    assert [reports[r]["classify"]["chunks"] for r in (0, 1)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert all(reports[r]["classify"]["encoded"] == reports[r]["classify"]["n"] == 16 for r in (0, 1))
    _assert_same_entry(roots.classify, classify_reference, "synthetic", fake_encoder.MODEL)
    done = _entry(roots.classify, "synthetic", fake_encoder.MODEL)[L.DONE]
    assert done.chunks == (1,)  # each mark its own object: no two processes rewrite one
    assert _entry(roots.classify, "synthetic", fake_encoder.MODEL).attrs["last_run"]["processes"] == 2


def test_sam_features_by_two_processes_equal_one_process(launch, sam_weights, tmp_path):
    roots, reports = launch
    assert [reports[r]["sam"]["chunks"] for r in (0, 1)] == [[0, 2], [1]]
    assert reports[0]["sam"]["encoded"] == 6
    with _one_thread():
        embed_features(load_dataset("synthetic", options=dist_embed.SAM), "sam", root=tmp_path,
                       sam=load_sam("sam", weights=str(sam_weights)), **dist_embed.SAM_KW)
    _assert_same_entry(roots.sam, tmp_path, "synthetic", "sam")
    emb = fmcache.open_cache(roots.sam).embeddings("synthetic", "sam")
    assert emb.items(np.arange(6), (FEATURES, SIZES, POOLED))[FEATURES].shape[0] == 6


def test_rank_0s_refusal_reaches_every_rank_as_the_same_error(launch):
    _, reports = launch
    got = [reports[r]["mismatch"] for r in (0, 1)]
    assert got[0]["error"] == got[1]["error"] == "ProvenanceMismatchError"
    assert got[0]["message"] == got[1]["message"] and "batch_size" in got[0]["message"]
    assert [g["says"] for g in got] == [True, False]  # rank 1's is a copy: the CLI leaves saying it to rank 0


def test_a_one_object_done_bitmap_is_split_before_a_job_shares_out_what_is_pending(launch, classify_reference):
    roots, reports = launch
    assert [reports[r]["resume"]["chunks"] for r in (0, 1)] == [[3, 5, 7], [4, 6]]
    assert reports[0]["resume"]["encoded"] == 5 * 2
    assert _entry(roots.legacy, "synthetic", fake_encoder.MODEL)[L.DONE].chunks == (1,)
    _assert_same_entry(roots.legacy, classify_reference, "synthetic", fake_encoder.MODEL)


def test_a_one_object_done_bitmap_resumes_in_one_process(tmp_path, classify_reference):
    _interrupted_entry(tmp_path, legacy=True)
    with _one_thread():
        summary = embed(load_dataset("synthetic", options=dist_embed.CLASSIFY), fake_encoder.MODEL, root=tmp_path,
                        encoder=fake_encoder.encoder(), **dist_embed.CLASSIFY_KW)
    assert summary.encoded == 5 * 2
    # a process alone leaves the bitmap as it is: it races no one
    assert _entry(tmp_path, "synthetic", fake_encoder.MODEL)[L.DONE].chunks == (8,)
    _assert_same_entry(tmp_path, classify_reference, "synthetic", fake_encoder.MODEL)


def test_a_killed_rank_leaves_its_chunks_undone_and_a_rerun_with_more_processes_finishes_them(
        tmp_path, classify_reference):
    root = tmp_path / "cache"
    (tmp_path / "killed").mkdir()
    run = _torchrun(2, LAUNCHER, root, tmp_path / "killed", "--die-after-first-chunk", "1")
    assert run.returncode != 0
    entry = _entry(root, "synthetic", fake_encoder.MODEL)
    assert entry.attrs["state"] == L.STATE_WRITING
    done = np.asarray(entry[L.DONE][...])
    assert done[1] and not done[[3, 5, 7]].any()  # rank 1's first chunk stays, its others were never written
    with pytest.raises(fmcache.FmcacheError, match="incomplete"):
        fmcache.open_cache(root).embeddings("synthetic", fake_encoder.MODEL)
    undone = [int(c) for c in np.flatnonzero(~done)]

    # three processes now (one alone resumes as well: see the one-object bitmap tests)
    run = _torchrun(3, LAUNCHER, root, tmp_path)
    assert run.returncode == 0, run.stderr
    reports = _reports(tmp_path)
    assert [reports[r]["classify"]["chunks"] for r in (0, 1, 2)] == [undone[r::3] for r in (0, 1, 2)]
    assert reports[0]["classify"]["encoded"] == len(undone) * dist_embed.CLASSIFY_KW["chunk_rows"]
    _assert_same_entry(root, classify_reference, "synthetic", fake_encoder.MODEL)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_the_cli_says_an_error_on_rank_0_only_and_every_rank_exits_with_its_code(rank, run_cli, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("fmcache.cli.main"), "SECONDARY_GRACE_SECONDS", 0.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    code, out, err = run_cli("embed", "-m", "no_such_model", "-d", "synthetic")
    assert code == 1 and out == ""
    assert ("no_such_model" in err) == (rank == "0"), err


def test_a_job_refuses_a_root_that_only_one_process_can_see():
    job = distributed.Job(rank=0, world=2, local_world=2)
    with pytest.raises(fmcache.FmcacheError, match="every process can reach"):
        with distributed.writing(job, "memory://cache", "synthetic", None, {}, "m", {},
                                 progress=distributed.Progress(False, "")):
            pass


def test_a_job_wants_one_process_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(fmcache.FmcacheError, match="--nproc-per-node 1"):
        distributed.Job(rank=1, world=2, local_rank=1, local_world=2).device("auto")
    assert distributed.Job(rank=1, world=2, local_rank=1, local_world=2).device("cpu") == "cpu"
