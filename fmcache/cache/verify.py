"""Checking a cache end to end, repairing what can be encoded again, removing entries.

``verify`` reads everything: each group's metadata, every samples array, every stored chunk
of every entry (checksums, fill values), the done bitmaps and the text prototypes. Each
problem comes with what ``repair`` does about it, always the least that makes the next
``fmcache embed`` restore the entry as an uninterrupted run would have made it:

- a damaged or missing feature chunk: marked undone, so only it is encoded again;
- a damaged done bitmap: every chunk of the entry is encoded again;
- a damaged samples array: the table is marked unfinished and rewritten from the dataset
  (the entries made from it stay);
- damaged text prototypes: the entry is marked unfinished and they are written again;
- damaged metadata of an entry or a dataset: it is removed, to be built again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import zarr
from zarr.core.sync import sync

from fmcache.cache import attrs as A
from fmcache.cache import checked, lock
from fmcache.cache import layout as L
from fmcache.cache.provenance import IDENTITY_KEYS, OPTIONAL_IDENTITY
from fmcache.cache.store import child_keys, member_names, open_root, storage_errors
from fmcache.cache.writer import EntryWriter
from fmcache.errors import CacheDamagedError, CacheError, CacheLockedError, CacheMissError

# what repair does
RECODE, RECODE_ALL, REWRITE_SAMPLES, REWRITE_TEXT, REMOVE = "re-encode", "re-encode all", "rewrite samples", "rewrite text", "remove"


@dataclass
class Finding:
    """One problem: where, what is wrong, and what ``repair`` does about it."""

    dataset: str
    model: str | None  # None: the dataset's samples table or metadata
    what: str
    fix: str
    chunks: list[int] = field(default_factory=list)

    def line(self) -> str:
        where = f"{self.dataset}/{self.model}" if self.model else f"{self.dataset} (samples)"
        fixes = {RECODE: f"--repair marks {len(self.chunks)} chunk(s) undone for `fmcache embed` to encode again",
                 RECODE_ALL: "--repair has `fmcache embed` encode the whole entry again",
                 REWRITE_SAMPLES: "--repair has `fmcache embed` write the samples table again (entries stay)",
                 REWRITE_TEXT: "--repair has `fmcache embed` write the text prototypes again",
                 REMOVE: "--repair removes it; `fmcache embed` builds it again"}
        return f"{where}: {self.what}; {fixes[self.fix]}"


def verify(root: str, dataset: str | None = None, model: str | None = None) -> list[Finding]:
    """Every problem found under ``root`` (or one dataset, or one entry)."""
    group = open_root(root, mode="r")
    names = [dataset] if dataset else _children(group)
    findings: list[Finding] = []
    for name in names:
        L.check_name("dataset", name)
        with storage_errors(f"cache dataset {name}"):
            findings += _verify_dataset(group, name, model)
    return findings


def _children(group: zarr.Group, path: str = "") -> list[str]:
    """Datasets or models stored under ``group`` (or its child ``path``), readable metadata or not:
    folders only, so that a file someone left in the cache (a report) is not taken for damage."""
    return [k for k in child_keys(group, path) if _is_name(k) and child_keys(group, f"{path}/{k}" if path else k)]


def _is_name(key: str) -> bool:
    """A dataset or model, not metadata, a writer's temporary file, runs or locks."""
    if key == "zarr.json" or key.endswith(".partial"):
        return False
    try:
        L.check_name("name", key)
    except CacheError:
        return False
    return True


def _verify_dataset(root_group: zarr.Group, name: str, only_model: str | None) -> list[Finding]:
    if name not in _children(root_group):
        raise CacheMissError(f"dataset {name!r} is not in the cache; `fmcache cache ls` lists what there is")
    try:
        g = root_group[name]
        attrs = A.read(g, "zarr.json", "")
    except (ValueError, KeyError, CacheDamagedError) as e:
        return [Finding(name, None, f"its metadata cannot be read ({_short(e)})", REMOVE)]
    findings = []
    if attrs.get("format") != L.FORMAT:
        return [Finding(name, None, "it was written by an older fmcache without checksums", REMOVE)]
    if attrs.get("state") != L.STATE_COMPLETE:
        findings.append(Finding(name, None, "its samples table is unfinished", REWRITE_SAMPLES))
    findings += _verify_samples(g, name, attrs)
    if only_model is not None and only_model not in _children(root_group, name):
        raise CacheMissError(f"no cache entry {name}/{only_model}; `fmcache cache ls` lists what there is")
    for model in [only_model] if only_model else _children(root_group, name):
        findings += _verify_entry(g, name, model)
    return findings


def _verify_samples(g: zarr.Group, name: str, attrs: dict) -> list[Finding]:
    expected = [L.ID, L.SUBJECT, L.SPLIT, L.LABEL] + [f"{kind}/{a}" for a in attrs.get("attributes") or {} for kind in (L.SA, L.SA_RAW)]
    bad = []
    for path in expected:
        try:
            arr = g[L.SAMPLES][path]
            if arr.shape[0] != attrs.get("n"):
                raise CacheDamagedError(f"{arr.shape[0]} rows for {attrs.get('n')}")
            checked.read(arr, None, path, "")
        except (CacheDamagedError, KeyError, ValueError) as e:
            bad.append(f"samples/{path} ({_short(e)})")
    return [Finding(name, None, f"damaged: {', '.join(bad)}", REWRITE_SAMPLES)] if bad else []


