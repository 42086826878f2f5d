"""Every head type by name. Adding a head is adding an entry (or registering one from outside)."""

from __future__ import annotations

from fmcache.errors import UnknownNameError, did_you_mean
from fmcache.heads.clip_adapt import CLIP_ADAPT, CLIP_ADAPT_BIAS
from fmcache.heads.domain_ind import DOMAIN_IND
from fmcache.heads.fairpenalty import fairpenalty
from fmcache.heads.groupdro import GROUPDRO
from fmcache.heads.laftr import laftr
from fmcache.heads.linear import LINEAR
from fmcache.heads.resample import RESAMPLE
from fmcache.heads.types import HeadType
from fmcache.heads.zeroshot import ZEROSHOT

HEADS: dict[str, HeadType] = {
    h.name: h
    for h in (
        LINEAR,
        RESAMPLE,
        GROUPDRO,
        laftr("dp"),
        laftr("eqodd"),
        laftr("eqopp"),
        fairpenalty("dp"),
        fairpenalty("eo"),
        DOMAIN_IND,
        ZEROSHOT,
        CLIP_ADAPT,
        CLIP_ADAPT_BIAS,
    )
}


def register_head(head: HeadType) -> HeadType:
    """Add a head type of one's own, so that sweeps (``fmcache probe --heads NAME``) train it.

    A name already taken is refused unless it is the same head type again.
    """
    if HEADS.get(head.name, head) is not head:
        raise ValueError(f"a different head type is already registered as {head.name!r}")
    HEADS[head.name] = head
    return head


def get_head(head: str | HeadType) -> HeadType:
    """The registered head type of that name (a HeadType passes through)."""
    if isinstance(head, HeadType):
        return head
    if head not in HEADS:
        raise UnknownNameError(f"unknown head type {head!r}{did_you_mean(head, sorted(HEADS))}; known: {', '.join(sorted(HEADS))}")
    return HEADS[head]
