"""Where the cache lives: a local folder or any fsspec URL, opened as a Zarr v3 group."""

from __future__ import annotations

import os
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


def _is_url(root: str) -> bool:
    return "://" in root


def open_store(root: str, *, read_only: bool) -> zarr.abc.store.Store:
    """A Zarr store for a folder path or an fsspec URL (``file://``, ``memory://``, ``s3://``...)."""
    if _is_url(root):
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
    store = open_store(root, read_only=mode == "r")
    try:
        return zarr.open_group(store=store, mode=mode, zarr_format=3)
    except FileNotFoundError:
        raise CacheError(f"no cache at {root} (run `fmcache embed` first, or pass --root / set FMCACHE_HOME)") from None
