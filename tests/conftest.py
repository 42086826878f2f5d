"""Test isolation (no network, no user cache, no user weights), and the expensive things that
tests share: finished cache entries and tiny checkpoints, each built once per session."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

# The head tests compile many small XLA programs that then run for milliseconds: at the lowest
# backend optimisation level they compile in about two thirds of the CPU time. Tests check
# numbers, not speed; XLA_FLAGS set by the caller win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")


def _isolate(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("FMCACHE_HOME", str(home / "cache"))
    mp.setenv("FMCACHE_WEIGHTS", str(home / "weights"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_HOME", str(home / "hf"))
    mp.delenv("FMCACHE_DATA", raising=False)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    _isolate(monkeypatch, tmp_path_factory.mktemp("home"))


def _exit_code(mp: pytest.MonkeyPatch, *args: str) -> int:
    """Run the `fmcache` entry point in-process with ``args``; its exit code."""
    from fmcache.cli import main

    mp.setattr(sys, "argv", ["fmcache", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _main(mp: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _exit_code(mp, *args)
    return code, out.getvalue()


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the `fmcache` entry point in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = _exit_code(monkeypatch, *args)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def effnet_entry(tmp_path_factory):
    """helpers.entries' synthetic dataset embedded by `fmcache embed -m efficientnet_lite0`.

    ``root`` is the cache root, ``out`` the command's stdout. Tests read it in place and must
    not write to it: one that writes to a cache copies the root first (``shutil.copytree``).
    """
    from helpers import entries

    root = tmp_path_factory.mktemp("effnet-entry")
    with pytest.MonkeyPatch.context() as mp:
        # session fixtures are set up before the per-test isolation applies
        _isolate(mp, tmp_path_factory.mktemp("effnet-entry-home"))
        # one decoding worker, so that the default run covers the worker path as well
        code, out = _main(mp, "embed", "-m", "efficientnet_lite0", *entries.SYNTHETIC_ARGS, "--root", str(root),
                          "--num-workers", "1", "-b", str(entries.BATCH_SIZE), "--chunk-rows", str(entries.CHUNK_ROWS))
    assert code == 0, out
    return SimpleNamespace(root=root, out=out)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Tiny checkpoints by registry key, each built on first use. A checkpoint is never edited in
    place: tests copy it first (the reference models in helpers.tiny_models are kept per path)."""
    from helpers import tiny_models

    return tiny_models.Checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """helpers.toy's probe run (``run``) on its directly written cache (``root``). Read only."""
    from helpers import toy

    root = tmp_path_factory.mktemp("toy-run")
    return SimpleNamespace(run=toy.shared_run(root), root=root)


@pytest.fixture(scope="session")
def toy_report(toy_run):
    """The HTML report of ``toy_run``, with the representation section (``path``)."""
    from fmcache.report import build_report

    return SimpleNamespace(run=toy_run.run, root=toy_run.root,
                           path=build_report([toy_run.run.path], toy_run.root / "study.html"))


@pytest.fixture(scope="session")
def sam_weights(tmp_path_factory):
    """A tiny SAM (helpers.tiny_sam) saved under the ViT-B checkpoint's file name."""
    from helpers.tiny_sam import save_flat, tiny_sam

    return str(save_flat(tiny_sam(), tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"))


@pytest.fixture(scope="session")
def montgomery_sam(sam_weights, tmp_path_factory):
    """helpers.seg_layouts' Montgomery release (two classes: left and right lung) cached by the
    tiny SAM: ``ds``, ``data``, ``root`` (the cache root), ``sam`` (the loaded model). Tests
    must not change the entry; runs they write go to their own ``runs=`` folder or beside it."""
    from helpers import seg_layouts

    from fmcache.datasets import load_dataset
    from fmcache.segment.features import embed_features
    from fmcache.segment.sam import load_sam

    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("montgomery-home"))
        data = seg_layouts.write_montgomery(tmp_path_factory.mktemp("montgomery"))
        root = tmp_path_factory.mktemp("montgomery-cache")
        ds = load_dataset("montgomery", data=data)
        sam = load_sam("sam", weights=sam_weights)
        embed_features(ds, "sam", root=root, sam=sam, chunk_rows=4, progress=False)
    return SimpleNamespace(ds=ds, data=data, root=root, sam=sam)
