"""Each model family, end to end: tiny checkpoint in the release's format -> cache -> read back
equals the library's own forward pass on the same preprocessed images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fmcache
from fmcache.datasets import load_dataset
from fmcache.embed.encode import embed
from fmcache.embed.preprocess import build_transform
from fmcache.embed.registry import get_model

from helpers.tiny_models import KEYS, direct_features, direct_text

# batches of two into chunks of three: a chunk filled by two batches, a batch split across two
# chunks, and a partial last chunk, with the fewest images that show all three
N, BATCH, CHUNK = 4, 2, 3


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", options={"size": str(N), "image_size": "64"})


@pytest.mark.parametrize("key", KEYS)
def test_cached_embedding_equals_the_model_run_directly(key, synthetic, tiny_checkpoints, tmp_path):
    weights = tiny_checkpoints[key]
    embed(synthetic, key, root=tmp_path / "cache", weights=weights, batch_size=BATCH, chunk_rows=CHUNK, num_workers=0, progress=False)
    emb = fmcache.open_cache(tmp_path / "cache").embeddings("synthetic", key)

    tf = build_transform(get_model(key).preprocess)
    x = torch.stack([tf(synthetic.image(i)) for i in range(N)])
    expected = direct_features(key, weights, x)
    assert sorted(emb.kinds) == sorted(expected)
    for kind, ref in expected.items():
        # float16 on disk: relative precision about 1e-3
        np.testing.assert_allclose(emb.features(kind=kind), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())

    if get_model(key).has_text:
        prompts = emb.prompts()
        protos = emb.text_prototypes()
        C, T = len(prompts["classes"]), len(prompts["templates"])
        assert protos.shape[:2] == (C, T)
        texts = [t.format(c) for c in prompts["classes"] for t in prompts["templates"]]
        ref = direct_text(key, weights, texts).reshape(C, T, -1)
        np.testing.assert_allclose(protos, ref, atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(protos, axis=-1), 1.0, atol=2e-3)
