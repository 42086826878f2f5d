"""The embed stage: cached features equal the model run directly; interrupted runs resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fmcache
from fmcache.datasets import load_dataset
from fmcache.embed.encode import embed
from fmcache.embed.preprocess import build_transform
from fmcache.embed.registry import load_model

from helpers.entries import BATCH_SIZE, CHUNK_ROWS, N, SYNTHETIC_OPTIONS


@pytest.fixture(scope="module")
def effnet():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def synthetic():
    # the dataset of the shared effnet_entry
    return load_dataset("synthetic", options=SYNTHETIC_OPTIONS)


def _direct(enc, ds, kind="image") -> np.ndarray:
    tf = build_transform(enc.spec.preprocess)
    x = torch.stack([tf(ds.image(i)) for i in range(len(ds.table))])
    with torch.inference_mode():
        return enc.encode_image(x)[kind].float().numpy()


def test_packaged_weights_are_real_imagenet_weights(effnet):
    # an independent check of the positional key mapping: a daisy photo must come out as a daisy
    from PIL import Image
    from sklearn.datasets import load_sample_image

    x = build_transform(effnet.spec.preprocess)(Image.fromarray(load_sample_image("flower.jpg")))
    with torch.inference_mode():
        logits = effnet.module(x[None])
    assert int(logits.argmax()) == 985  # ImageNet class 985: daisy
    assert effnet.weights_sha256 and len(effnet.weights_sha256) == 64


def test_cached_features_equal_the_model_run_directly(effnet, synthetic, effnet_entry):
    # every row encoded by this run, none reused
    assert f"synthetic/efficientnet_lite0: {N} images cached" in effnet_entry.out
    assert f"encoded {N} in" in effnet_entry.out and "reused" not in effnet_entry.out
    emb = fmcache.open_cache(effnet_entry.root).embeddings("synthetic", "efficientnet_lite0")
    np.testing.assert_allclose(emb.features(), _direct(effnet, synthetic), rtol=2e-3, atol=2e-3)
    assert emb.provenance["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert emb.provenance["row_fingerprint"] == synthetic.fingerprint
    # the samples table travels with the features
    assert list(emb.samples()["id"]) == list(synthetic.table["id"])
    np.testing.assert_array_equal(emb.groups("sex"), synthetic.table["sa/sex"].to_numpy())


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_without_recomputing_finished_chunks(effnet, synthetic, effnet_entry, tmp_path):
    written_first: list[int] = []

    def stop_after_two(chunk: int) -> None:
        written_first.append(chunk)
        if len(written_first) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        embed(synthetic, "efficientnet_lite0", root=tmp_path / "a", encoder=effnet, batch_size=BATCH_SIZE,
              chunk_rows=CHUNK_ROWS, num_workers=0, progress=False, on_chunk=stop_after_two)
    with pytest.raises(fmcache.FmcacheError, match="incomplete"):
        fmcache.open_cache(tmp_path / "a").embeddings("synthetic", "efficientnet_lite0")

    seen_rows = []
    original = effnet.encode_image

    def counting(x):
        seen_rows.append(x.shape[0])
        return original(x)

    written_second: list[int] = []
    counted = dataclasses.replace(effnet, encode_image=counting)
    s = embed(synthetic, "efficientnet_lite0", root=tmp_path / "a", encoder=counted, batch_size=BATCH_SIZE,
              chunk_rows=CHUNK_ROWS, num_workers=0, progress=False, on_chunk=written_second.append)
    assert sorted(written_first + written_second) == list(range(N // CHUNK_ROWS))
    assert sum(seen_rows) == s.encoded == N - 2 * CHUNK_ROWS

    # the shared entry: an uninterrupted run over the same batches
    assert f"encoded {N} in" in effnet_entry.out
    a = fmcache.open_cache(tmp_path / "a").embeddings("synthetic", "efficientnet_lite0").features()
    b = fmcache.open_cache(effnet_entry.root).embeddings("synthetic", "efficientnet_lite0").features()
    np.testing.assert_array_equal(a, b)


def test_non_finite_features_are_refused(effnet, synthetic, tmp_path):
    def broken(x):
        out = effnet.encode_image(x)["image"].clone()
        out[0, 0] = float("nan")
        return {"image": out}

    bad = dataclasses.replace(effnet, encode_image=broken)
    with pytest.raises(fmcache.FmcacheError, match="non-finite"):
        # the first batch already carries the NaN: a small one is enough
        embed(synthetic, "efficientnet_lite0", root=tmp_path, encoder=bad, batch_size=BATCH_SIZE, num_workers=0,
              progress=False)
