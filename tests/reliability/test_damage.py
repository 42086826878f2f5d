"""The damage matrix: a stored object deleted, truncated or with one byte flipped. Every read
refuses with one clear error (never zeros, never a silently changed row), `cache verify`
names the damage, and `cache verify --repair` then `embed` restores the entry bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_encoder as fe

import fmcache
from fmcache.cache.verify import repair, verify
from fmcache.embed.encode import embed
from fmcache.errors import CacheError

ENTRY = f"synthetic/{fe.MODEL}"
TARGETS = {
    "feature chunk": f"{ENTRY}/image/c/2/0",
    "done bitmap": f"{ENTRY}/done/c/0",
    "entry metadata": f"{ENTRY}/zarr.json",
    "array metadata": f"{ENTRY}/image/zarr.json",
    "split chunk": "synthetic/samples/split/c/0",
    "group chunk": "synthetic/samples/sa/sex/c/0",
    "label chunk": "synthetic/samples/label/c/0/0",
    "dataset metadata": "synthetic/zarr.json",
}
DAMAGE = {
    "delete": lambda p: p.unlink(),
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "flip a byte": lambda p: p.write_bytes(_flipped(p.read_bytes())),
}


def _flipped(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x10
    return bytes(b)


def _read_all(root):
    emb = fmcache.open_cache(root).embeddings("synthetic", fe.MODEL)
    return emb.features(), emb.samples(), emb.labels(), emb.groups("sex")


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    root = tmp_path_factory.mktemp("intact")
    embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
    return root, _read_all(root)


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("target", list(TARGETS))
def test_damage_is_refused_named_and_repaired(intact, tmp_path, target, damage):
    src, (features, samples, labels, groups) = intact
    root = Path(shutil.copytree(src, tmp_path / "cache"))
    DAMAGE[damage](root / TARGETS[target])

    with pytest.raises(CacheError) as err:
        _read_all(root)
    message = str(err.value)
    assert "\n" not in message and ("synthetic" in message or "zarr.json" in message), message

    findings = verify(str(root))
    assert findings, f"verify missed a {damage} of the {target}"
    repair(str(root), findings)
    embed(fe.dataset(), fe.MODEL, root=root, encoder=fe.encoder(), **fe.embed_kwargs())
    assert verify(str(root)) == []
    got = _read_all(root)
    assert np.array_equal(got[0].view(np.uint32), features.view(np.uint32))
    assert got[1].equals(samples) and np.array_equal(got[2], labels) and np.array_equal(got[3], groups)


def test_files_left_in_the_cache_are_no_damage(intact, tmp_path):
    src, _ = intact
    root = Path(shutil.copytree(src, tmp_path / "cache"))
    (root / "study.html").write_text("<html></html>")  # a report written next to the cache
    (root / "synthetic" / "notes.txt").write_text("kept")
    assert verify(str(root)) == []
    assert (root / "study.html").is_file() and (root / "synthetic" / "notes.txt").is_file()
