"""Test isolation (no network, no user cache, no user weights), and the expensive things that
tests share, each built once per session."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FMCACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("FMCACHE_WEIGHTS", str(home / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("FMCACHE_DATA", raising=False)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the `fmcache` entry point in-process: returns (exit code, stdout, stderr)."""
    from fmcache.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["fmcache", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Tiny checkpoints by registry key, each built on first use. A checkpoint is never edited in
    place: tests copy it first (the reference models in helpers.tiny_models are kept per path)."""
    from helpers import tiny_models

    return tiny_models.Checkpoints(tmp_path_factory.mktemp("tiny"))
