"""A fine-tuning run: train a method, select its epoch on validation, evaluate it on test with
bootstrap intervals and write a run directory that ``fmcache results`` and the report read
beside the frozen-feature heads; optionally cache the fine-tuned encoder as ``<model>+<run>``.

The run directory is claimed before training and holds ``request.json`` (what was asked) and
``checkpoints/`` from the start; ``config.json`` comes last, so an unfinished run is not
listed, and ``resume_finetune`` continues it from its last checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from fmcache import __version__
from fmcache.datasets.samples import Dataset
from fmcache.embed.registry import load_model
from fmcache.embed.weights import sha256_file
from fmcache.errors import FmcacheError
from fmcache.fairness import evaluate, evaluate_dice, evaluate_multiclass
from fmcache.finetune.adapters import DEFAULT_RANK
from fmcache.finetune.loop import PROGRESS, FitResult, TrainConfig, best_checkpoint, fit, predict
from fmcache.finetune.task import Task
from fmcache.mitigations import MITIGATIONS
from fmcache.runs import Run, cache_root, discard_run, load_results, new_run_dir, prediction_key, run_path, write_run
from fmcache.segment.sweep import LABEL as SEGMENTATION_LABEL

REQUEST, CHECKPOINTS, LOCK = "request.json", "checkpoints", ".training.lock"
def method_defaults(method: str) -> dict[str, float]:
    """Epochs, batch size, learning rate and LoRA rank the benchmark trains ``method`` with:
    its classification protocol (``TrainConfig``'s defaults), or SAMed's (``SAMED_SETTINGS``)."""
    if method.startswith("samed"):
        from fmcache.finetune.samed import SAMED_SETTINGS as S

        epochs = S["febs_epochs"] if method == "samed+febs" else S["max_epochs"]
        return {"epochs": epochs, "batch_size": S["batch_size"], "lr": S["lr"], "rank": S["rank"]}
    t = TrainConfig()
    return {"epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr, "rank": DEFAULT_RANK}


@dataclass
class FinetuneRequest:
    """What a fine-tuning run trains (saved in the run, so a resume needs nothing else).

    ``label`` / ``attribute`` None: the dataset's first. ``data`` and ``options`` say where the
    dataset release is and how it was read; ``hparams`` override the mitigation's defaults.
    """

    dataset: str
    model: str
    method: str = "lora"
    label: str | None = None
    attribute: str | None = None
    weights: str | None = None
    rank: int = DEFAULT_RANK
    alpha: float | None = None
    kind: str = "image"
    augment: bool = False
    hparams: dict[str, float] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    n_boot: int = 1000
    threshold: str | float = "val"  # the decision threshold: chosen on validation (fmcache's protocol), or a number
    convention: str = "paper"
    data: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    data_seed: int = 0
    domain_inference: str = "sum"  # domain_ind's test-time rule, as the probe's --domain-inference

    @classmethod
    def from_json(cls, text: str) -> FinetuneRequest:
        d = json.loads(text)
        return cls(**{**d, "train": TrainConfig(**d["train"])})


def check_method(method: str) -> None:
    """FmcacheError naming the choices when ``method`` is none of lora / full / samed (+ a mitigation)."""
    from fmcache.finetune.classify import parse_method
    from fmcache.finetune.samed import METHODS

    if method.startswith("samed"):
        if method not in METHODS:
            raise FmcacheError(f"unknown SAMed method {method!r}: use one of {', '.join(METHODS)}")
    else:
        parse_method(method, ("lora", "full", "samed"))


def build_task(dataset: Dataset, req: FinetuneRequest) -> Task:
    """The method's task: the base model loaded and adapted (LoRA, full or SAMed) with its head."""
    check_method(req.method)
    base = req.method.partition("+")[0]
    if dataset.spec.dim == "3d":
        raise FmcacheError(f"{dataset.name} is volumetric; fine-tuning reads 2D images only")
    attribute = req.attribute or (dataset.attribute_names or [""])[0]
    torch.manual_seed(req.train.seed)  # the adapters' and heads' initialisation
    if base == "samed":
        from fmcache.finetune.samed import SamedTask
        from fmcache.segment.sam import load_sam

        sam = load_sam(req.model, weights=req.weights, device=req.train.device)
        settings = {k: req.hparams[k] for k in ("dice_weight", "gamma") if k in req.hparams}
        return SamedTask(sam, dataset, attribute, req.method, rank=req.rank, augment=req.augment, **settings)
    from fmcache.finetune.classify import ClassifyTask

    if dataset.spec.mask_classes and not dataset.label_names:
        raise FmcacheError(f"{dataset.name} is a segmentation dataset: fine-tune a SAM-family model on it with "
                           "--method samed (or samed+febs, samed+resample, samed+ind)")
    enc = load_model(req.model, weights=req.weights, device=req.train.device)
    return ClassifyTask(enc, dataset, req.method, req.label or dataset.label_names[0], attribute, rank=req.rank,
                        alpha=req.alpha, kind=req.kind, augment=req.augment, hparams=req.hparams or None,
                        seed=req.train.seed, domain_inference=req.domain_inference)


def finetune(dataset: Dataset, req: FinetuneRequest, *, root: str | os.PathLike[str] | None = None,
             runs: str | os.PathLike[str] | None = None, on_step: Callable[[dict[str, float]], None] | None = None,
             on_epoch: Callable[[dict[str, float]], None] | None = None) -> Run:
    """Train ``req`` on ``dataset``, evaluate it and write its run directory; returns the :class:`Run`.

    A run that fails or is interrupted keeps its directory and checkpoints: the error names
    the command that resumes it.
    """
    path = new_run_dir(f"{req.dataset}-{req.model}-{req.method.replace('+', '_')}", root, runs)
    if path.protocol not in ("", "file", "local"):
        discard_run(path)
        raise FmcacheError(f"fine-tuning keeps its checkpoints on a local disk; {path.parent} is not one "
                           "(give --runs a local folder)")
    (path / REQUEST).write_text(json.dumps(asdict(req), indent=1))
    try:
        return _train_and_write(dataset, req, path, root, on_step, on_epoch)
    except BaseException:
        if not (path / CHECKPOINTS / PROGRESS).is_file():  # no epoch finished: nothing to resume
            discard_run(path)
        raise


def resume_finetune(run: str | os.PathLike[str], dataset: Dataset, *, root: str | os.PathLike[str] | None = None,
                    runs: str | os.PathLike[str] | None = None, device: str | None = None,
                    on_step: Callable[[dict[str, float]], None] | None = None,
                    on_epoch: Callable[[dict[str, float]], None] | None = None) -> Run:
    """Continue an unfinished run from its last checkpoint (``device`` may differ from the first)."""
    path = run_path(run, root, runs)
    req = read_request(path)
    if (path / "config.json").is_file():
        raise FmcacheError(f"run {path.name} is finished; start a new one to train again")
    if device:
        req = replace(req, train=replace(req.train, device=device))
    return _train_and_write(dataset, req, path, root, on_step, on_epoch)


def read_request(path) -> FinetuneRequest:
    try:
        return FinetuneRequest.from_json((path / REQUEST).read_text())
    except FileNotFoundError:
        raise FmcacheError(f"{path} is not a fine-tuning run (no {REQUEST})") from None
    except (ValueError, TypeError, KeyError) as e:
        raise FmcacheError(f"{path / REQUEST} is damaged ({e}); start a new run") from None


def _train_and_write(dataset: Dataset, req: FinetuneRequest, path, root, on_step, on_epoch) -> Run:
    from filelock import FileLock, Timeout

    task = build_task(dataset, req)
    lock = FileLock(str(path / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FmcacheError(f"run {path.name} is being trained by another process; wait for it to finish") from None
    try:
        result = fit(task, req.train, path / CHECKPOINTS, on_step=on_step, on_epoch=on_epoch)
    except (KeyboardInterrupt, FmcacheError) as e:
        if not (path / CHECKPOINTS / PROGRESS).is_file():
            raise
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        raise FmcacheError(f"{why}; the finished epochs' checkpoints are kept: `fmcache finetune --resume {path}` "
                           "continues") from None
    finally:
        lock.release()
    if _is_segmentation(req):
        metrics, predictions = _evaluate_masks(task, dataset, req)
    else:
        val, test = (predict(task, split, req.train).numpy() for split in ("val", "test"))
        metrics, predictions = _evaluate(task, dataset, req, val, test)
    history = pd.DataFrame(result.history).assign(selected=lambda h: h["epoch"] == result.best_epoch)
    write_run(path, config=_config(task, dataset, req, result, str(cache_root(root))), metrics=metrics,
              sweep=history, predictions=predictions)
    return load_results(path)


def _evaluate(task, dataset: Dataset, req: FinetuneRequest, val: np.ndarray, test: np.ndarray):
    table = dataset.table
    label = task.label
    rows = {s: task.items(s, train=False).rows for s in ("val", "test")}
    y = {s: table[f"label/{label}"].to_numpy()[r] for s, r in rows.items()}
    blocks, predictions = [], {}
    for attr in dataset.attribute_names:
        g = {s: table[f"sa/{attr}"].to_numpy()[r] for s, r in rows.items()}
        names = {attr: list(dataset.rules[attr].groups)} if attr in dataset.rules else None
        if test.ndim > 1:
            block = evaluate_multiclass(y["test"], test, {attr: g["test"]}, convention=req.convention, n_boot=req.n_boot,
                                        seed=req.train.seed, group_names=names, label=label)
        else:
            block = evaluate(y["test"], test, {attr: g["test"]}, threshold=req.threshold, convention=req.convention,
                             n_boot=req.n_boot, seed=req.train.seed, y_val=y["val"], score_val=val,
                             group_names=names).assign(label=label)
        blocks.append(block)
        predictions[prediction_key(req.method, label, attr)] = {
            "score": test.astype(np.float32), "seed": np.array([req.train.seed], np.int64), "row": rows["test"],
            "id": table["id"].to_numpy(dtype=str)[rows["test"]], "y": y["test"], "group": g["test"]}
    metrics = pd.concat(blocks, ignore_index=True).assign(head=req.method, dataset=dataset.name, model=req.model,
                                                          hparams=json.dumps(task.describe()["hparams"]))
    return metrics, predictions


def _is_segmentation(req: FinetuneRequest) -> bool:
    return req.method.startswith("samed")


def _evaluate_masks(task, dataset: Dataset, req: FinetuneRequest):
    """Test Dice and IoU per image (the mean over the dataset's classes), then per group with
    bootstrap intervals, as a segmentation sweep scores its prompts."""
    from fmcache.finetune.samed import predict_masks
    from fmcache.segment.sweep import class_mean, score_items

    rows = task.rows("test")
    masks = predict_masks(task, rows)
    truth = [dataset.mask(int(r)) for r in rows]
    pred = [[m == c for m in masks] for c in range(1, len(task.classes) + 1)]
    values = score_items(truth, pred, "one", None)
    per_item = {m: class_mean(v) for m, v in values.items()}
    blocks, predictions = [], {}
    for attr in dataset.attribute_names:
        g = dataset.table[f"sa/{attr}"].to_numpy()[rows]
        names = {attr: list(dataset.rules[attr].groups)} if attr in dataset.rules else None
        blocks.append(evaluate_dice(per_item["dsc"], {attr: g}, iou=per_item["iou"], n_boot=req.n_boot,
                                    seed=req.train.seed, group_names=names))
        predictions[prediction_key(req.method, SEGMENTATION_LABEL, attr)] = {
            **values, "row": rows, "id": dataset.table["id"].to_numpy(dtype=str)[rows], "group": g}
    metrics = pd.concat(blocks, ignore_index=True).assign(head=req.method, label=SEGMENTATION_LABEL,
                                                          dataset=dataset.name, model=req.model)
    return metrics, predictions


def target_gap(method: str) -> str:
    """The gap a method is built to shrink: its mitigation's, else the utility gap."""
    if method.startswith("samed"):
        return "dsc_delta"
    mitigation = method.partition("+")[2]
    return MITIGATIONS[mitigation].target_gap if mitigation in MITIGATIONS else "auc_delta"


def _config(task, dataset: Dataset, req: FinetuneRequest, result: FitResult, root: str) -> dict[str, Any]:
    segmentation = _is_segmentation(req)
    return {
        "task": "segmentation" if segmentation else "finetune",
        "dataset": dataset.name,
        "model": req.model,
        "method": req.method,
        "root": root,
        "heads": [req.method],
        "target_gaps": {req.method: target_gap(req.method)},
        "labels": [SEGMENTATION_LABEL] if segmentation else [task.label],
        **({"mask_classes": list(task.classes), "items": "images"} if segmentation else {}),
        "attributes": dataset.attribute_names,
        "group_names": {a: list(dataset.rules[a].groups) for a in dataset.attribute_names if a in dataset.rules},
        "convention": req.convention,
        "threshold": req.threshold,
        "n_boot": req.n_boot,
        "finetune": {**task.describe(), "train": asdict(req.train), "best_epoch": result.best_epoch,
                     "best_val_score": result.best_score, "epochs_run": len(result.history),
                     "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
                     "images_per_s": result.images_per_s, "weights": req.weights},
        "versions": {"fmcache": __version__, "torch": torch.__version__, "numpy": np.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def embed_finetuned(run: str | os.PathLike[str], dataset: Dataset, *, root: str | os.PathLike[str] | None = None,
                    runs: str | os.PathLike[str] | None = None, device: str | None = None, progress: bool = True):
    """Cache ``dataset`` through a finished run's fine-tuned encoder (its selected epoch), as the
    entry ``<model>+<run>``: every head, metric and analysis of the cache then applies to it.
    Returns the embed summary."""
    from fmcache.embed.encode import embed
    from fmcache.finetune.loop import load_checkpoint

    path = run_path(run, root, runs)
    req = read_request(path)
    if not (path / "config.json").is_file():
        raise FmcacheError(f"run {path.name} is not finished; resume it first (`fmcache finetune --resume {path}`)")
    if _is_segmentation(req):
        raise FmcacheError("caching a SAMed encoder's image features is not supported yet; its run's masks and "
                           "metrics are in the run directory")
    if device:
        req = replace(req, train=replace(req.train, device=device))
    task = build_task(dataset, req)
    best = best_checkpoint(path / CHECKPOINTS)
    load_checkpoint(task.model, best, torch.device(req.train.device))
    enc = task.enc
    tuned = replace(enc, encode_image=enc.image_forward, weights_id=f"{enc.weights_id}+{path.name}",
                    weights_sha256=sha256_file(best))
    tuned.module.eval()
    return embed(dataset, f"{req.model}+{path.name}", root=root, encoder=tuned, device=req.train.device,
                 progress=progress)
