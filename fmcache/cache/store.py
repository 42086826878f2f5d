"""Where the cache lives: a local folder or any fsspec URL, opened as a Zarr v3 group; and the
storage failures a user can meet (disk full, read-only, damaged metadata), in plain words."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import zarr
import zarr.storage

from fmcache.errors import CacheError


def default_root() -> str:
    """``$FMCACHE_HOME`` if set, else ``~/.cache/fmcache``."""
    env = os.environ.get("FMCACHE_HOME")
    return env if env else str(Path.home() / ".cache" / "fmcache")


def resolve_root(root: str | os.PathLike[str] | None) -> str:
    return default_root() if root is None else os.fspath(root)


def is_url(root: str) -> bool:
    return "://" in root


def is_local(root: str) -> bool:
    """A root on this machine's filesystem (a path or ``file://``), where OS file locks work."""
    return not is_url(root) or root.startswith("file://")


def filesystem(root: str):
    """The fsspec filesystem of a root and the root's path on it."""
    from fsspec.core import url_to_fs

    if is_url(root):
        return url_to_fs(root)
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), str(Path(root).expanduser().absolute())


def open_store(root: str, *, read_only: bool) -> zarr.abc.store.Store:
    """A Zarr store for a folder path or an fsspec URL (``file://``, ``memory://``, ``s3://``...)."""
    if is_url(root):
        # fsspec's local filesystem does not create parent folders unless asked to
        opts = {"auto_mkdir": True} if root.startswith("file://") and not read_only else None
        try:
            return zarr.storage.FsspecStore.from_url(root, read_only=read_only, storage_options=opts)
        except (ImportError, ValueError) as e:
            raise CacheError(f"cannot open cache at {root}: {e} (is the fsspec backend for this URL installed?)") from None
    path = Path(root).expanduser()
    if read_only and not path.exists():
        raise CacheError(f"no cache at {path} (run `fmcache embed` first, or pass --root / set FMCACHE_HOME)")
    return zarr.storage.LocalStore(path, read_only=read_only)


def open_root(root: str, *, mode: str = "r") -> zarr.Group:
    """The cache's root group; mode "r" (read) or "a" (create if absent)."""
    with storage_errors(f"the cache at {root}"):
        store = open_store(root, read_only=mode == "r")
        try:
            return zarr.open_group(store=store, mode=mode, zarr_format=3)
        except FileNotFoundError:
            raise CacheError(f"no cache at {root} (run `fmcache embed` first, or pass --root / set FMCACHE_HOME)") from None


@contextlib.contextmanager
def storage_errors(where: str) -> Iterator[None]:
    """Storage failures as one plain CacheError each: what happened to ``where`` and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
            raise CacheError(
                f"the disk is full while writing {where}: free some space (or pass --root on another disk) and "
                "rerun the same command; finished chunks are kept and only the rest is redone"
            ) from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise CacheError(
                f"cannot write {where}: {e.strerror.lower() if e.strerror else 'permission denied'} "
                f"({e.filename or where}); use a cache you can write (--root or FMCACHE_HOME), or, to read "
                "results only, a command that does not write"
            ) from None
        raise
    except json.JSONDecodeError as e:
        raise CacheError(
            f"the metadata of {where} is damaged (a zarr.json is not valid JSON: {e.msg}); "
            "`fmcache cache verify` names the damaged entry and `fmcache cache rm` removes it so it can be rebuilt"
        ) from None


def child_keys(group: zarr.Group, path: str = "") -> list[str]:
    """Every name the store lists directly under ``group`` (or its child ``path``): nodes, and
    also whatever else lies there (folders beside the hierarchy, a writer's temporary files)."""
    from zarr.core.sync import sync

    prefix = "/".join(p for p in (group.path, path) if p)

    async def keys() -> list[str]:
        return [k async for k in group.store.list_dir(prefix)]

    return sorted(sync(keys()))


def member_names(group: zarr.Group, kind: type[zarr.Group] | type[zarr.Array]) -> list[str]:
    """Names of the groups (or arrays) directly under ``group``, sorted.

    Taken from the store's listing rather than Zarr's member iteration, which warns about each
    entry that is not a node (an older runs folder, the locks, a concurrent writer's temporary
    file) and, its warnings going through a process-wide filter, cannot be silenced safely
    while other threads run.
    """
    names = []
    for key in child_keys(group):
        if key.startswith(".") or key == "zarr.json" or key.endswith(".partial"):
            continue
        try:
            node = group[key]
        except KeyError:  # a folder or file that is not a Zarr node
            continue
        if isinstance(node, kind):
            names.append(key)
    return names
