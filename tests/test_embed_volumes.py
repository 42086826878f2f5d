"""2.5D: volumes are resampled, every slice is encoded and cached in order, and a planted
positive slice makes the volume positive under max pooling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fmcache
from fmcache.datasets import attributes as A
from fmcache.datasets.samples import Dataset, build_samples
from fmcache.datasets.spec import DatasetSpec, RawTable
from fmcache.embed.encode import embed
from fmcache.embed.preprocess import build_transform
from fmcache.embed.registry import load_model

N, DEPTH, SLICES = 20, 10, 4


def _blob_slice(i: int) -> int:
    return 3 + (5 * i) % (DEPTH - 6)


def _read(root, options) -> RawTable:
    ids = [f"vol{i:02d}" for i in range(N)]
    return RawTable(pd.DataFrame({"id": ids, "subject": ids, "path": "", "label/planted": [i % 2 for i in range(N)],
                                  "raw/sex": ["M", "F"] * (N // 2)}))


def _load(root, row) -> np.ndarray:
    i = int(row["id"][3:])
    rng = np.random.default_rng(i)
    vol = 0.2 + 0.05 * rng.random((DEPTH, 48, 48), dtype=np.float32)
    if i % 2:
        # a lesion a few slices thick: resampling DEPTH slices to SLICES must not be able to skip it
        yy, xx = np.mgrid[:48, :48]
        k = _blob_slice(i)
        vol[k - 1 : k + 2] += 0.8 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 40.0)
    return np.clip(vol, 0, 1).astype(np.float32)


SPEC = DatasetSpec(key="toyvol", title="planted volumes", modality="CT", version="1", read=_read, labels=("planted",),
                   task="binary", attributes={"sex": A.categorical({"M": "male", "F": "female"}, groups=("male", "female"))},
                   layout="generated", obtain="generated", load=_load, needs_data=False, dim="3d")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    table, fp = build_samples(SPEC, _read(None, {}), seed=0)
    ds = Dataset(spec=SPEC, name="toyvol", root=None, options={}, seed=0, table=table, fingerprint=fp)
    enc = load_model("efficientnet_lite0")
    root = tmp_path_factory.mktemp("vol")
    embed(ds, "efficientnet_lite0", root=root, encoder=enc, batch_size=16, chunk_rows=4, num_workers=0,
          progress=False, slices=SLICES)
    return fmcache.open_cache(root).embeddings("toyvol", "efficientnet_lite0"), ds, enc, root


def test_slices_are_cached_in_volume_order(cached):
    from fmcache.datasets.volumes import resample_slices, slices_to_images

    emb, ds, enc, _ = cached
    s = emb.slice_features()
    assert s.shape == (N, SLICES, 1280)
    assert emb.provenance["volume"] == {"slices": SLICES, "pool": "max"}
    tf = build_transform(enc.spec.preprocess)
    for i in (0, 3):
        vol = resample_slices(ds.image(i), SLICES)
        x = torch.stack([tf(im) for im in slices_to_images(vol)])
        with torch.inference_mode():
            direct = enc.encode_image(x)["image"].numpy()
        np.testing.assert_allclose(s[i], direct, rtol=3e-3, atol=3e-3)
    # the volume feature is the max over its slices' features
    np.testing.assert_allclose(emb.features(), s.max(axis=1), rtol=1e-3, atol=1e-3)


def test_a_planted_slice_makes_the_volume_positive_under_max_pooling(cached):
    from fmcache.datasets.volumes import resample_slices
    from fmcache.heads import fit_stack

    emb, ds, _, _ = cached
    s = emb.slice_features()
    # which resampled slice holds the blob, read off the pixels, not the model
    bright = np.stack([resample_slices(ds.image(i), SLICES).max(axis=(1, 2)) for i in range(N)])
    slice_label = (bright > 0.6).astype(np.int8)
    assert slice_label[1::2].any(axis=1).all() and not slice_label[::2].any()
    train = np.arange(N) < 10
    fit = fit_stack("linear", s[train].reshape(-1, s.shape[-1]), slice_label[train].reshape(-1),
                    hparams={"C": [1.0], "label": [0]}, solver="lbfgs")
    volume_score = fit.predict(s.reshape(-1, s.shape[-1]))[0].reshape(N, SLICES).max(axis=1)
    held_out = ~train
    planted = held_out & (np.arange(N) % 2 == 1)
    clean = held_out & (np.arange(N) % 2 == 0)
    assert volume_score[planted].min() > 0.5 > volume_score[clean].max()


def test_a_sweep_scores_volumes_by_their_slices(cached, tmp_path):
    from fmcache.probe import SweepConfig, run_sweep

    emb, _, _, root = cached
    cfg = dict(dataset="toyvol", model="efficientnet_lite0", heads={"linear": {"C": [1.0]}}, n_boot=20, threshold=0.5)
    by_slices = run_sweep(SweepConfig(**cfg, volume="max"), root=root)
    assert by_slices.config["volume"] == "max"
    auc = by_slices.metrics.query("metric == 'auc' and group == 'overall'")["value"].iloc[0]
    assert auc > 0.8
    # one score per volume, not per slice
    assert len(by_slices.predictions["linear.planted.sex"]["score"]) == int((emb.samples()["split"] == "test").sum())
    pooled = run_sweep(SweepConfig(**cfg, volume="features"), root=root)
    assert pooled.config["volume"] == "features"
