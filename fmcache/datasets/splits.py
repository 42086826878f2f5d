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


def balance_test(
    split: np.ndarray,
    subject: np.ndarray | pd.Series,
    groups: np.ndarray,
    *,
    n_groups: int = 2,
    seed: int = 0,
) -> np.ndarray:
    """Make the test split hold equally many rows of every group, whole subjects at a time.

    The reference protocol's ``balanced-test``: the test set is subsampled (here seeded) until
    the attribute's groups (two for a binary attribute) are the same size. Test subjects that
    are left out (the larger groups' surplus, and subjects whose group is unknown or differs
    between their rows) move to train, so every sample keeps a split code of 0, 1 or 2 and no
    subject is on two sides. Train and validation rows never move.

    Parameters
    ----------
    split
        Split codes (0 train, 1 val, 2 test) from :func:`patient_split`.
    subject
        Subject id per row.
    groups
        Group code per row of the attribute to balance (-1 unknown).
    n_groups
        Number of groups (codes 0 .. n_groups-1) to balance.
    seed
        Seeds which subjects of the larger groups stay in test.

    Returns
    -------
    numpy.ndarray
        New split codes (int8). ValueError(code) when group ``code`` has no test subject,
        ValueError(-1) when no subjects pair up.
    """
    split = np.asarray(split, dtype=np.int8).copy()
    frame = pd.DataFrame({"subject": np.asarray(subject, dtype=str), "group": np.asarray(groups), "test": split == TEST})
    per_subject = frame[frame["test"]].groupby("subject", sort=True)["group"].agg(["min", "max", "size"])
    clean = per_subject[(per_subject["min"] == per_subject["max"]) & (per_subject["min"] >= 0)]
    rng = np.random.default_rng([seed, 0xBA1])  # its own stream: the split's shuffle stays as it was
    pools = []
    for g in range(n_groups):
        block = clean[clean["min"] == g]
        if len(block) == 0:
            raise ValueError(g)
        pools.append(block["size"].iloc[rng.permutation(len(block))])
    keep = _equal_rows(pools)
    if not keep:  # only subjects too large to pair up: an empty test set helps nobody
        raise ValueError(-1)
    move = frame["test"] & ~frame["subject"].isin(keep)
    split[move.to_numpy()] = TRAIN
    return split


def _equal_rows(pools: list[pd.Series]) -> set[str]:
    """Subjects whose row counts add up to the same, largest possible total in every pool.

    Subjects with several images make this a subset-sum problem: each pool's reachable totals
    are a bitset (bit t set = some subjects add up to t rows); the largest total every pool
    reaches wins, and each pool's subjects are then picked back from the end of its shuffled
    order, so the seeded order decides which subjects stay.
    """
    target = min(int(p.sum()) for p in pools)
    mask = (1 << (target + 1)) - 1
    prefixes = []
    common = mask
    for pool in pools:
        reach = [1]  # reach[i]: totals reachable with the first i subjects
        for n in pool.to_numpy():
            reach.append((reach[-1] | (reach[-1] << int(n))) & mask)
        prefixes.append(reach)
        common &= reach[-1]
    total = common.bit_length() - 1
    chosen: set[str] = set()
    for pool, reach in zip(pools, prefixes):
        left = total
        for i in range(len(pool), 0, -1):
            if not (reach[i - 1] >> left) & 1:  # the total needs subject i-1
                chosen.add(pool.index[i - 1])
                left -= int(pool.iloc[i - 1])
    return chosen
