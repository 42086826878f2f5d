"""Spread a stack of heads over devices: a 1-D mesh along the head axis.

Every head of a stack is independent of the others and they all read the same features, so
the stack is split along its head axis (``NamedSharding(mesh, P("heads"))``) and the
features, labels and batch order are copied to every device (``P()``). Each device then
trains its own heads with no communication inside a step; GSPMD partitions the vmapped
head axis of the one compiled program.

The other layout, each batch's rows split over the devices with every head on every device
and the gradients (AdamW) or the objective's sums over rows (L-BFGS) reduced across them,
was measured against this one with fmcache's own trainer and solver programs
(benchmarks/sweep_scaling.py --layouts: 256 linear heads, 4000 rows x 512 features, 4
forced host devices on a 2-core CPU whose load average was 4-5 from other work). Rows-split
seconds over heads-split seconds in five runs: AdamW 3.27, 2.47, 2.56, 2.16, 1.46 (a
128-row batch split four ways likely leaves each device products too small to pay for an
all-reduce of every head's gradient each step); L-BFGS 1.88, 1.65, 4.40, 3.26, 1.83 (two
earlier runs that passed the labels as int32 instead of fit_stack's int8: 0.79 and 1.00).
Heads split is kept for both. It also leaves each head's sums over rows whole on one
device, where splitting the rows reorders them (coefficients 2e-6 apart).

Across hosts, ``join`` (``fmcache probe --coordinator``) runs ``jax.distributed.initialize``
and ``jax.devices()`` becomes every process's devices; the mesh spans them all, every
process holds the same features and runs the same programs, and results are gathered back
to every process's host.

One device (the default where there is one) keeps today's single-device path exactly: no
mesh, no placement, the same compiled programs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "heads"
SHUTDOWN_WAIT = 24 * 3600  # seconds

_limit: int | None = None


@dataclass(frozen=True)
class Heads:
    """Where a stack of heads runs: ``mesh`` is None on one device."""

    mesh: Mesh | None

    @property
    def count(self) -> int:
        return 1 if self.mesh is None else int(self.mesh.devices.size)

    def chunk(self, n_heads: int, per_device: int) -> int:
        """Heads trained at once: ``per_device`` heads on each device, no more than the
        stack needs once rounded up to a multiple of the device count (the padding heads
        are copies of the last one, as a short last chunk's are)."""
        need = -(-n_heads // self.count)
        return min(per_device, need) * self.count

    def split(self, tree: Any) -> Any:
        """A pytree of (K, ...) host arrays, K a multiple of ``count``, split along K."""
        if self.mesh is None:
            return jax.tree_util.tree_map(jax.numpy.asarray, tree)
        return _place(tree, NamedSharding(self.mesh, P(AXIS)))

    def copy(self, tree: Any) -> Any:
        """A pytree of host arrays that every device reads whole (features, labels, order)."""
        if self.mesh is None:
            return jax.tree_util.tree_map(jax.numpy.asarray, tree)
        return _place(tree, NamedSharding(self.mesh, P()))

    def split_axis(self, x: Any, axis: int) -> Any:
        """One host array split along ``axis`` (a head axis that is not the first)."""
        if self.mesh is None:
            return jax.numpy.asarray(x)
        spec = P(*([None] * axis), AXIS)
        return _place(x, NamedSharding(self.mesh, spec))

    def made(self, fn: Any) -> Any:
        """``fn`` (jitted) with its outputs, stacks of heads, split as :meth:`split` splits:
        values that depend on no input (an optimiser's zeros) otherwise land on one device."""
        return fn if self.mesh is None else _split_outputs(fn, NamedSharding(self.mesh, P(AXIS)))

    def gather(self, tree: Any) -> Any:
        """Device arrays back to host NumPy, whole, on every process."""
        return jax.tree_util.tree_map(_to_host, tree)

    def spread(self, tree: Any) -> int:
        """Devices the heads of a result were split over, read from its arrays' sharding
        (1 if they were not split): a check that the mesh was used."""
        leaf = jax.tree_util.tree_leaves(tree)[0]
        sharding = getattr(leaf, "sharding", None)
        if sharding is None or not leaf.shape:
            return 1
        return int(leaf.shape[0] // sharding.shard_shape(leaf.shape)[0])


@functools.lru_cache(maxsize=64)
def _split_outputs(fn: Any, sharding: NamedSharding) -> Any:
    return jax.jit(fn, out_shardings=sharding)


def _place(tree: Any, sharding: NamedSharding) -> Any:
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    # device_put of a host value onto devices of other processes is not a transfer this
    # process can make: each process builds the shards on its own devices, from the same
    # value every process holds
    def one(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(one, tree)


def _to_host(a: Any) -> np.ndarray:
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def from_first(tree: Any) -> Any:
    """Host arrays as process 0 computed them, on every process (unchanged in one process).

    For values every process derives on its own host and then uses to read the others'
    results (the L-BFGS basis: an eigendecomposition's signs may differ between LAPACK
    builds). Sent as bytes, so float64 stays float64 with JAX's 32-bit default.
    """
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def one(x: Any) -> np.ndarray:
        x = np.ascontiguousarray(x)
        raw = np.asarray(multihost_utils.broadcast_one_to_all(x.reshape(-1).view(np.uint8)))
        return raw.view(x.dtype).reshape(x.shape)

    return jax.tree_util.tree_map(one, tree)


def check_same(fingerprint: str, what: str) -> None:
    """Refuse, on every process at once, a computation whose processes read different inputs:
    each feeds its devices' shares of the copied features from its own host, so inputs that
    differ would train heads on a mixture of them and give plausible wrong numbers."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    from fmcache.errors import FmcacheError

    mine = np.frombuffer(hashlib.sha256(fingerprint.encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    others = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if others:
        raise FmcacheError(
            f"{what} differs between the processes of this computation (process(es) {', '.join(map(str, others))} "
            "read another version than process 0): every process must read the same cache, a shared --root or an "
            "exact copy of it"
        )


def current() -> Heads:
    """The devices stacks run on now: every device of every process, or the first
    ``limit`` devices of each process (``use``)."""
    n_local = jax.local_device_count()
    per_process = n_local if _limit is None else min(_limit, n_local)
    if per_process * jax.process_count() == 1:
        return Heads(None)
    if per_process == n_local:
        devices = jax.devices()
    else:
        devices = [d for p in range(jax.process_count()) for d in _process_devices(p)[:per_process]]
    return Heads(Mesh(np.array(devices), (AXIS,)))


def _process_devices(process: int) -> list[Any]:
    return [d for d in jax.devices() if d.process_index == process]


def set_limit(n: int | None) -> None:
    """Use at most ``n`` devices of each process from now on (None: all)."""
    global _limit
    if n is not None and n < 1:
        raise ValueError(f"devices must be >= 1, got {n}")
    _limit = n


@contextlib.contextmanager
def use(n: int | None) -> Iterator[None]:
    """``set_limit(n)`` for the duration of a block."""
    before = _limit
    set_limit(n)
    try:
        yield
    finally:
        set_limit(before)


def join(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a computation across processes (hosts) before JAX starts its backend.

    On CPU the processes' collectives go through gloo over TCP (JAX's CPU backend has no
    collectives across processes without it); accelerators use their own.
    """
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a JAX without the option
        pass
    # a process leaving waits for the others to leave too (JAX's default: 5 minutes, then an
    # error); process 0 still evaluates and writes after the shared training, for as long
    # as its bootstrap takes. A process that dies is found by the heartbeat, not this wait.
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               shutdown_timeout_seconds=SHUTDOWN_WAIT)


def is_writer() -> bool:
    """Whether this process writes results: the first one of a computation across processes."""
    return jax.process_index() == 0
