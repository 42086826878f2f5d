"""Names inside the cache (see DESIGN.md, "The cache"). One place, so readers and writers agree."""

from __future__ import annotations

import re

from fmcache.errors import CacheError

SAMPLES = "samples"
ID, SUBJECT, SPLIT, LABEL = "id", "subject", "split", "label"
SA, SA_RAW = "sa", "sa_raw"
DONE = "done"
TEXT = "text"
SLICES = "slices"  # 2.5D: per-slice features of a volume, (N, S, D) per feature kind
DISK_DTYPE = "float16"
# Rows of an array whose items are maps (SAM's 256 x 64 x 64 image features) are stored one item
# per chunk, the chunks of one write unit (``chunk_rows`` items) in one shard object: an item
# reads alone, and a store holds one object per shard, not per item.

# 2: arrays carry crc32c checksums and fill values no real value takes; entries carry a generation
FORMAT = 2
# an entry or samples table is written in this order; anything short of complete is unfinished
STATE_CREATING, STATE_WRITING, STATE_COMPLETE = "creating", "writing", "complete"
# fill of integer samples arrays: no label, group or split code is ever this
INT_MISSING = -128

LOCKS = ".locks"  # beside the hierarchy: a hidden folder, which the cache's listings pass over
# The runs folder is a group of the hierarchy, marked as such and holding no cache data: a
# plain folder there would be a stray object that every Zarr listing of the root warns about.
RUNS = "runs"
RUNS_GROUP = {"zarr_format": 3, "node_type": "group", "attributes": {"fmcache": "runs"}}
RESERVED = {SAMPLES, LOCKS, RUNS}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def item_shape(dim: int | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one row of a feature kind: a width, or the shape of a per-item map."""
    return tuple(int(d) for d in dim) if isinstance(dim, (list, tuple)) else (int(dim),)


def kind_dtype(attrs: dict, kind: str) -> str:
    """The stored dtype of a feature kind: float16 unless the entry names another (item sizes)."""
    return (attrs.get("kind_dtypes") or {}).get(kind.split("/")[-1], DISK_DTYPE)


def model_path(dataset: str, model: str) -> str:
    return f"{dataset}/{model}"


def check_name(kind: str, name: str) -> str:
    """A dataset or model name that is one plain path segment, or CacheError saying why not."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED or ".." in name:
        raise CacheError(
            f"{kind} name {name!r} cannot name a cache entry: use letters, digits and . _ + - "
            f"(no '/', no '..', not {', '.join(sorted(RESERVED))})"
        )
    return name
