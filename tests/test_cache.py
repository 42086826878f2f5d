"""The Zarr cache: layout, round trip on several stores, resume bookkeeping, provenance."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
import zarr

import fmcache
from fmcache.cache.store import open_root
from fmcache.cache.writer import open_entry, write_samples
from fmcache.errors import CacheMissError, ProvenanceMismatchError, UnknownNameError

N, D, DP = 23, 6, 4


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"img{i:03d}" for i in range(N)],
            "subject": [f"pat{i // 2}" for i in range(N)],
            "split": np.arange(N, dtype=np.int8) % 3,
            "path": "",
            "label/a": rng.integers(-1, 2, N).astype(np.int8),
            "label/b": rng.integers(0, 2, N).astype(np.int8),
            "sa/sex": rng.integers(-1, 2, N).astype(np.int8),
            "sa_raw/sex": np.array(["M", "F", ""] * 8)[:N],
        }
    )


def _attrs(fp: str = "fp1") -> dict:
    return {"source_fingerprint": fp, "title": "toy", "attributes": {"sex": {"groups": ["male", "female"], "rule": "r"}}}


def _prov(**over) -> dict:
    p = {
        "model": "m",
        "weights_id": "w1",
        "weights_sha256": "abc",
        "preprocess": {"size": 224, "mean": [0.5, 0.5, 0.5]},
        "dims": {"image": D, "image_proj": DP},
        "row_fingerprint": "fp1",
    }
    p.update(over)
    return p


def _fill(writer, rng, chunks=None) -> dict[str, np.ndarray]:
    full = {"image": rng.normal(size=(N, D)) * 3, "image_proj": rng.normal(size=(N, DP))}
    for c in writer.pending_chunks() if chunks is None else chunks:
        a, b = writer.rows(c)
        writer.write_chunk(c, {k: v[a:b] for k, v in full.items()})
    return full


@pytest.fixture(params=["path", "file", "memory"])
def root(request, tmp_path) -> str:
    if request.param == "path":
        return str(tmp_path / "cache")
    if request.param == "file":
        return f"file://{tmp_path}/cache"
    return f"memory://fmcache-test-{uuid.uuid4().hex}"


def test_round_trip_on_each_store(root):
    g = open_root(root, mode="a")
    table = _table()
    ds = write_samples(g, "toy", table, _attrs())
    w = open_entry(ds, "m", _prov(), chunk_rows=5)
    assert w.n_chunks == 5 and w.pending_chunks() == [0, 1, 2, 3, 4]
    full = _fill(w, np.random.default_rng(1))
    w.finish()

    cache = fmcache.open_cache(root)
    assert cache.datasets() == ["toy"] and cache.models("toy") == ["m"]
    emb = cache.embeddings("toy", "m")
    # float16 on disk, float32 when read
    assert emb._e["image"].dtype == np.float16
    x = emb.features()
    assert x.dtype == np.float32 and x.shape == (N, D)
    np.testing.assert_array_equal(x, full["image"].astype(np.float16).astype(np.float32))
    test_rows = np.flatnonzero(table["split"] == 2)
    np.testing.assert_array_equal(emb.features("test", kind="image_proj"), full["image_proj"][test_rows].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(emb.labels("val"), table[["label/a", "label/b"]].to_numpy()[table["split"] == 1])
    np.testing.assert_array_equal(emb.labels(label="b"), table["label/b"])
    np.testing.assert_array_equal(emb.groups("sex", "train"), table["sa/sex"][table["split"] == 0])
    df = emb.samples()
    assert list(df["id"]) == list(table["id"]) and set(df["split"]) == {"train", "val", "test"}
    assert list(df["sa_raw/sex"]) == list(table["sa_raw/sex"])
    assert emb.group_names("sex") == ["male", "female"]
    assert emb.provenance["weights_sha256"] == "abc" and emb.provenance["state"] == "complete"
    assert cache.entries().iloc[0]["chunks_done"] == "5/5"


def test_resume_reopens_with_only_unfinished_chunks(tmp_path):
    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs())
    w = open_entry(ds, "m", _prov(), chunk_rows=5)
    rng = np.random.default_rng(2)
    _fill(w, rng, chunks=[0, 3])
    with pytest.raises(CacheMissError, match=r"incomplete \(2/5 chunks\)"):
        fmcache.open_cache(str(tmp_path)).embeddings("toy", "m")
    # a rerun asking for other chunk sizes keeps the entry's own chunking
    w2 = open_entry(open_root(str(tmp_path), mode="a")["toy"], "m", _prov(), chunk_rows=7)
    assert w2.chunk_rows == 5 and w2.pending_chunks() == [1, 2, 4]


def test_mismatched_provenance_is_refused_and_overwrite_replaces(tmp_path):
    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs())
    w = open_entry(ds, "m", _prov(), chunk_rows=8)
    _fill(w, np.random.default_rng(3))
    w.finish()
    for change in ({"weights_sha256": "other"}, {"preprocess": {"size": 256, "mean": [0.5, 0.5, 0.5]}}, {"dims": {"image": D}}):
        with pytest.raises(ProvenanceMismatchError) as e:
            open_entry(ds, "m", _prov(**change))
        msg = str(e.value)
        assert "--overwrite" in msg and "\n" not in msg and next(iter(change)) in msg
    # the refused request left the entry intact
    assert fmcache.open_cache(str(tmp_path)).embeddings("toy", "m").provenance["weights_sha256"] == "abc"
    w = open_entry(ds, "m", _prov(weights_sha256="other"), overwrite=True)
    assert w.pending_chunks() == list(range(w.n_chunks))
    assert ds["m"].attrs["weights_sha256"] == "other"


def test_samples_table_of_other_data_is_refused(tmp_path):
    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs("fp1"))
    open_entry(ds, "m", _prov())
    assert write_samples(g, "toy", _table(), _attrs("fp1")) is not None  # same table: reused
    with pytest.raises(ProvenanceMismatchError, match="different samples table"):
        write_samples(g, "toy", _table(), _attrs("fp2"))
    assert "m" in g["toy"]
    write_samples(g, "toy", _table(), _attrs("fp2"), overwrite=True)
    assert "m" not in g["toy"]


def test_reader_errors_name_the_thing(tmp_path):
    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs())
    w = open_entry(ds, "m", _prov(), chunk_rows=50)
    _fill(w, np.random.default_rng(4))
    w.finish()
    c = fmcache.open_cache(str(tmp_path))
    with pytest.raises(CacheMissError, match="'tyo'.*did you mean 'toy'"):
        c.embeddings("tyo", "m")
    with pytest.raises(CacheMissError, match="fmcache embed --model x --dataset toy"):
        c.embeddings("toy", "x")
    emb = c.embeddings("toy", "m")
    with pytest.raises(UnknownNameError, match="race"):
        emb.groups("race")
    with pytest.raises(UnknownNameError, match="label 'c'"):
        emb.labels(label="c")
    with pytest.raises(UnknownNameError, match="split"):
        emb.features("validation")
    with pytest.raises(CacheMissError, match="no text tower"):
        emb.text_prototypes()
    with pytest.raises(fmcache.FmcacheError, match="no cache at"):
        fmcache.open_cache(str(tmp_path / "nowhere")).datasets()


def test_a_dataset_cached_under_another_name_is_pointed_to(tmp_path):
    # `-d csv --data study.csv` caches the dataset as `study`; a split option adds a suffix
    g = open_root(str(tmp_path), mode="a")
    attrs = {**_attrs(), "adapter": "csv", "needs_data": True, "options": {"labels": "a,b", "attributes": "sex=Sex:M->male, F->female"}}
    write_samples(g, "study", _table(), attrs)
    c = fmcache.open_cache(str(tmp_path))
    with pytest.raises(CacheMissError, match="the csv adapter's data is cached as 'study': use -d study"):
        c.embeddings("csv", "m")
    with pytest.raises(CacheMissError) as e:
        c.embeddings("study", "m")
    assert str(e.value).endswith("run `fmcache embed --model m --dataset csv --data <your copy> -o labels=a,b "
                                 "-o 'attributes=sex=Sex:M->male, F->female'`")


def test_reading_needs_neither_torch_nor_jax(tmp_path):
    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs())
    w = open_entry(ds, "m", _prov(), chunk_rows=50)
    _fill(w, np.random.default_rng(5))
    w.finish()
    code = (
        "import sys, fmcache\n"
        f"e = fmcache.open_cache({str(tmp_path)!r}).embeddings('toy', 'm')\n"
        "e.features('train'); e.samples(); e.groups('sex')\n"
        "bad = [m for m in ('torch', 'jax', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_store_layout_matches_design(tmp_path):
    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs())
    w = open_entry(ds, "m", _prov(), chunk_rows=5)
    z = zarr.open_group(str(tmp_path), mode="r")
    assert z["toy/samples/id"].shape == (N,)
    assert z["toy/samples/label"].shape == (N, 2) and z["toy/samples/label"].dtype == np.int8
    assert z["toy/samples/split"].dtype == np.int8 and z["toy/samples/sa/sex"].dtype == np.int8
    assert z["toy/m/image"].shape == (N, D) and z["toy/m/image"].chunks == (5, D)
    assert z["toy/m/done"].shape == (w.n_chunks,) and not z["toy/m/done"][...].any()
    assert z["toy/m"].attrs["state"] == "writing"


def test_an_entry_being_made_is_listed_as_such_not_as_damaged(tmp_path):
    from fmcache.cache import attrs as A
    from fmcache.cache import layout as L

    g = open_root(str(tmp_path), mode="a")
    ds = write_samples(g, "toy", _table(), _attrs())
    open_entry(ds, "m", _prov(), chunk_rows=50)
    entry = g["toy"]["m"]
    # the moment between the entry's metadata and its done bitmap
    A.update(entry, {"state": L.STATE_CREATING})
    del entry[L.DONE]
    row = fmcache.open_cache(str(tmp_path)).entries().iloc[0]
    assert (row["state"], row["chunks_done"]) == ("creating", "none yet")
    # the same missing bitmap on an entry past creation is damage
    A.update(entry, {"state": L.STATE_WRITING})
    assert fmcache.open_cache(str(tmp_path)).entries().iloc[0]["chunks_done"] == "damaged"
