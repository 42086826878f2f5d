"""Group attributes that carry their own checksum: a flipped byte in a ``zarr.json`` that still
parses (a changed digit of a fingerprint, a letter of a weights id) is damage, not a new fact.

Every write of a dataset's or an entry's attributes goes through :func:`create_group` or
:func:`update` (one ``zarr.json`` write each), and every read through :func:`read`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import google_crc32c
import zarr

from fmcache.errors import CacheDamagedError

KEY = "attrs_crc32c"


def _crc(attrs: Mapping[str, Any]) -> str:
    body = {k: v for k, v in attrs.items() if k != KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return f"{google_crc32c.value(text.encode()):08x}"


def _normalised(attrs: Mapping[str, Any]) -> dict[str, Any]:
    # what reading the attributes back gives (tuples become lists, ...), so the checksum matches
    return json.loads(json.dumps(dict(attrs), allow_nan=True))


def create_group(parent: zarr.Group, name: str, attrs: Mapping[str, Any]) -> zarr.Group:
    body = _normalised(attrs)
    return parent.create_group(name, attributes={**body, KEY: _crc(body)})


def update(group: zarr.Group, changes: Mapping[str, Any]) -> None:
    changes = _normalised(changes)
    merged = {**dict(group.attrs), **changes}
    group.update_attributes({**changes, KEY: _crc(merged)})


def read(group: zarr.Group, where: str, remedy: str) -> dict[str, Any]:
    """The group's attributes, or CacheDamagedError if they fail their checksum.

    Groups written before checksums (no ``format``) are returned as they are, for the caller
    to refuse by their format with a message of its own.
    """
    attrs = dict(group.attrs)
    if KEY not in attrs and "format" not in attrs:
        return attrs
    if attrs.get(KEY) != _crc(attrs):
        raise CacheDamagedError(f"{where}: its metadata fails its checksum (a damaged zarr.json); {remedy}")
    return {k: v for k, v in attrs.items() if k != KEY}
