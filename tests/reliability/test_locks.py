"""The entry locks themselves: a file lock on local disks, a lease on object stores (memory://
stands in for s3://), takeover of a dead writer's lock, and `cache rm` refused while held."""

from __future__ import annotations

import json
import threading
import time
import uuid

import fsspec
import pytest
from helpers import fake_encoder as fe

from fmcache.cache import lock
from fmcache.embed.encode import embed
from fmcache.errors import CacheLockedError


@pytest.fixture(params=["local", "object store"])
def root(request, tmp_path) -> str:
    return str(tmp_path) if request.param == "local" else f"memory://locks-{uuid.uuid4().hex}"


def test_one_holder_at_a_time_and_the_next_one_names_it(root):
    with lock.hold(root, "synthetic", "m"):
        holder = lock.holder_if_locked(root, "synthetic", "m")
        assert holder is not None and holder["pid"] > 0 and holder["host"]
        with pytest.raises(CacheLockedError, match=r"cache entry synthetic/m is being written by pid \d+ on host"):
            with lock.hold(root, "synthetic", "m", wait=False):
                pass
        # other entries and the dataset's own lock are independent
        with lock.hold(root, "synthetic", "other", wait=False), lock.hold(root, "synthetic", wait=False):
            pass
    assert lock.holder_if_locked(root, "synthetic", "m") is None


def test_a_waiter_gets_the_lock_when_the_holder_lets_go(root):
    got, told = [], []

    def wait_for_it():
        with lock.hold(root, "synthetic", "m", on_wait=told.append):
            got.append(True)

    with lock.hold(root, "synthetic", "m"):
        t = threading.Thread(target=wait_for_it)
        t.start()
        time.sleep(1.0)
        assert not got and "waiting" in told[0]  # still waiting, and said so
    t.join(10)
    assert got


def test_an_expired_lease_of_a_dead_writer_is_taken_over():
    root = f"memory://locks-{uuid.uuid4().hex}"
    path = lock.lock_path(root, "synthetic", "m")
    fs = fsspec.filesystem("memory")
    dead = {"host": "gone", "pid": 1, "since": "2026-01-01T00:00:00+00:00", "token": "x", "expires": time.time() - 1}
    fs.pipe_file(path, json.dumps(dead).encode())
    with lock.hold(root, "synthetic", "m", wait=False):
        assert json.loads(fs.cat_file(path))["token"] != "x"
    assert not fs.exists(path)


def test_remove_is_refused_while_an_entry_is_written(tmp_path, run_cli):
    embed(fe.dataset(), fe.MODEL, root=tmp_path, encoder=fe.encoder(), **fe.embed_kwargs())
    with lock.hold(str(tmp_path), "synthetic", fe.MODEL):
        for args in (["synthetic", fe.MODEL], ["synthetic"]):
            code, _, err = run_cli("cache", "rm", *args, "--root", str(tmp_path))
            assert code == 1 and "not removed" in err and "being written by" in err and len(err.splitlines()) == 1
    code, out, _ = run_cli("cache", "rm", "synthetic", fe.MODEL, "--root", str(tmp_path))
    assert code == 0 and "removed synthetic/tinyconv" in out
    code, out, _ = run_cli("cache", "ls", "--root", str(tmp_path))
    assert fe.MODEL not in out
