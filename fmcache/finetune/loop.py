"""The fine-tuning loop: AdamW with warmup and a half-cycle cosine, mixed precision on a GPU,
gradient accumulation, a checkpoint after every epoch, early stopping and selection on the
validation split.

Resuming gives the uninterrupted result: every epoch reseeds torch from (seed, epoch) before
it draws its batch order, augmentations and dropout, so an epoch replayed from the last
checkpoint draws what it drew the first time. A checkpoint is the trainable tensors alone
(``weights-<epoch>.safetensors``), the optimiser and schedule state
(``optimizer-<epoch>.pt``) and ``progress.json``, written last and naming the epoch's files:
files that no ``progress.json`` names yet (a run killed while writing them) are never read,
and the files of earlier epochs are removed only once it names the new ones.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from fmcache.errors import FmcacheError
from fmcache.finetune.adapters import trained_statistics
from fmcache.finetune.task import Batch, State, Task

PROGRESS = "progress.json"
STATE_PREFIX = "state."  # a loss state's tensors travel in the weights file under this prefix


@dataclass(frozen=True)
class TrainConfig:
    """How a task is trained (recorded in the run). The defaults are the benchmark's: AdamW,
    lr 2.5e-4, weight decay 0.05, batch 128, 100 epochs, 5 warmup epochs, cosine to 1e-5."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 2.5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    accumulate: int = 1  # batches per optimiser step: an effective batch of accumulate x batch_size
    patience: int = 10  # epochs without a better validation score before stopping; 0: never stop early
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    amp: bool = True  # bfloat16 autocast on a GPU; the CPU always computes in float32

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise FmcacheError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.lr <= 0 or self.warmup_epochs < 0 or self.patience < 0:
            raise FmcacheError("lr must be positive, warmup and patience not negative")


@dataclass
class FitResult:
    """What training left: the epoch kept (best validation score), the history per epoch, and
    whether training stopped early."""

    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: int | None = None  # the last finished epoch of the run this one resumed
    seconds: float = 0.0
    images_per_s: float = float("nan")


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters trained: those with ``requires_grad``, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def checkpointed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the trainable parameters and the running statistics of the
    batch-norm layers they include."""
    return {**trainable(model), **trained_statistics(model)}


def schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate factor of optimiser step t: linear warmup, then half a cosine to min_lr."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        frac = (t - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return factor


def fit(task: Task, cfg: TrainConfig, workdir: str | os.PathLike[str], *,
        on_step: Callable[[dict[str, float]], None] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train ``task`` under ``cfg``, checkpointing into ``workdir``; resume if it holds a checkpoint.

    ``on_step`` gets {epoch, step, steps, loss, images_per_s} after each batch (a progress
    bar), ``on_epoch`` each finished epoch's history row. On return the task's model holds
    the best epoch's weights.
    """
    cfg.check()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model = task.model.to(device)
    params = trainable(model)
    if not params:
        raise FmcacheError(f"{task.method}: the model has no trainable parameters")
    train_items = task.items("train", train=True)
    if len(train_items) == 0:
        raise FmcacheError(f"{task.method}: the training split is empty")
    steps_per_epoch = math.ceil(math.ceil(len(train_items) / cfg.batch_size) / cfg.accumulate)
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg, steps_per_epoch))
    state = _to(task.init_state(), device)
    progress = _read_progress(work)
    history: list[dict[str, float]] = []
    best = {"epoch": -1, "score": -math.inf}
    resumed = None
    if progress is not None:
        _check_same(progress, cfg, task)
        last = int(progress["history"][-1]["epoch"])
        state = load_checkpoint(model, work / _weights(last), device, state)
        try:
            saved = torch.load(work / _optimizer(last), map_location=device, weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            raise FmcacheError(f"{work / _optimizer(last)} cannot be read ({e}); delete the run to start over") from None
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        history, best, resumed = progress["history"], progress["best"], progress["history"][-1]["epoch"]
    start = 0 if not history else int(history[-1]["epoch"]) + 1
    began, seen = time.perf_counter(), 0
    stopped = False
    for epoch in range(start, cfg.epochs):
        if _patience_spent(history, best, cfg):
            stopped = True
            break
        _reseed(cfg.seed, epoch)
        loader = DataLoader(train_items, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch)), drop_last=False)
        model.train()
        losses = []
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(loader):
            batch = _to(batch, device)
            with _autocast(cfg, device):
                loss, state = task.loss(batch, state)
            if not torch.isfinite(loss):
                raise FmcacheError(f"{task.method}: the training loss became {loss.item()} at epoch {epoch}, batch {i} "
                                   "(lower --lr, or check the images)")
            # each batch weighs its share of its accumulation group's rows, so K batches step as one
            # batch K times larger, the last, shorter group included
            first = (i // cfg.accumulate) * cfg.accumulate * cfg.batch_size
            group_rows = min(cfg.accumulate * cfg.batch_size, len(train_items) - first)
            (loss * (len(batch["x"]) / group_rows)).backward()
            state = {k: v.detach() for k, v in state.items()}
            if (i + 1) % cfg.accumulate == 0 or i + 1 == len(loader):
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            seen += len(batch["x"])
            if on_step:
                rate = seen / max(time.perf_counter() - began, 1e-9)
                on_step({"epoch": epoch, "step": i + 1, "steps": len(loader), "loss": losses[-1], "images_per_s": rate})
        val = task.score("val", predict(task, "val", cfg))
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_score": val, "lr": sched.get_last_lr()[0]}
        history.append(row)
        if val > best["score"] or best["epoch"] < 0:
            best = {"epoch": epoch, "score": val}
        _save_weights(model, state, work / _weights(epoch))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, work / _optimizer(epoch))
        _write_progress(work, {"config": asdict(cfg), "method": task.method, "history": history, "best": best})
        _remove_stale(work, keep={epoch, best["epoch"]})
        if on_epoch:
            on_epoch(row)
    load_checkpoint(model, work / _weights(best["epoch"]), device)
    seconds = time.perf_counter() - began
    return FitResult(best_epoch=int(best["epoch"]), best_score=float(best["score"]), history=history,
                     stopped_early=stopped, resumed_from=resumed, seconds=seconds,
                     images_per_s=seen / seconds if seen else float("nan"))


