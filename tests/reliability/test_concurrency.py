"""Two writers of one entry never interleave: the second waits (or, with no-wait, stops naming
the first), --overwrite never deletes an entry being written, and a reader holding an entry
that is replaced raises instead of mixing two models' numbers."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
from helpers import fake_encoder as fe

import fmcache
from fmcache.embed.encode import embed
from fmcache.errors import CacheError, CacheLockedError


def _features(root) -> np.ndarray:
    return fmcache.open_cache(root).embeddings("synthetic", fe.MODEL).features()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each weight version's features from a run alone."""
    out = {}
    for version in (1, 2):
        root = tmp_path_factory.mktemp(f"v{version}")
        embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(version), **fe.embed_kwargs())
        out[version] = _features(root)
    return out


class Paused:
    """Runs an embed in a thread that stops after its first chunk until ``go`` is set."""

    def __init__(self, root, version: int = 1):
        self.go, self.paused = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.summary = None

        def on_chunk(chunk: int) -> None:
            if chunk == 0:
                self.paused.set()
                assert self.go.wait(60), "the second writer never showed up"

        def run() -> None:
            try:
                self.summary = embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(version),
                                     on_chunk=on_chunk, **fe.embed_kwargs())
            except BaseException as e:  # noqa: BLE001 - reported by join()
                self.error = e
                self.paused.set()

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.paused.wait(60)

    def join(self):
        self.go.set()
        self.thread.join(60)
        if self.error:
            raise self.error
        return self.summary


def test_a_second_embed_waits_then_finds_the_entry_done(reference, tmp_path):
    first = Paused(tmp_path)
    told = []
    second = threading.Thread(target=lambda: told.append(embed(
        fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(1),
        on_wait=lambda line: (told.append(line), first.go.set()), **fe.embed_kwargs())))
    second.start()
    assert first.join().encoded == 16
    second.join(60)
    line, summary = told
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line and "waiting" in line
    assert summary.encoded == 0  # nothing encoded twice
    assert np.array_equal(_features(tmp_path), reference[1])


def test_no_wait_stops_and_names_the_writer(tmp_path):
    first = Paused(tmp_path)
    with pytest.raises(CacheLockedError, match=rf"synthetic/{fe.MODEL} is being written by pid {os.getpid()}"):
        embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(1), wait=False, **fe.embed_kwargs())
    first.join()


def test_overwrite_waits_for_the_running_writer_and_never_mixes(reference, tmp_path):
    first = Paused(tmp_path, version=1)
    second = threading.Thread(target=lambda: embed(
        fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(2), overwrite=True,
        on_wait=lambda line: first.go.set(), **fe.embed_kwargs()))
    second.start()
    first.join()
    second.join(60)
    emb = fmcache.open_cache(tmp_path).embeddings("synthetic", fe.MODEL)
    assert emb.provenance["weights_id"] == "tinyconv-v2"
    assert np.array_equal(emb.features(), reference[2])


def test_a_reader_of_a_replaced_entry_raises(reference, tmp_path):
    embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(1), **fe.embed_kwargs())
    held = fmcache.open_cache(tmp_path).embeddings("synthetic", fe.MODEL)
    assert np.array_equal(held.features(), reference[1])
    go, paused = threading.Event(), threading.Event()

    def on_chunk(chunk: int) -> None:
        if chunk == 1:
            paused.set()
            go.wait(60)

    t = threading.Thread(target=lambda: embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(2), overwrite=True,
                                              on_chunk=on_chunk, **fe.embed_kwargs()))
    t.start()
    assert paused.wait(60)
    for split in (None, "train", "test"):  # mid-overwrite: half the new model's chunks are written
        with pytest.raises(CacheError, match="replaced or removed after it was opened"):
            held.features(split=split)
    go.set()
    t.join(60)
    with pytest.raises(CacheError, match="replaced or removed"):
        held.features()
    assert np.array_equal(fmcache.open_cache(tmp_path).embeddings("synthetic", fe.MODEL).features(), reference[2])
