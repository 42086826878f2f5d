"""Run by tests/test_embed_distributed.py under torchrun: the library's embed calls with tiny
models, each rank reporting its outcome to ``<report>/rank<R>.json``.

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/dist_embed.py ROOT REPORT \
        [--die-after-first-chunk RANK] [--sam WEIGHTS SAM_ROOT] [--mismatch] [--resume ROOT2]

The classification entry is the fake encoder's on the synthetic set, in 8 chunks of 2 rows;
``--sam`` also caches tiny-SAM features (3 shards of 2 images) in a cache of their own (another
samples table of the synthetic set); ``--mismatch`` then asks for the classification entry
with another batch size, which rank 0 refuses for every rank; ``--resume`` finishes the
classification entry of another cache. One launch does several things, as starting one costs
more than any of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `helpers` as the tests import it

from fmcache.datasets import load_dataset  # noqa: E402
from fmcache.embed import distributed  # noqa: E402
from fmcache.embed.encode import embed  # noqa: E402
from fmcache.errors import FmcacheError  # noqa: E402
from helpers import fake_encoder  # noqa: E402

CLASSIFY = {"size": "16", "image_size": "32"}
CLASSIFY_KW = {"batch_size": 2, "chunk_rows": 2, "num_workers": 0, "progress": False, "device": "cpu"}
SAM = {"size": "6", "image_size": "48"}
SAM_KW = {"batch_size": 2, "chunk_rows": 2, "progress": False, "device": "cpu"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("report")
    p.add_argument("--die-after-first-chunk", type=int)
    p.add_argument("--sam", nargs=2)
    p.add_argument("--mismatch", action="store_true")
    p.add_argument("--resume")
    a = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    out: dict = {}

    def classify(root: str, name: str, **over) -> None:
        chunks: list[int] = []

        def on_chunk(chunk: int) -> None:
            chunks.append(chunk)
            if rank == a.die_after_first_chunk:
                os._exit(3)  # killed: no cleanup, no lock release but the OS's

        try:
            s = embed(load_dataset("synthetic", options=CLASSIFY), fake_encoder.MODEL, root=root,
                      encoder=fake_encoder.encoder(), on_chunk=on_chunk, **{**CLASSIFY_KW, **over})
            out[name] = {"encoded": s.encoded, "n": s.n, "chunks": chunks}
        except FmcacheError as e:
            out[name] = {"error": type(e).__name__, "message": str(e), "says": distributed.says(e)}

    classify(a.root, "classify")
    if a.sam:
        from fmcache.segment.features import embed_features
        from fmcache.segment.sam import load_sam

        weights, sam_root = a.sam
        chunks: list[int] = []
        s = embed_features(load_dataset("synthetic", options=SAM), "sam", root=sam_root,
                           sam=load_sam("sam", weights=weights), on_chunk=chunks.append, **SAM_KW)
        out["sam"] = {"encoded": s.encoded, "n": s.n, "chunks": chunks}
    if a.mismatch:
        classify(a.root, "mismatch", batch_size=4)
    if a.resume:
        classify(a.resume, "resume")
    Path(a.report, f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
