"""SAM-family image features in the cache: equal to the encoder run directly, one object per
shard, resumable bit for bit, checked on read and by `cache verify`, and decodable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.tiny_sam import save_flat, tiny_sam

import fmcache
from fmcache.cache.verify import verify
from fmcache.datasets import load_dataset
from fmcache.errors import CacheDamagedError
from fmcache.segment.features import (
    FEATURES,
    POOLED,
    SIZES,
    cached_items,
    embed_features,
)
from fmcache.segment.sam import decode, encode, load_sam

N, CHUNK, BATCH = 6, 2, 2


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    return load_sam("sam", weights=str(save_flat(tiny_sam(), tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")))


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", options={"size": str(N), "image_size": "48"})


@pytest.fixture(scope="module")
def entry(sam, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sam-cache")
    out = embed_features(data, "sam", root=root, sam=sam, chunk_rows=CHUNK, batch_size=BATCH, progress=False)
    return root, out


def _images(data):
    return [np.asarray(data.image(i).convert("RGB")) for i in range(N)]


def test_cached_features_equal_the_encoder_run_directly(sam, data, entry):
    root, out = entry
    assert out.encoded == N and "features 64x64x64" in out.line()
    emb = fmcache.open_cache(root).embeddings(data.name, "sam")
    want, meta = encode(sam, _images(data), batch_size=BATCH)
    got = emb.item_rows(FEATURES, np.arange(N))
    assert got.shape == want.shape == (N, 64, 64, 64)
    np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32), rtol=0, atol=0)
    np.testing.assert_array_equal(emb.item_rows(SIZES, np.arange(N)), meta.sizes())
    assert emb.item_rows(SIZES, [0]).dtype == np.int32 and tuple(meta.sizes()[0]) == (48, 48, 1024, 1024)
    np.testing.assert_allclose(emb.features(kind=POOLED), meta.pooled, atol=2e-3)
    # one stored object per shard of CHUNK items, not one per item
    shards = [p for p in (Path(root) / data.name / "sam" / FEATURES / "c").rglob("*") if p.is_file()]
    assert len(shards) == N // CHUNK


def test_a_prompt_decodes_from_the_cache_as_from_the_image(sam, data, entry):
    root, _ = entry
    emb = fmcache.open_cache(root).embeddings(data.name, "sam")
    rows = np.array([1, 4])
    features, meta = cached_items(emb, rows)
    direct, direct_meta = encode(sam, [_images(data)[i] for i in rows], batch_size=BATCH)
    box = np.array([[8.0, 8.0, 40.0, 40.0]] * len(rows))
    cached = decode(sam, features, meta, boxes=box)
    fresh = decode(sam, direct, direct_meta, boxes=box)
    for a, b in zip(cached.masks, fresh.masks):
        assert a.shape == b.shape == (48, 48)
        assert (a != b).mean() <= 0.01  # float16 features: a pixel at the logit threshold may flip


def test_an_interrupted_embed_resumes_to_the_same_entry_and_damage_is_named(sam, data, entry, tmp_path):
    def stop_after_first(chunk: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        embed_features(data, "sam", root=tmp_path, sam=sam, chunk_rows=CHUNK, batch_size=BATCH, progress=False,
                       on_chunk=stop_after_first)
    again = embed_features(data, "sam", root=tmp_path, sam=sam, chunk_rows=CHUNK, progress=False)
    assert again.encoded == N - CHUNK  # the batch size the entry was made with, and only what was missing
    a = fmcache.open_cache(tmp_path).embeddings(data.name, "sam").item_rows(FEATURES, np.arange(N))
    b = fmcache.open_cache(entry[0]).embeddings(data.name, "sam").item_rows(FEATURES, np.arange(N))
    np.testing.assert_array_equal(a, b)
    assert verify(str(tmp_path)) == []
    # damage the second shard: verify names its chunk, a read of its items fails, the others read
    shard = tmp_path / data.name / "sam" / FEATURES / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    findings = verify(str(tmp_path))
    assert [(f.model, f.chunks) for f in findings] == [("sam", [1])]
    emb = fmcache.open_cache(tmp_path).embeddings(data.name, "sam")
    with pytest.raises(CacheDamagedError, match="chunk 1 \\(rows 2-3\\)"):
        emb.item_rows(FEATURES, [2])
    assert emb.item_rows(FEATURES, [0]).shape == (1, 64, 64, 64)
    # a shard or chunk gone from the store is named by a read of a few items too, not read as fill
    shard.unlink()
    (tmp_path / data.name / "sam" / POOLED / "c" / "0" / "0").unlink()
    with pytest.raises(CacheDamagedError, match="chunk 1 \\(rows 2-3\\) is missing"):
        emb.item_rows(FEATURES, [3])
    with pytest.raises(CacheDamagedError, match="chunk 0 \\(rows 0-1\\) is missing"):
        emb.items([0], [FEATURES, POOLED])
