"""Stratified bootstrap resamples as index matrices, rank-based AUC over them, percentile intervals.

A block of resamples is a (b, n) matrix of sample indices. Its columns are laid out by
stratum (e.g. group x label), each stratum keeping its size in every row, so a column's
stratum is fixed: per-stratum sums are column-slice sums and no resample is visited by a
Python loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from fmcache.errors import MetricInputError

#: Elements of one (b, n) block; bounds the memory of a block to a few tens of MB.
BLOCK_ELEMENTS = 2_000_000


def strata_layout(strata: np.ndarray, n_strata: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample order grouped by stratum (stable) and the column bounds of each stratum.

    Returns ``order`` (n,) and ``bounds`` (n_strata + 1,): stratum k holds columns
    ``bounds[k]:bounds[k + 1]`` of every resample block.
    """
    strata = np.asarray(strata, dtype=np.int64)
    n_strata = int(strata.max()) + 1 if n_strata is None and strata.size else (n_strata or 0)
    order = np.argsort(strata, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(strata, minlength=n_strata))]
    return order, bounds


def block_rows(n: int) -> int:
    """Resamples per block for n samples."""
    return max(1, BLOCK_ELEMENTS // max(n, 1))


def iter_resamples(
    strata: np.ndarray, n_boot: int, seed: int | Sequence[int], *, n_strata: int | None = None
) -> Iterator[np.ndarray]:
    """Blocks of stratified bootstrap resamples, (b, n) each, n_boot rows in all.

    Within each stratum, indices are drawn uniformly with replacement from that stratum's
    members, so every row keeps every stratum's count. The stream depends only on the
    strata, n_boot and seed (``numpy.random.default_rng(seed)``).
    """
    if n_boot < 1:
        raise MetricInputError(f"n_boot must be at least 1 to draw resamples; got {n_boot}")
    order, bounds = strata_layout(strata, n_strata)
    members = [order[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    rng = np.random.default_rng(seed)
    rows = block_rows(order.size)
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        yield np.concatenate([m[rng.integers(0, m.size, size=(b, m.size))] for m in members], axis=1)
        done += b


def resample_indices(strata: np.ndarray, n_boot: int = 1000, seed: int | Sequence[int] = 0) -> np.ndarray:
    """All stratified bootstrap resamples as one (n_boot, n) index matrix.

    Parameters
    ----------
    strata : array of int, shape (n,)
        Stratum of each sample (e.g. ``group * 2 + label``); each keeps its count.
    n_boot : int
    seed : int or sequence of int

    Returns
    -------
    numpy.ndarray of int, shape (n_boot, n)
        Row b lists the samples of resample b, columns ordered by stratum.
    """
    return np.concatenate(list(iter_resamples(strata, n_boot, seed)), axis=0)


def dense_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Order-preserving integer codes (ties share a code) and how many distinct values."""
    uniq, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64).reshape(values.shape), int(uniq.size)


def auc_from_codes(codes: np.ndarray, positive: np.ndarray, n_codes: int) -> np.ndarray:
    """Mann-Whitney AUC of each row of a (b, m) code matrix.

    AUC = sum over positives of [#negatives below + 1/2 #negatives tied] / (n_pos n_neg),
    from per-row histograms of the negatives' and positives' codes: O(b (m + n_codes)),
    with integer counts so the numerator is exact. `positive` is (m,) when the labels are
    fixed per column, or (b, m). NaN where a row lacks a class or all its scores are equal.
    """
    b, m = codes.shape
    pos = np.broadcast_to(np.asarray(positive, dtype=bool), (b, m))
    keys = (np.arange(b, dtype=np.int64)[:, None] * n_codes + codes).ravel()
    pos_flat = pos.ravel()
    h_pos = np.bincount(keys[pos_flat], minlength=b * n_codes).reshape(b, n_codes)
    h_neg = np.bincount(keys[~pos_flat], minlength=b * n_codes).reshape(b, n_codes)
    below = np.cumsum(h_neg, axis=1) - h_neg
    num = (h_pos * (2 * below + h_neg)).sum(axis=1) / 2.0
    n_pos = h_pos.sum(axis=1)
    n_neg = m - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = num / (n_pos * n_neg)
    constant = codes.min(axis=1) == codes.max(axis=1)
    return np.where(constant, np.nan, auc)


def auc_over_resamples(y_true: np.ndarray, y_score: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """AUC of every resample row of an index matrix, without a loop over rows.

    Parameters
    ----------
    y_true : array of {0, 1}, shape (n,)
    y_score : array of float, shape (n,)
    indices : array of int, shape (B, m)
        Any resample index matrix (e.g. from `resample_indices`).

    Returns
    -------
    numpy.ndarray, shape (B,)
        AUC = P(s+ > s-) + 1/2 P(s+ = s-) per row (scikit-learn's roc_auc_score); NaN for a
        row with one class or with all scores equal.
    """
    codes, n_codes = dense_codes(np.asarray(y_score, dtype=np.float64))
    idx = np.asarray(indices)
    y = np.asarray(y_true).astype(bool)
    out = np.empty(idx.shape[0])
    rows = block_rows(idx.shape[1])
    for start in range(0, idx.shape[0], rows):  # blocks of rows bound memory; each block is one vector op
        part = idx[start : start + rows]
        out[start : start + rows] = auc_from_codes(codes[part], y[part], n_codes)
    return out


def percentile_interval(samples: np.ndarray, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over axis 0, ignoring NaN resamples.

    Returns the (1 - ci)/2 and (1 + ci)/2 quantiles (linear interpolation); NaN where every
    resample is NaN.
    """
    if not 0.0 < ci < 1.0:
        raise MetricInputError(f"ci must be in (0, 1); got {ci}")
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        empty = np.full(arr.shape[1:], np.nan)
        return empty, empty.copy()
    all_nan = np.isnan(arr).all(axis=0)
    filled = np.where(all_nan, 0.0, arr)
    lo, hi = np.nanpercentile(filled, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)], axis=0)
    return np.where(all_nan, np.nan, lo), np.where(all_nan, np.nan, hi)
