"""A writer killed at every store write of a small embed: a plain rerun always finishes the
entry, never needs --overwrite, and equals an uninterrupted run bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import zarr.storage
from helpers import fake_encoder as fe

import fmcache
from fmcache.embed.encode import embed


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` in the writer catches it."""


def _writes_counted(monkeypatch, kill_at: int | None = None) -> list[str]:
    """Count every store write; raise Killed instead of performing write number ``kill_at``."""
    keys: list[str] = []
    original = zarr.storage.LocalStore.set

    async def set(self, key, value):
        if kill_at is not None and len(keys) == kill_at:
            raise Killed(key)
        keys.append(key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set)
    return keys


def _entry(root):
    emb = fmcache.open_cache(root).embeddings("synthetic", fe.MODEL)
    return emb.features(), emb.samples(), {k: emb.provenance[k] for k in ("weights_id", "batch_size", "n", "chunk_rows")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its entry and the keys it wrote, in order."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        keys = _writes_counted(mp)
        embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
    return _entry(root), keys


def test_a_run_writes_each_array_chunk_and_metadata_once_per_step(reference):
    _, keys = reference
    assert sum(k.endswith("zarr.json") and k.startswith("synthetic/tinyconv") for k in keys) >= 3
    assert sum(k.startswith("synthetic/tinyconv/image/c/") for k in keys) == 4  # one write per chunk


def test_killed_at_every_write_then_a_plain_rerun_equals_the_uninterrupted_run(reference, tmp_path):
    (features, samples, identity), keys = reference
    for k, key in enumerate(keys):
        root = tmp_path / f"kill{k}"
        with pytest.MonkeyPatch.context() as mp:
            _writes_counted(mp, kill_at=k)
            with pytest.raises(Killed):
                embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
        # the rerun is the same command: no --overwrite, no repair
        embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
        got_features, got_samples, got_identity = _entry(root)
        assert np.array_equal(got_features.view(np.uint32), features.view(np.uint32)), f"killed before writing {key}"
        assert got_samples.equals(samples) and got_identity == identity, f"killed before writing {key}"
