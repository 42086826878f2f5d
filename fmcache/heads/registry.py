"""Every head type by name. Adding a head is adding an entry."""

from __future__ import annotations

from fmcache.heads.clip_adapt import CLIP_ADAPT
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
    )
}
