"""One cache entry written by several processes: a torchrun launch shares out whole chunks.

Launched under torchrun (``WORLD_SIZE`` > 1), every process runs the same command. Rank 0
alone runs :func:`fmcache.cache.entry.writing`: it takes the entry's writer lock on behalf of
the whole job and holds it until the job ends, writes or checks the samples table, creates or
repairs the entry, and says which chunks are pending. Each rank then encodes the chunks
``pending[rank::world]``, so a chunk (a shard, for per-item maps) is written by exactly one
process and marked done in its own object of the ``done`` bitmap. Features go to the store,
never through collectives: the process group (gloo) only carries a few keys of its store
(the setup's outcome, rows encoded, ranks finished). When every rank has finished its share,
rank 0 checks that no chunk is pending and marks the entry complete.

An error on any rank ends the job (torchrun stops the other processes once one exits); rank 0
says an error that every rank meets, another rank only its own. A rank that dies leaves its
chunks in flight undone; a rerun with any number of processes encodes only the chunks not
done, the same way (batches never straddle chunks), so the entry equals a one-process run bit
for bit.

Any root that every process can reach works: a shared file system (an OS file lock, held by
rank 0) or an object store (``s3://``, ``gs://``). On an object store the lock is the lease
object of :mod:`fmcache.cache.lock`: rank 0 creates it and its refresh thread renews it for as
long as the job runs, so another job (or a single process) asking for the same entry waits;
the other ranks write only their own chunk and done objects and need no lock. If rank 0 dies
its lease stops being renewed and expires after ``LEASE_SECONDS``, torchrun having already
stopped the other ranks. A ``memory://`` root lives in one process and cannot be shared.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from fmcache.cache import layout as L
from fmcache.cache.entry import writing as writing_entry
from fmcache.cache.store import open_root, storage_errors
from fmcache.cache.writer import EntryWriter
from fmcache.errors import FmcacheError

POLL_SECONDS = 0.2
_calls = itertools.count()  # every rank makes the same calls in the same order: a key prefix per call


@dataclass
class Job:
    """This process's place in a launch: rank ``rank`` of ``world`` (``local_*``: on this node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    store: Any = None  # when distributed, this call's keys in the process group's store (torch.distributed.Store)
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)  # keys of agree(), in call order

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """``auto`` or ``cuda``: this rank's own GPU when there is one; any other choice as given."""
        import torch

        if self.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
            count = torch.cuda.device_count()
            if self.local_world > count:  # alike on every rank of the node, rank 0 included: it says so
                raise FmcacheError(f"torchrun started {self.local_world} processes on this node, which has {count} "
                                   f"GPU(s): one process per GPU (--nproc-per-node {count}), or --device cpu")
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return device

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` (JSON), on every rank: decisions that must not differ between ranks."""
        if not self.distributed:
            return value
        key = self._key()
        if self.lead:
            self.store.set(key, json.dumps(value))
            return value
        return json.loads(self.wait(key))

    def on_lead(self, check: Callable[[], Any]) -> Any:
        """``check()`` run by rank 0 alone (work that reads every file once, not once per rank); its
        value, or its error, on every rank."""
        if not self.distributed:
            return check()
        if not self.lead:
            outcome = self.agree(None)
            if "error" in outcome:
                raise _shared_error(outcome)
            return outcome["value"]
        try:
            value = check()
        except BaseException as e:
            self.agree(_error_record(e))
            raise
        self.agree({"value": value})
        return value

    def wait(self, key: str) -> bytes:
        # polled rather than store.wait(): that times out (30 min by default) while rank 0 may wait
        # for another job's writer lock, or the other ranks for rank 0's share, for longer
        while not self.store.check([key]):
            time.sleep(POLL_SECONDS)
        return self.store.get(key)

    def _key(self, name: str | None = None) -> str:
        return name if name is not None else f"agree/{next(self._names)}"


def launch_env() -> tuple[int, int, int, int]:
    """(rank, world, local rank, local world) of this process as torchrun sets them; (0, 1, 0, 1) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0, 1
    rank = int(os.environ["RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank)), local_world


def is_secondary() -> bool:
    """This process is a rank other than 0 of a launch: it leaves reporting to rank 0."""
    return launch_env()[0] != 0


def says(error: BaseException) -> bool:
    """This process is the one to tell the user of ``error``: rank 0 for what every rank meets alike
    (its own errors, their copies on the other ranks, checks every rank makes), a rank its own
    failures while it encodes its share."""
    return getattr(error, "reported_by", 0) == launch_env()[0]


@contextlib.contextmanager
def job() -> Iterator[Job]:
    """This process's :class:`Job`; under torchrun, with the process group (gloo) joined for the block.

    A process group the caller initialised already is used and left as it is.
    """
    rank, world, local_rank, local_world = launch_env()
    if world <= 1:
        yield Job()
        return
    import torch.distributed as dist

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted job finds its old keys still there
    prefix = f"fmcache/{restart}/{next(_calls)}/"
    own = not dist.is_initialized()
    if own:
        # a store of this call's own: a process group made again in one process (a second entry)
        # would otherwise meet the first one's stale addresses under the same keys, and fail
        base, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))  # MASTER_ADDR/PORT from torchrun
        store = dist.PrefixStore(prefix, base)
        dist.init_process_group(backend="gloo", store=store, rank=rank, world_size=world)
    else:
        from torch.distributed.distributed_c10d import _get_default_store

        store = dist.PrefixStore(prefix, _get_default_store())
    try:
        yield Job(rank=rank, world=world, local_rank=local_rank, local_world=local_world, store=store)
    finally:
        if own:
            dist.destroy_process_group()


@dataclass
class Progress:
    """What the bar says: shown (by rank 0 alone), its label and unit."""

    enabled: bool
    label: str
    unit: str = "img"


class Share:
    """This rank's part of writing an entry: its chunks, progress counted over the whole job."""

    def __init__(self, job: Job, writer: EntryWriter, pending: list[int], progress: Progress):
        self.job, self.writer = job, writer
        self.complete = writer.complete and not pending
        self.chunks = pending[job.rank::job.world]
        self.total = sum(b - a for a, b in map(writer.rows, pending))  # rows the whole job encodes
        self.encoded = 0  # rows encoded by the whole job, once finished
        self.seconds = 0.0
        self._progress = progress
        self._bar: Any = None
        self._task: Any = None
        self._start = 0.0
        self._mine = 0

    @property
    def lead(self) -> bool:
        """This process writes what only one may (text prototypes, the entry's state)."""
        return self.job.lead

    def start(self) -> None:
        """Encoding begins: the clock starts and rank 0 shows the bar."""
        from fmcache.embed.encode import progress_bar

        self._start = time.perf_counter()
        if self.job.lead and self._progress.enabled:
            self._bar = progress_bar(True, self.total, self._progress.label, self._progress.unit).__enter__()
            self._task = self._bar.add_task("embed", total=self.total)

    def advance(self, rows: int) -> None:
        """``rows`` more rows encoded by this process."""
        self._mine += rows
        if not self.job.distributed:
            self._show(self._mine)
            return
        self._show(self.job.store.add(self.job._key("rows"), rows))  # atomic: the whole job's count

    def finish(self, **last_run: Any) -> None:
        """This share is done: rank 0 waits for every rank, checks no chunk is pending and marks the
        entry complete; :attr:`encoded` and :attr:`seconds` are then the whole job's."""
        job = self.job
        if job.distributed:
            job.store.add(job._key("finished"), 1)
            if job.lead:
                # polled, not a barrier: a barrier times out (30 min by default) while shares may take hours
                while int(job.store.add(job._key("finished"), 0)) < job.world:
                    self._show(int(job.store.add(job._key("rows"), 0)))
                    time.sleep(POLL_SECONDS)
            self.encoded = int(job.store.add(job._key("rows"), 0))
        else:
            self.encoded = self._mine
        self.seconds = time.perf_counter() - self._start
        if not job.lead:
            outcome = json.loads(job.wait(job._key("closed")))  # the entry's state is rank 0's to write
            if "error" in outcome:
                raise _shared_error(outcome)
            return
        try:
            self._show(self.encoded)
            pending = self.writer.pending_chunks()
            if pending:
                raise FmcacheError(f"{self.writer.where}: chunks {pending[:5]} were not written by any process; "
                                   "rerun the same command to encode them")
            self.writer.finish(last_run={**last_run, "encoded": self.encoded, "seconds": round(self.seconds, 3),
                                         "processes": job.world})
        except BaseException as e:
            if job.distributed:
                job.store.set(job._key("closed"), json.dumps(_error_record(e)))
            raise
        if job.distributed:
            job.store.set(job._key("closed"), json.dumps({}))

    def _show(self, completed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@contextlib.contextmanager
def writing(
    job: Job, root: str, dataset: str, table: pd.DataFrame, dataset_attrs: Mapping[str, Any], model: str,
    provenance: Mapping[str, Any], *, progress: Progress, **options: Any,
) -> Iterator[Share]:
    """This process's :class:`Share` of writing an entry; ``options`` as for :func:`fmcache.cache.entry.writing`,
    which rank 0 runs for the whole job (the others wait for its outcome, raising its error if it fails)."""
    if job.distributed and root.startswith("memory://"):
        raise FmcacheError(f"{root} lives in one process: a torchrun job needs a cache every process can reach "
                           "(a folder on a shared file system, file://, s3://, gs://)")
    with contextlib.ExitStack() as stack:
        if job.lead:
            try:
                writer = stack.enter_context(writing_entry(root, dataset, table, dataset_attrs, model, provenance,
                                                           **options))
                if job.distributed:
                    with storage_errors(f"the cache at {root}"):
                        writer.split_done()
                outcome: dict[str, Any] = {"pending": writer.pending_chunks()}
            except BaseException as e:
                job.agree(_error_record(e))
                raise
            job.agree(outcome)
        else:
            outcome = job.agree(None)
            if "error" in outcome:
                raise _shared_error(outcome)
            with storage_errors(f"the cache at {root}"):
                writer = EntryWriter(open_root(root, mode="a")[dataset][model], L.model_path(dataset, model))
        share = Share(job, writer, outcome["pending"], progress)
        stack.callback(share.close)
        try:
            yield share
        except FmcacheError as e:
            if not hasattr(e, "reported_by"):  # its own failure, not a copy of rank 0's
                e.reported_by = job.rank
            raise


def _error_record(e: BaseException) -> dict[str, str]:
    cls = type(e) if isinstance(e, FmcacheError) else FmcacheError
    message = str(e) if isinstance(e, FmcacheError) else f"rank 0 failed: {type(e).__name__}: {e}"
    return {"error": message, "module": cls.__module__, "type": cls.__qualname__}


def _shared_error(record: Mapping[str, str]) -> FmcacheError:
    """Rank 0's setup error, of its own class, so each rank exits as rank 0 does (rank 0 alone says it)."""
    try:
        cls = getattr(importlib.import_module(record["module"]), record["type"])
        if not (isinstance(cls, type) and issubclass(cls, FmcacheError)):
            cls = FmcacheError
        error = cls(record["error"])
    except Exception:  # noqa: BLE001 - a class that cannot be rebuilt: the message still says it
        error = FmcacheError(record["error"])
    error.reported_by = 0
    return error
