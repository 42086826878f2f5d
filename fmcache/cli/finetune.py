"""`fmcache finetune`: train a foundation model's own weights (LoRA, full, SAMed) with a mitigation."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fmcache.cli.app import Interrupted, RootOpt, RunsOpt, app, command, dataset_options, say

METHOD_HELP = (
    "lora | full | samed, alone or with a mitigation after +: lora+resample, lora+groupdro, lora+laftr "
    "(laftr_eqodd, laftr_eqopp), lora+fairpenalty (fairpenalty_eo), lora+domain_ind (the same for full); "
    "samed+febs, samed+resample, samed+ind."
)


@command(app)
def finetune(
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="MODEL", show_default=False,
                                                 help="Model key (see `fmcache models`).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", metavar="DATASET", show_default=False,
                                                   help="Dataset key (see `fmcache datasets`).")] = None,
    method: Annotated[str, typer.Option("--method", metavar="METHOD", help=METHOD_HELP)] = "lora",
    data: Annotated[Optional[str], typer.Option(
        "--data", metavar="PATH", show_default=False,
        help="Root of your copy of the release (default $FMCACHE_DATA/<dataset>); for `csv`, the CSV file.")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", metavar="KEY=VALUE", show_default=False,
        help="Dataset option, repeatable (see `fmcache datasets DATASET`).")] = None,
    label: Annotated[Optional[str], typer.Option("--label", "-l", metavar="LABEL", show_default=False,
                                                 help="Label to train on (default: the dataset's first).")] = None,
    attribute: Annotated[Optional[str], typer.Option(
        "--attribute", "-a", metavar="ATTR", show_default=False,
        help="Sensitive attribute whose groups the mitigation uses (default: the dataset's first). Every "
        "attribute is evaluated.")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", metavar="PATH", show_default=False,
                                                   help="Local checkpoint file/folder instead of the model's default source.")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", min=1, metavar="R", show_default=False,
                                                help="LoRA rank (alpha = rank unless --alpha). Default: 8 for lora, "
                                                "4 for samed.")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", metavar="A", show_default=False, help="LoRA alpha.")] = None,
    hp: Annotated[Optional[list[str]], typer.Option(
        "--hp", metavar="NAME=VALUE", show_default=False,
        help="A mitigation hyperparameter, repeatable (e.g. --hp dro_step=0.1, --hp adv_coeff=0.3, --hp gamma=2); "
        "defaults are those of the frozen-feature head of the same name.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, metavar="N", show_default=False,
                                                  help="Maximum epochs (default 100; samed+febs 20).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, metavar="N", show_default=False,
                                                      help="Images per batch (default 128; samed 16).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", metavar="LR", show_default=False,
                                                help="Peak learning rate of AdamW (default 2.5e-4; samed 0.005).")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", metavar="W", help="AdamW weight decay.")] = 0.05,
    warmup: Annotated[float, typer.Option("--warmup", min=0, metavar="EPOCHS",
                                          help="Linear warmup, then a half cosine down to 1e-5.")] = 5.0,
    accumulate: Annotated[int, typer.Option("--accumulate", min=1, metavar="K",
                                            help="Batches per optimiser step (an effective batch of K x batch).")] = 1,
    patience: Annotated[int, typer.Option("--patience", min=0, metavar="N",
                                          help="Stop after N epochs without a better validation score (0: never).")] = 10,
    domain_inference: Annotated[str, typer.Option(
        "--domain-inference", metavar="sum|known",
        help="+domain_ind at test time: the mean of the groups' probabilities (sum, no group needed) or each "
        "image's own group's head (known, an oracle), as `fmcache probe --domain-inference`.")] = "sum",
    augment: Annotated[bool, typer.Option("--augment", help="The benchmark's training augmentation (flip, rotation "
                                          "within 15 degrees, random crop), as its --augment.")] = False,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto | cpu | cuda | cuda:N")] = "auto",
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", min=0, metavar="N", show_default=False,
                                                       help="Image-decoding worker processes (default: cores - 1).")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the batches, augmentations and initialisation.")] = 0,
    split_seed: Annotated[int, typer.Option("--split-seed", metavar="N", help="Seed of the patient-level split.")] = 0,
    n_boot: Annotated[int, typer.Option("--n-boot", min=0, metavar="N", help="Bootstrap resamples for the intervals.")] = 1000,
    embed: Annotated[bool, typer.Option("--embed", help="Afterwards cache the dataset through the fine-tuned encoder "
                                        "as the entry MODEL+RUN, so `fmcache probe -m MODEL+RUN` and every analysis "
                                        "apply to it (not yet for samed).")] = False,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="RUN", show_default=False,
        help="Continue an unfinished run (its folder or name) from its last finished epoch, with the settings it "
        "was started with (only --device and --num-workers may change); the result equals an uninterrupted run.")] = None,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Fine-tune a model's weights with a bias mitigation, and measure its fairness on test.

    The frozen-feature heads (`fmcache probe`) answer how fair a frozen model is; this asks
    whether fine-tuning changes the answer. lora trains LoRA adapters (peft) on the image
    tower's attention projections (CLIP's own ViT: its MLP layers; the CNNs: their
    convolutions) and a head; full trains the whole image tower. A +mitigation trains with the loss of the frozen-feature head of the
    same name, on the backbone's pooled feature. samed fine-tunes a SAM-family model for
    segmentation: LoRA on its image encoder, its mask decoder trained, Dice + cross-entropy.

    Training: AdamW, warmup and a half cosine, bfloat16 autocast on a GPU, a checkpoint
    (adapter and head weights only, safetensors) after every epoch; the epoch with the best
    validation AUC (Dice for samed) is kept, never one chosen on test. The run directory
    holds the test metrics with bootstrap intervals: `fmcache results`, `fmcache report` and
    `fmcache compare` put it beside the frozen heads. Ctrl-C keeps the finished epochs' checkpoints;
    --resume RUN continues.

    Examples:

      fmcache finetune -m biomedclip -d ham10000 --method lora --data ~/data/HAM10000
      fmcache finetune -m biomedclip -d ham10000 --method lora+groupdro -a sex --embed
      fmcache finetune -m sam -d ham10000_seg --method samed+febs -a age
      fmcache finetune --resume 20261202-101500-ham10000-biomedclip-lora
    """
    if resume is None and (model is None or dataset is None):
        raise typer.BadParameter("name --model and --dataset (or --resume RUN)", param_hint="'--model' / '--dataset'")
    from fmcache.datasets import load_dataset
    from fmcache.embed.encode import default_workers, resolve_device
    from fmcache.finetune.loop import TrainConfig
    from fmcache.finetune.run import FinetuneRequest, check_method, embed_finetuned, read_request, resume_finetune
    from fmcache.finetune.run import finetune as run_finetune
    from fmcache.runs import run_path
    from fmcache.views import make_console

    device = resolve_device(device)
    workers = default_workers() if num_workers is None else num_workers
    if resume is not None:
        path = run_path(resume, root, runs)
        req = read_request(path)
    else:
        train = TrainConfig(weight_decay=weight_decay, warmup_epochs=warmup, accumulate=accumulate, patience=patience,
                            seed=seed, num_workers=workers, device=device)
        req = FinetuneRequest(dataset=dataset, model=model, method=method, label=label, attribute=attribute,
                              weights=weights, alpha=alpha, augment=augment, hparams=_hparams(hp), train=train,
                              n_boot=n_boot, domain_inference=domain_inference, data=data, options=dataset_options(option), data_seed=split_seed)
        check_method(method)  # named before the data is read
        req = _with_method_defaults(req, rank=rank, epochs=epochs, batch_size=batch_size, lr=lr)
    ds = load_dataset(req.dataset, req.data, options=req.options, seed=req.data_seed)
    console = make_console()
    bar = _progress(console)
    try:
        with bar:
            task = bar.add_task(f"{req.dataset}/{req.model} {req.method}", total=None, status="")
            kw = {"on_step": lambda s: bar.update(task, completed=s["step"], total=s["steps"],
                                                  description=f"epoch {s['epoch'] + 1}/{req.train.epochs}",
                                                  status=f"loss {s['loss']:.4f} · {s['images_per_s']:.1f} img/s"),
                  "on_epoch": lambda r: say(f"epoch {r['epoch'] + 1}: train loss {r['train_loss']:.4f}, "
                                            f"validation {r['val_score']:.4f}")}
            if resume is not None:
                run = resume_finetune(path, ds, root=root, runs=runs, device=device, **kw)
            else:
                run = run_finetune(ds, req, root=root, runs=runs, **kw)
    except KeyboardInterrupt:
        raise Interrupted("before the first epoch ended nothing is kept; after it, the run's folder keeps the "
                          "checkpoints and `fmcache finetune --resume RUN` continues") from None
    _show(console, run)
    if embed:
        summary = embed_finetuned(run.path, ds, root=root, runs=runs, device=device)
        typer.echo(summary.line())