def predict(task: Task, split: str, cfg: TrainConfig) -> torch.Tensor:
    """The task's eval-mode outputs over a split, in item order, on the CPU."""
    items = task.items(split, train=False)
    if len(items) == 0:
        raise FmcacheError(f"{task.method}: the {split} split is empty (fine-tuning selects on val and reports on test)")
    loader = DataLoader(items, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    device = torch.device(cfg.device)
    task.model.eval()
    outs = []
    with torch.no_grad(), _autocast(cfg, device):
        for batch in loader:
            outs.append(task.predict(_to(batch, device)).float().cpu())
    return torch.cat(outs)


def last_checkpoint(workdir: str | os.PathLike[str]) -> Path:
    """The weights file of the last finished epoch."""
    return _named(workdir, lambda p: p["history"][-1]["epoch"])


def best_checkpoint(workdir: str | os.PathLike[str]) -> Path:
    """The weights file of the epoch with the best validation score (the one a run keeps)."""
    return _named(workdir, lambda p: p["best"]["epoch"])


def _named(workdir: str | os.PathLike[str], epoch: Callable[[dict[str, Any]], int]) -> Path:
    progress = _read_progress(Path(workdir))
    if progress is None:
        raise FmcacheError(f"{workdir} holds no finished epoch")
    return Path(workdir) / _weights(int(epoch(progress)))


def _weights(epoch: int) -> str:
    return f"weights-{epoch}.safetensors"


def _optimizer(epoch: int) -> str:
    return f"optimizer-{epoch}.pt"


def _remove_stale(work: Path, keep: set[int]) -> None:
    """Drop the files of epochs that are neither the last nor the best (progress.json no longer names them)."""
    wanted = {_weights(e) for e in keep} | {_optimizer(max(keep))}
    for f in work.iterdir():
        if (f.name.startswith(("weights-", "optimizer-"))) and f.name not in wanted:
            f.unlink(missing_ok=True)


def _patience_spent(history: list[dict[str, float]], best: dict[str, Any], cfg: TrainConfig) -> bool:
    return bool(cfg.patience and history and history[-1]["epoch"] - best["epoch"] >= cfg.patience)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def _reseed(seed: int, epoch: int) -> None:
    torch.manual_seed(_epoch_seed(seed, epoch))
    np.random.seed(_epoch_seed(seed, epoch) % (2**32))


def _autocast(cfg: TrainConfig, device: torch.device):
    enabled = cfg.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _to(batch: Batch | State, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _save_weights(model: torch.nn.Module, state: State, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {n: p.detach().cpu().contiguous() for n, p in checkpointed(model).items()}
    tensors.update({STATE_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()})
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_checkpoint(model: torch.nn.Module, path: Path, device: torch.device, state: State | None = None) -> State:
    """Copy a checkpoint's tensors into ``model``; returns ``state`` with the checkpoint's values."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type on a damaged file, OSError on a missing one
        raise FmcacheError(f"checkpoint {path} cannot be read ({e}); delete the run's checkpoints to start over") from None
    params = checkpointed(model)
    names = {k for k in tensors if not k.startswith(STATE_PREFIX)}
    if names != set(params):
        raise FmcacheError(f"checkpoint {path} holds other parameters than this model trains "
                           f"({len(names ^ set(params))} differ); it belongs to another method or model")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(device))
    return {k: tensors[STATE_PREFIX + k].to(device) if STATE_PREFIX + k in tensors else v for k, v in (state or {}).items()}


def _read_progress(work: Path) -> dict[str, Any] | None:
    path = work / PROGRESS
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())
    except ValueError:
        raise FmcacheError(f"{path} is damaged; delete the run's checkpoints folder to start over") from None
    return progress if progress.get("history") else None


def _write_progress(work: Path, progress: dict[str, Any]) -> None:
    tmp = work / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(progress, indent=1))
    os.replace(tmp, work / PROGRESS)


def _check_same(progress: dict[str, Any], cfg: TrainConfig, task: Task) -> None:
    """A checkpoint resumes only the training it came from (the device and workers may change)."""
    was = {k: v for k, v in progress["config"].items() if k not in ("device", "num_workers", "amp")}
    now = {k: v for k, v in asdict(cfg).items() if k not in ("device", "num_workers", "amp")}
    if progress.get("method") != task.method or was != now:
        changed = sorted(k for k in now if was.get(k) != now[k]) or ["method"]
        raise FmcacheError(f"the checkpoint was trained with other settings ({', '.join(changed)}); "
                           "resume with the same settings, or start a new run")
