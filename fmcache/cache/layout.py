"""Names inside the cache (see DESIGN.md, "The cache"). One place, so readers and writers agree."""

from __future__ import annotations

SAMPLES = "samples"
ID, SUBJECT, SPLIT, LABEL = "id", "subject", "split", "label"
SA, SA_RAW = "sa", "sa_raw"
DONE = "done"
TEXT = "text"
SLICES = "slices"  # 2.5D: per-slice features of a volume, (N, S, D) per feature kind
DISK_DTYPE = "float16"
STATE_PARTIAL, STATE_COMPLETE = "partial", "complete"


def model_path(dataset: str, model: str) -> str:
    return f"{dataset}/{model}"
