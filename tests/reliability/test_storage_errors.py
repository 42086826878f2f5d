"""A full disk, a read-only cache, and names that cannot name an entry: one plain line each,
and nothing already cached is lost."""

from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest
import zarr.storage
from helpers import fake_encoder as fe
from helpers.entries import SYNTHETIC_ARGS

import fmcache
from fmcache.embed.encode import embed
from fmcache.errors import CacheError, ProvenanceMismatchError


def _fail_writes(monkeypatch, code: int, after: int = 0) -> None:
    """Every store write (and, on a read-only store, every delete) after the first ``after`` fails
    with OSError ``code``."""
    count = [0]

    def failing(original):
        async def change(self, key, *args):
            count[0] += 1
            if count[0] > after:
                raise OSError(code, os.strerror(code), str(self.root / key))
            return await original(self, key, *args)

        return change

    names = ("set", "delete", "delete_dir") if code == errno.EROFS else ("set",)
    for name in names:
        monkeypatch.setattr(zarr.storage.LocalStore, name, failing(getattr(zarr.storage.LocalStore, name)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
    return root, fmcache.open_cache(root).embeddings("synthetic", fe.MODEL).features()


@pytest.mark.parametrize("after", [0, 20, 30])
def test_disk_full_is_one_line_and_a_rerun_finishes_the_entry(reference, tmp_path, monkeypatch, after):
    _, features = reference
    with monkeypatch.context() as mp:
        _fail_writes(mp, errno.ENOSPC, after=after)
        with pytest.raises(CacheError, match="the disk is full") as err:
            embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(), **fe.embed_kwargs())
    assert "\n" not in str(err.value) and "rerun the same command" in str(err.value)
    embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(), **fe.embed_kwargs())
    assert np.array_equal(fmcache.open_cache(tmp_path).embeddings("synthetic", fe.MODEL).features(), features)


def test_a_finished_entry_is_used_from_a_read_only_cache(reference, tmp_path, monkeypatch):
    root = shutil.copytree(reference[0], tmp_path / "ro")
    _fail_writes(monkeypatch, errno.EROFS)
    summary = embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
    assert summary.encoded == 0 and "already cached" in summary.line()
    assert np.array_equal(fmcache.open_cache(root).embeddings("synthetic", fe.MODEL).features(), reference[1])
    # what must write is refused in one line, and the entry is untouched
    with pytest.raises(CacheError, match="cannot write") as err:
        embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(2), overwrite=True, **fe.embed_kwargs())
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert np.array_equal(fmcache.open_cache(root).embeddings("synthetic", fe.MODEL).features(), reference[1])


def test_a_resume_with_another_batch_size_is_refused_and_a_plain_rerun_resumes(reference, tmp_path):
    class Stop(BaseException):
        pass

    def stop_after_two(chunk: int) -> None:
        if chunk == 1:
            raise Stop

    with pytest.raises(Stop):
        embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(), on_chunk=stop_after_two, **fe.embed_kwargs())
    with pytest.raises(ProvenanceMismatchError, match=r"batch_size: 2 -> 4.*unfinished|unfinished.*batch_size: 2 -> 4"):
        embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(), **fe.embed_kwargs(batch_size=4))
    summary = embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(), **fe.embed_kwargs(batch_size=None))
    assert summary.encoded == 8
    assert np.array_equal(fmcache.open_cache(tmp_path).embeddings("synthetic", fe.MODEL).features(), reference[1])


@pytest.mark.parametrize("args, name", [(["-d", "synthetic", "-m", "samples/"], "samples/"),
                                        (["-d", "synthetic/", "-m", "efficientnet_lite0"], "synthetic/"),
                                        (["-d", "..", "-m", "x"], "..")])
def test_names_that_cannot_name_an_entry_are_one_line(effnet_entry, run_cli, args, name):
    code, out, err = run_cli("probe", *args, "--root", str(effnet_entry.root))
    assert code == 1 and len(err.strip().splitlines()) == 1 and f"name {name!r} cannot name a cache entry" in err, err


def test_disk_full_from_the_command_line(effnet_entry, run_cli, tmp_path, monkeypatch):
    root = shutil.copytree(effnet_entry.root, tmp_path / "cache")
    _fail_writes(monkeypatch, errno.ENOSPC)
    code, out, err = run_cli("embed", "-m", "efficientnet_lite0", *SYNTHETIC_ARGS, "--root", str(root),
                             "--num-workers", "0", "--overwrite")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "the disk is full" in err, err
