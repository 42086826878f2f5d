"""Features larger than memory: rows read from their store window by window while heads train.

The minibatch order of a streamed stack is drawn chunk-wise (:func:`chunk_order`): each epoch
visits the store's blocks (cache chunks) in a fresh random order and shuffles rows within
windows of ``window`` consecutive rows of that stream. A window is read whole (a background
thread reads the next one while the current one trains), so memory holds a few windows,
never the whole feature matrix. The order depends on the blocks, ``window``, the batch size
and the seed only, never on the memory budget: the same stack trained from features held
in memory (an :class:`ArraySource` with the same blocks) comes out the same.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from fmcache.errors import HeadInputError
from fmcache.heads.memory import format_bytes

DEFAULT_WINDOW = 16384  # rows shuffled together (64 cache chunks of 256 rows): 64 MiB of 1024-d float32
# windows held at once while streaming: the one training, the one being read, and the copy
# the device trains on (the budget counts all three)
WINDOWS_RESIDENT = 3


@runtime_checkable
class RowSource(Protocol):
    """Feature rows read on demand, stored in blocks (``starts``: first position of each
    block, and the row count last)."""

    n: int
    d: int
    starts: np.ndarray

    def read(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), d) float32 or float16 rows at ``positions``; HeadInputError if not finite."""
        ...


class ArraySource:
    """Features held in memory, seen as blocks: trains the same heads as the streamed source
    of the same blocks."""

    def __init__(self, X: np.ndarray, starts: np.ndarray | None = None):
        from fmcache.heads.inputs import check_features

        self.X = check_features(X)
        self.n, self.d = self.X.shape
        self.starts = np.asarray([0, self.n] if starts is None else starts, np.int64)
        check_starts(self.starts, self.n)

    def read(self, positions: np.ndarray) -> np.ndarray:
        return self.X[positions]


def check_starts(starts: np.ndarray, n: int) -> None:
    if starts.ndim != 1 or len(starts) < 2 or starts[0] != 0 or starts[-1] != n or np.any(np.diff(starts) <= 0):
        raise HeadInputError(f"block starts must rise from 0 to the row count {n}, got {starts[:4]}...")


def window_rows(window: int, batch_size: int) -> int:
    """Rows per window, a whole number of batches so that no batch spans two windows."""
    return max(batch_size, (window // batch_size) * batch_size)


def chunk_order(starts: np.ndarray, epochs: int, batch_size: int, window: int, seed: int) -> Iterator[np.ndarray]:
    """Per epoch, (steps, batch) positions: blocks in a random order, rows shuffled within
    windows of ``window_rows(window, batch_size)`` rows; the epoch's last batch is padded
    with -1 (masked)."""
    n = int(starts[-1])
    steps = -(-n // batch_size)
    width = window_rows(window, batch_size)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        blocks = rng.permutation(len(starts) - 1)
        stream = np.concatenate([np.arange(starts[b], starts[b + 1]) for b in blocks])
        for lo in range(0, n, width):
            rng.shuffle(stream[lo:lo + width])  # a view: shuffled in place
        out = np.full(steps * batch_size, -1, np.int64)
        out[:n] = stream
        yield out.reshape(steps, batch_size)


def windows(order: np.ndarray, steps_per_window: int) -> Iterator[np.ndarray]:
    """An epoch's (steps, batch) order cut into windows of whole steps."""
    for lo in range(0, len(order), steps_per_window):
        yield order[lo:lo + steps_per_window]


def localise(source: RowSource, order: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window's features (``width`` rows, zero-padded), the positions they hold and the
    window's order in rows of those features (-1 stays -1)."""
    valid = order >= 0
    held = np.unique(order[valid])
    X = source.read(held)
    if len(held) < width:  # the epoch's last window: padded to the one compiled shape
        X = np.concatenate([X, np.zeros((width - len(held), source.d), X.dtype)])
    local = np.where(valid, np.searchsorted(held, np.maximum(order, 0)), -1)
    return X, held, local


def prefetched(items: Iterator, load) -> Iterator:
    """``load(item)`` for each item, the next one loading on a background thread meanwhile
    (zarr's decompression and file reads release the interpreter lock)."""
    pool = _reader()
    pending = None
    for item in items:
        future = pool.submit(load, item)
        if pending is not None:
            yield pending.result()
        pending = future
    if pending is not None:
        yield pending.result()


@functools.lru_cache(maxsize=1)
def _reader() -> ThreadPoolExecutor:
    # one thread for the process, kept: a stream started later needs no new thread (and stack)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmcache-prefetch")


def check_window_budget(width: int, d: int, budget: int) -> None:
    """Streamed windows take at most half the budget; the heads train in the other half."""
    need = WINDOWS_RESIDENT * width * d * 4
    if need > budget // 2:
        raise HeadInputError(
            f"streaming features needs {format_bytes(need)} for {WINDOWS_RESIDENT} windows of {width} rows x {d} "
            f"float32, more than half the memory budget of {format_bytes(budget)}: raise --memory-budget or lower "
            "--shuffle-window"
        )
