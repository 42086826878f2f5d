"""Seeded patient-level splits: a subject is never on two sides."""

from __future__ import annotations

import numpy as np
import pandas as pd

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "test": TEST}
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def patient_split(
    subject: np.ndarray | pd.Series,
    strata: np.ndarray | pd.Series | None = None,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """Assign every row to train (0), val (1) or test (2), whole subjects at a time.

    Subjects are stratified by the stratum of their first row (e.g. label x group), shuffled
    with ``seed`` inside each stratum and cut by ``fractions`` (rounding remainders carried from
    one stratum to the next, so that many small strata still fill every split), so each split
    keeps roughly the dataset's label and group mix. Deterministic for a given input order and seed.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    subject = pd.Series(np.asarray(subject, dtype=str))
    strata_s = pd.Series(np.zeros(len(subject), dtype=np.int64) if strata is None else np.asarray(strata))
    first = pd.DataFrame({"subject": subject, "stratum": strata_s.astype(str)}).drop_duplicates("subject")
    rng = np.random.default_rng(seed)
    assigned: dict[str, int] = {}
    carry = np.zeros(3)
    for _, block in sorted(first.groupby("stratum"), key=lambda kv: kv[0]):
        subs = block["subject"].to_numpy()
        subs = subs[rng.permutation(len(subs))]
        counts, carry = _allocate(len(subs), np.asarray(fractions, dtype=float), carry)
        for s, side in zip(subs, np.repeat(np.arange(3), counts)):
            assigned[s] = int(side)
    return subject.map(assigned).to_numpy(dtype=np.int8)


def _allocate(n: int, fractions: np.ndarray, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` subjects of one stratum into (train, val, test) counts.

    Rounding each small stratum on its own would always favour the same side (two subjects
    become one train and one val, never test); carrying the fractional remainder to the next
    stratum keeps the totals at ``fractions`` however many small strata there are.
    """
    target = n * fractions + carry
    counts = np.floor(target).astype(int)
    counts = np.clip(counts, 0, None)
    short = n - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(target - counts), kind="stable")[:short]] += 1
    elif short < 0:  # carries can overshoot n; take back from the most over-served sides
        for i in np.argsort(target - counts, kind="stable"):
            take = min(counts[i], -short)
            counts[i] -= take
            short += take
            if short == 0:
                break
    return counts, target - counts