def _verify_entry(g: zarr.Group, dataset: str, model: str) -> list[Finding]:
    try:
        entry = g[model]
        attrs = A.read(entry, "zarr.json", "")
        required = [k for k in IDENTITY_KEYS if k not in OPTIONAL_IDENTITY]
        absent = [k for k in (*required, "n", "chunk_rows", "generation", "state") if k not in attrs]
        if absent:
            raise CacheDamagedError(f"its metadata lacks {', '.join(absent)}")
        if attrs["format"] != L.FORMAT:
            return [Finding(dataset, model, "it was written by an older fmcache without checksums", REMOVE)]
        writer = EntryWriter(entry, L.model_path(dataset, model))
        arrays = {name: entry[name] for name in writer.arrays}
        for name, arr in arrays.items():
            item = L.item_shape(attrs["dims"][name.split("/")[-1]])
            shape = (writer.n, writer.slices, *item) if name.startswith(L.SLICES) else (writer.n, *item)
            dtype = L.kind_dtype(attrs, name)
            if arr.shape != shape or str(arr.dtype) != dtype:
                raise CacheDamagedError(f"array {name} is {arr.shape} {arr.dtype}, not {shape} {dtype}")
        done_arr = entry[L.DONE]
    except (CacheDamagedError, KeyError, ValueError) as e:
        return [Finding(dataset, model, f"its metadata cannot be read ({_short(e)})", REMOVE)]
    try:
        done = checked.read(done_arr, None, "done", "").astype(bool)
    except (CacheDamagedError, ValueError) as e:
        return [Finding(dataset, model, f"its done bitmap is damaged ({_short(e)})", RECODE_ALL)]
    findings = []
    damaged = set()
    for arr in arrays.values():
        stored = checked.stored_chunks(arr)
        damaged |= {int(c) for c in done.nonzero()[0] if checked.chunk_problem(arr, int(c), stored)}
    if damaged:
        findings.append(Finding(dataset, model, f"{len(damaged)} chunk(s) marked done are missing or damaged "
                                f"(first: chunk {min(damaged)})", RECODE, sorted(damaged)))
    if L.TEXT in entry:
        for prompt_set in member_names(entry[L.TEXT], zarr.Array):
            try:
                checked.read(entry[L.TEXT][prompt_set], None, prompt_set, "")
            except (CacheDamagedError, ValueError) as e:
                findings.append(Finding(dataset, model, f"text prototypes {prompt_set!r} are damaged ({_short(e)})",
                                        REWRITE_TEXT))
    return findings


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) < 100 else text[:97] + "..."


@contextlib.contextmanager
def _held(root: str, dataset: str, model: str | None) -> Iterator[None]:
    """The writer lock of an entry (or of a dataset and all its entries), never waiting."""
    if model is not None:
        with lock.hold(root, dataset, model, wait=False):
            yield
        return
    with lock.hold(root, dataset, wait=False), contextlib.ExitStack() as stack:
        for name in _children(open_root(root, mode="r"), dataset):
            stack.enter_context(lock.hold(root, dataset, name, wait=False))
        yield


def repair(root: str, findings: list[Finding]) -> list[str]:
    """Do what each finding says (see the module's docstring); one line per action."""
    done = []
    for f in findings:
        with storage_errors(f"the cache at {root}"), _held(root, f.dataset, f.model if f.fix != REWRITE_SAMPLES else None):
            group = open_root(root, mode="a")
            if f.fix == REMOVE:
                _delete(group, f.dataset, f.model)
                done.append(f"removed {f.dataset}{'/' + f.model if f.model else ''}")
            elif f.fix == REWRITE_SAMPLES:
                A.update(group[f.dataset], {"state": L.STATE_WRITING})
                done.append(f"marked the samples table of {f.dataset} to be written again")
            else:
                writer = EntryWriter(group[f.dataset][f.model], L.model_path(f.dataset, f.model))
                if f.fix == RECODE_ALL:
                    writer.reset_done()
                elif f.fix == RECODE:
                    writer.mark_undone(f.chunks)
                else:
                    writer.mark_undone([])
                done.append(f"marked {f.dataset}/{f.model} to be finished by `fmcache embed` ({f.fix})")
    return done


def remove(root: str, dataset: str, model: str | None = None) -> None:
    """Delete an entry (or a dataset with all its entries); refused while another process writes it."""
    L.check_name("dataset", dataset)
    if model is not None:
        L.check_name("model", model)
    group = open_root(root, mode="r")
    if dataset not in _children(group) or (model is not None and model not in _children(group, dataset)):
        what = f"entry {dataset}/{model}" if model else f"dataset {dataset}"
        raise CacheMissError(f"no cache {what} at {root}; `fmcache cache ls` lists what there is")
    try:
        with storage_errors(f"the cache at {root}"), _held(root, dataset, model):
            _delete(open_root(root, mode="a"), dataset, model)
    except CacheLockedError as e:
        raise CacheLockedError(f"not removed: {e}") from None


def _delete(group: zarr.Group, dataset: str, model: str | None) -> None:
    # through the store: a group whose metadata is damaged cannot be opened to be deleted
    sync(group.store.delete_dir(dataset if model is None else L.model_path(dataset, model)))
