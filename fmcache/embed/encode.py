"""The encode loop: every image through the frozen model once, into the cache.

Rows are processed chunk by chunk in cache order; a chunk is written and marked done as
soon as its last row is encoded, so an interrupted run loses at most the chunks in flight.
Batches never straddle chunks: a chunk is always encoded in the same batches, so a resumed
or repaired entry equals an uninterrupted run bit for bit. One process writes an entry at a
time (:mod:`fmcache.cache.lock`), or one torchrun job whose processes share out its chunks
(:mod:`fmcache.embed.distributed`); a complete entry made the same way is not written at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fmcache.cache.entry import is_intact, recorded_batch_size
from fmcache.cache.store import resolve_root
from fmcache.cache.writer import EntryWriter
from fmcache.datasets.image_headers import check_command, check_image_headers
from fmcache.datasets.samples import Dataset
from fmcache.embed import distributed, variants
from fmcache.embed.preprocess import build_transform
from fmcache.embed.registry import load_model
from fmcache.embed.spec import Encoder, Preprocess
from fmcache.embed.text import encode_prompt_sets
from fmcache.errors import DatasetError, FmcacheError
from fmcache.protocols import resolve


@dataclass
class EmbedSummary:
    dataset: str
    model: str
    root: str
    n: int
    encoded: int  # rows computed by this run (the rest were cached already)
    seconds: float
    device: str
    kinds: dict[str, int | list[int]]  # a width, or the shape of a per-item map
    unit: str = "images"  # what a row is: images, volumes

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        kinds = ", ".join(f"{k} {'x'.join(map(str, d)) if isinstance(d, list) else f'{d}-d'}" for k, d in self.kinds.items())
        reused = self.n - self.encoded
        if not self.encoded:
            return f"{self.dataset}/{self.model}: all {self.n} {self.unit} were already cached ({kinds}) at {self.root}"
        return (
            f"{self.dataset}/{self.model}: {self.n} {self.unit} cached ({kinds}) at {self.root}; "
            f"encoded {self.encoded} in {self.seconds:.1f} s ({self.images_per_s:.1f} {self.unit}/s on {self.device})"
            + (f", {reused} reused from an earlier run" if reused else "")
        )


class _Rows(TorchDataset):
    """Preprocessed pixels of the given rows; errors travel back as text, not tracebacks.

    A 2D row gives a (3, H, W) tensor; a volume gives (S, 3, H, W), its slices resampled to
    ``slices`` in volume order.
    """

    def __init__(self, dataset: Dataset, rows: np.ndarray, transform: Callable[[Any], torch.Tensor], slices: int = 0):
        self.dataset, self.rows, self.transform, self.slices = dataset, rows, transform, slices
        self.check = check_command(dataset)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        row = int(self.rows[i])
        try:
            pixels = self.dataset.image(row)
            if not self.slices:
                return row, self.transform(pixels), ""
            from fmcache.datasets.volumes import resample_slices, slices_to_images

            images = slices_to_images(resample_slices(pixels, self.slices))
            return row, torch.stack([self.transform(im) for im in images]), ""
        except DatasetError as e:
            # a header that reads but pixels that do not: the chunks already written stay, so a rerun resumes
            return row, None, (f"{e} (row {self.dataset.table['id'].iloc[row]!r}); the chunks encoded so far are kept "
                               f"and a rerun resumes once it is fixed; `{self.check}` lists every unreadable file")


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple[np.ndarray, torch.Tensor | None, str]:
    errors = [e for _, _, e in items if e]
    if errors:
        return np.array([r for r, _, _ in items]), None, errors[0]
    return np.array([r for r, _, _ in items]), torch.stack([x for _, x, _ in items]), ""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FmcacheError("--device cuda asked for, but torch sees no CUDA device (use --device cpu or auto)")
    return device


def default_workers(processes: int = 1) -> int:
    """Decoding workers of one of ``processes`` processes encoding on this machine (torchrun's ranks
    share its cores); one core each stays with the forward pass, workers only decode and resize."""
    return max(1, min(8, (os.cpu_count() or 2) // processes - 1))


def check_images_exist(dataset: Dataset) -> None:
    """Fail before any work when an image file is missing (cheap; saves a failed long run)."""
    missing = dataset.missing_files()
    if missing:
        raise DatasetError(
            f"image file not found: {dataset.file(missing[0])}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f" (listed in the {dataset.spec.key} metadata; is --data the dataset root? `fmcache datasets check` lists them all)"
        )


def embed(
    dataset: Dataset,
    model: str,
    *,
    root: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    overwrite: bool = False,
    chunk_rows: int = 256,
    progress: bool = True,
    encoder: Encoder | None = None,
    on_chunk: Callable[[int], None] | None = None,
    slices: int | None = None,
    pool: str = "max",
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
    on_repair: Callable[[str], None] | None = None,
    trust_code: bool = False,
    protocol: str = "fmcache",
    preprocess: str | None = None,
    queries: str | None = None,
) -> EmbedSummary:
    """Encode every image of ``dataset`` with ``model`` into the cache; resume if partial.

    Under torchrun every process calls this alike and each encodes a share of the chunks
    (:mod:`fmcache.embed.distributed`); rank 0's summary counts the whole job's rows.

    Parameters
    ----------
    dataset
        From :func:`fmcache.datasets.load_dataset`.
    model
        Registry key (``fmcache models``).
    root
        Cache folder or URL (default ``$FMCACHE_HOME`` or ``~/.cache/fmcache``).
    weights
        Local checkpoint file or folder overriding the entry's weights source.
    trust_code
        Also load weights whose loading runs code they carry (TorchScript archives such as
        OpenAI's CLIP ``.pt``); only for files from a source you trust.
    overwrite
        Replace an entry made with other weights / preprocessing (otherwise refused).
    batch_size
        Images per forward pass; for volumes, slices per forward pass (at least one volume).
        It is part of the entry's identity (it can change the last bits of a feature); None
        means the batch size of the entry being resumed, else 64.
    slices, pool
        Volumes (2.5D): each is resampled to ``slices`` slices (None: the protocol's, 32 under
        fmcache's), every slice is encoded and cached (``slices/<kind>``), and the volume
        feature is their ``max`` or ``mean``.
    on_chunk
        Called with each chunk index after it is written (progress hooks, tests).
    wait, on_wait
        Another process writing the same entry is waited for (``on_wait`` gets a line naming
        it); without ``wait``, CacheLockedError. ``overwrite`` never deletes an entry that
        another process holds.
    on_repair
        Told (one line) when chunks of an entry marked complete are missing and are encoded again.
    protocol, preprocess, queries
        The embed switches (:mod:`fmcache.protocols`): ``protocol``'s values, unless
        ``preprocess`` (model | paper | reference) or ``queries`` (mean | reference) is given.
        Away from fmcache's defaults the entry is named ``<model>+<switch>-<value>...``
        (``EmbedSummary.model``), so it never mixes with the default entry.
    """
    if pool not in POOLS:
        raise FmcacheError(f"unknown volume pool {pool!r}: use one of {', '.join(POOLS)}")
    switches = resolve(protocol, "embed", {"preprocess": preprocess, "queries": queries,
                                           "slices": None if slices is None else str(slices)})
    with distributed.job() as job:
        device = resolve_device(job.device(device))
        job.on_lead(lambda: check_images_exist(dataset))
        root_s = resolve_root(root)
        variant = variants.apply(encoder or load_model(model, weights=weights, device=device, trust_code=trust_code),
                                 model, switches, dataset.spec.key, dataset.spec.dim == "3d")
        volume = {"slices": variant.slices, "pool": pool} if variant.slices else None
        enc, entry = variant.encoder, variant.entry
        if batch_size is None:
            batch_size = job.on_lead(lambda: recorded_batch_size(root_s, dataset.name, entry)) or DEFAULT_BATCH_SIZE
        provenance = {
            "model": model,
            "model_title": enc.spec.title,
            "family": enc.spec.family,
            "weights_id": enc.weights_id,
            "weights_sha256": enc.weights_sha256,
            "preprocess": variant.preprocess.to_attrs(),
            "variant": variant.recorded,
            "embed_switches": variant.switches,
            "dims": dict(enc.dims),
            "row_fingerprint": dataset.fingerprint,
            "volume": volume,
            "text_dim": enc.text_dim,
            "logit_scale": enc.logit_scale,
            "compute_dtype": ("autocast-" + str(_amp_dtype()).removeprefix("torch.") if device.startswith("cuda")
                              else "float32"),
            "batch_size": int(batch_size),
        }
        if not overwrite and job.on_lead(lambda: is_intact(root_s, dataset.name, dataset.fingerprint, entry, provenance)):
            # nothing to write, so nothing is written: this works on a read-only cache
            return EmbedSummary(dataset.name, entry, root_s, len(dataset.table), 0, 0.0, device, dict(enc.dims))
        # before the entry exists: a file that is not an image must not leave half an entry behind
        job.on_lead(lambda: check_image_headers(dataset))
        with distributed.writing(job, root_s, dataset.name, dataset.table, dataset.group_attrs(), entry, provenance,
                                 progress=distributed.Progress(progress, f"{dataset.name}/{enc.spec.key}"),
                                 chunk_rows=chunk_rows, overwrite=overwrite, wait=wait, on_wait=on_wait,
                                 on_repair=on_repair) as share:
            if share.complete:
                return EmbedSummary(dataset.name, entry, root_s, share.writer.n, 0, 0.0, device, dict(enc.dims))
            if share.lead and enc.encode_text is not None and dataset.spec.prompts:
                for name, (protos, prompts) in encode_prompt_sets(enc, dataset.spec.prompts).items():
                    share.writer.write_text(name, protos, prompts)
            share.start()
            _encode_pending(dataset, enc, variant.preprocess, share, batch_size, device,
                            default_workers(job.local_world) if num_workers is None else num_workers, on_chunk)
            share.finish(device=device)
    return EmbedSummary(dataset.name, entry, root_s, share.writer.n, share.encoded, share.seconds, device,
                        dict(enc.dims))


DEFAULT_BATCH_SIZE = 64
POOLS = {"max": lambda t: t.amax(dim=1), "mean": lambda t: t.mean(dim=1)}


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


def _encode_pending(
    dataset: Dataset,
    enc: Encoder,
    preprocess: Preprocess,
    share: distributed.Share,
    batch_size: int,
    device: str,
    workers: int,
    on_chunk: Callable[[int], None] | None,
) -> None:
    """Encode this process's share of the pending chunks (all of them when it runs alone)."""
    writer, pending = share.writer, share.chunks
    if not pending:
        return
    rows = np.concatenate([np.arange(*writer.rows(c)) for c in pending])
    loader = DataLoader(
        _Rows(dataset, rows, build_transform(preprocess), writer.slices),
        batch_sampler=_chunk_batches(writer, pending, max(1, batch_size // writer.slices) if writer.slices else batch_size),
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
    )
    buffers: dict[int, dict[str, np.ndarray]] = {}
    filled: dict[int, int] = {}
    amp = torch.autocast("cuda", dtype=_amp_dtype()) if device.startswith("cuda") else _null()
    with torch.inference_mode(), amp:
        for batch_rows, x, error in loader:
            if error:
                raise DatasetError(error)
            feats = _encode_batch(enc, x.to(device, non_blocking=True), writer)
            _check_finite(feats, batch_rows, dataset, enc)
            for chunk in _scatter(batch_rows, feats, writer, buffers, filled):
                writer.write_chunk(chunk, buffers.pop(chunk))
                filled.pop(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
            share.advance(len(batch_rows))


def _chunk_batches(writer: EntryWriter, chunks: list[int], size: int) -> list[list[int]]:
    """Batches (positions in the pending rows) that never straddle chunks: each chunk is split the
    same way whichever chunks are pending, so the numbers do not depend on where a run resumed."""
    batches, offset = [], 0
    for chunk in chunks:
        start, stop = writer.rows(chunk)
        for lo in range(0, stop - start, size):
            batches.append(list(range(offset + lo, offset + min(lo + size, stop - start))))
        offset += stop - start
    return batches


def _encode_batch(enc: Encoder, x: torch.Tensor, writer: EntryWriter) -> dict[str, np.ndarray]:
    """Features of a batch for every array of the entry; volumes run slice by slice through the 2D model."""
    if not writer.slices:
        out = enc.encode_image(x)
        return {k: out[k].float().cpu().numpy() for k in writer.kinds}
    b, s = x.shape[:2]
    out = enc.encode_image(x.flatten(0, 1))
    pool = POOLS[writer.group.attrs["volume"]["pool"]]
    feats = {}
    for k in writer.kinds:
        per_slice = out[k].float().reshape(b, s, -1)
        feats[k] = pool(per_slice).cpu().numpy()
        feats[f"slices/{k}"] = per_slice.cpu().numpy()
    return feats


def _scatter(batch_rows, feats, writer, buffers, filled) -> list[int]:
    """Copy a batch into its chunks' buffers; return the chunks that became full."""
    complete = []
    chunks = batch_rows // writer.chunk_rows
    for chunk in np.unique(chunks):
        chunk = int(chunk)
        start, stop = writer.rows(chunk)
        if chunk not in buffers:
            buffers[chunk] = {k: np.empty((stop - start,) + v.shape[1:], np.float32) for k, v in feats.items()}
            filled[chunk] = 0
        sel = chunks == chunk
        for k, v in feats.items():
            buffers[chunk][k][batch_rows[sel] - start] = v[sel]
        filled[chunk] += int(sel.sum())
        if filled[chunk] == stop - start:
            complete.append(chunk)
    return complete


def _check_finite(feats: dict[str, np.ndarray], rows: np.ndarray, dataset: Dataset, enc: Encoder) -> None:
    for kind, v in feats.items():
        # float16 on disk: values beyond its range would silently become inf
        flat = v.reshape(len(v), -1)
        bad = ~np.isfinite(flat).all(axis=1) | (np.abs(flat) > 65504).any(axis=1)
        if bad.any():
            ids = dataset.table["id"].iloc[rows[bad][:3]].tolist()
            raise FmcacheError(
                f"{enc.spec.key} produced non-finite or float16-overflowing {kind} features for {int(bad.sum())} "
                f"image(s), e.g. {ids}; check those images and the model's weights"
            )


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def progress_bar(enabled: bool, total: int, label: str, unit: str = "img"):
    if not enabled:
        return _null()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class _Rate(TextColumn):
        def render(self, task):  # items/s over the whole run, steadier than rich's window
            from rich.text import Text

            speed = task.completed / task.elapsed if task.elapsed else 0.0
            return Text(f"{speed:6.1f} {unit}/s")

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(""),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
