"""One writer per cache entry, across processes and hosts.

Each (dataset, model) entry, and each dataset's samples table, has a lock under
``<root>/.locks``. On a local or network filesystem it is an OS file lock (``filelock``): the
operating system drops it when its holder dies, so a dead writer never blocks the next one.
On an object store (``s3://``, ``gs://``, ...) it is a lease object created with a conditional
put (fsspec's exclusive ``"xb"`` mode), refreshed by its holder and taken over once it has
expired. A store that offers no conditional put gets no lock: one writer per entry is then the
user's to keep, and fmcache says so when it writes.

Beside a lock, ``<lock>.holder`` names its holder (host, pid, since) for whoever waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from fmcache.cache import layout as L
from fmcache.cache.store import filesystem, is_local
from fmcache.errors import CacheLockedError

LEASE_SECONDS = 120.0  # an object-store lease not refreshed for this long belongs to a dead writer
POLL_SECONDS = 0.5


def holder_record() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": uuid.uuid4().hex}


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def _what(dataset: str, model: str | None) -> str:
    return f"cache entry {dataset}/{model}" if model else f"the samples table of cache dataset {dataset}"


def lock_path(root: str, dataset: str, model: str | None = None) -> str:
    fs, base = filesystem(root)
    name = f"{dataset}.lock" if model is None else f"{dataset}/{model}.lock"
    return f"{base.rstrip('/')}/{L.LOCKS}/{name}"


@contextlib.contextmanager
def hold(
    root: str, dataset: str, model: str | None = None, *, wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the writer lock of an entry (``model``) or of a dataset's samples table (no ``model``).

    With ``wait``, a lock held elsewhere is waited for (``on_wait`` gets one line naming the
    holder, once); without, CacheLockedError names the holder.
    """
    lock = _new_lock(root, dataset, model)
    lock.acquire(_what(dataset, model), wait, on_wait)
    try:
        yield
    finally:
        lock.release()


def holder_if_locked(root: str, dataset: str, model: str | None = None) -> dict | None:
    """The holder of a lock that another process holds now, else None (the lock is free)."""
    lock = _new_lock(root, dataset, model)
    try:
        lock.acquire(_what(dataset, model), False, None)
    except CacheLockedError:
        return lock.holder() or {}
    lock.release()
    return None


def _new_lock(root: str, dataset: str, model: str | None) -> _FileLock | _Lease:
    L.check_name("dataset", dataset)
    if model is not None:
        L.check_name("model", model)
    path = lock_path(root, dataset, model)
    if is_local(root):
        return _FileLock(path)
    fs, _ = filesystem(root)
    return _Lease(fs, path)


class _FileLock:
    def __init__(self, path: str):
        from filelock import FileLock

        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.lock = FileLock(path, timeout=0)

    def holder(self) -> dict | None:
        try:
            with open(self.path + ".holder") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self, what: str, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            message = f"{what} is being written by {describe(self.holder())}"
            if not wait:
                raise CacheLockedError(f"{message}; wait for it to finish, or rerun without --no-wait to wait") from None
            if on_wait:
                on_wait(f"{message}; waiting for it to finish (Ctrl-C to stop)")
            self.lock.acquire(timeout=-1, poll_interval=POLL_SECONDS)
        tmp = f"{self.path}.holder.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(holder_record(), f)
        os.replace(tmp, self.path + ".holder")

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path + ".holder")
        self.lock.release()


class _Lease:
    """A lease object on a store with conditional puts; see the module's docstring."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path))
        except (OSError, ValueError):
            return None

    def _record(self) -> bytes:
        record = {**holder_record(), "token": self.token, "expires": time.time() + LEASE_SECONDS}
        return json.dumps(record).encode()

    def acquire(self, what: str, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        self.token = uuid.uuid4().hex
        told = False
        while True:
            try:
                with self.fs.open(self.path, "xb") as f:
                    f.write(self._record())
            except FileExistsError:
                current = self.holder()
                if current is not None and current.get("expires", 0) < time.time():
                    self._break(current)  # its writer stopped refreshing it: dead
                    continue
                message = f"{what} is being written by {describe(current)}"
                if not wait:
                    raise CacheLockedError(f"{message}; wait for it to finish, or rerun without --no-wait to wait") from None
                if on_wait and not told:
                    on_wait(f"{message}; waiting for it to finish (Ctrl-C to stop)")
                    told = True
                time.sleep(POLL_SECONDS)
                continue
            except (NotImplementedError, ValueError, TypeError):
                warnings.warn(
                    f"this storage offers no conditional writes, so {what} is not locked: run one writer per "
                    "entry at a time", stacklevel=3,
                )
                self.token = None
                return
            break
        self._thread = threading.Thread(target=self._refresh, name="fmcache-lease", daemon=True)
        self._thread.start()

    def _break(self, stale: dict) -> None:
        # remove it only if it is still the expired one: a racer may have replaced it already
        current = self.holder()
        if current is not None and current.get("token") == stale.get("token"):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

    def _refresh(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            current = self.holder()
            if current is None or current.get("token") != self.token:
                return  # taken over after we stalled: the new holder's now
            self.fs.pipe_file(self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.holder()
        if self.token is not None and current is not None and current.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)