def _hparams(values: list[str] | None) -> dict[str, float]:
    out = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"{v!r}: write NAME=NUMBER, e.g. dro_step=0.1", param_hint="'--hp'")
    return out


def _with_method_defaults(req, *, rank: int | None, epochs: int | None, batch_size: int | None, lr: float | None):
    """The benchmark's settings for the method where the command line leaves them open."""
    from dataclasses import replace

    from fmcache.finetune.run import method_defaults

    d = method_defaults(req.method)
    train = replace(req.train, epochs=epochs or d["epochs"], batch_size=batch_size or d["batch_size"], lr=lr or d["lr"])
    return replace(req, rank=rank or d["rank"], train=train)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=console, transient=True)


def _show(console, run) -> None:
    from fmcache.views import headline_table, segmentation_table

    ft = run.config.get("finetune", {})
    what = f"{run.config['dataset']}/{run.config['model']} {run.config.get('method') or ft.get('method')}"
    if run.config.get("task") == "segmentation":
        console.print(segmentation_table(run.metrics, f"{what}: Dice per group (test split)"))
    else:
        for label in run.metrics["label"].unique():
            console.print(headline_table(run.metrics, label, f"{what}, label {label}: test metrics"))
    console.print(f"kept epoch {ft.get('best_epoch', 0) + 1} of {ft.get('epochs_run')} (best validation score "
                  f"{ft.get('best_val_score', float('nan')):.4f})", markup=False, highlight=False)
    console.print(f"run: {run.path.name}  (`fmcache results {run.path.name}`, `fmcache compare`)",
                  markup=False, highlight=False)

