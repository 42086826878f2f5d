"""The workflow: `embed` images into the cache, `probe` heads on it, look at `results`,
write a `report`, or see it all on generated data with `demo`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmcache.cli.app import Interrupted, RootOpt, RunsOpt, app, command, dataset_options, say
from fmcache.heads.stream import DEFAULT_WINDOW

ProtocolOpt = Annotated[
    str, typer.Option("--protocol", metavar="fmcache|fairmedfm|paper",
                      help="A named bundle of switches (`fmcache protocols` lists them side by side); each switch "
                      "option given here overrides the bundle's value.")
]


@command(app)
def embed(
    model: Annotated[str, typer.Option("--model", "-m", metavar="MODEL", help="Model key (see `fmcache models`).")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", metavar="DATASET", help="Dataset key (see `fmcache datasets`).")],
    data: Annotated[
        Optional[str],
        typer.Option("--data", metavar="PATH", show_default=False,
                     help="Root of your copy of the release (default $FMCACHE_DATA/<dataset>); for `csv`, the CSV file."),
    ] = None,
    option: Annotated[
        Optional[list[str]],
        typer.Option("--option", "-o", metavar="KEY=VALUE", show_default=False,
                     help="Dataset option, repeatable (see `fmcache datasets DATASET`)."),
    ] = None,
    dataset_config: Annotated[
        Optional[Path], typer.Option("--dataset-config", metavar="YAML", show_default=False,
                                     help="YAML file of dataset options (the csv adapter's rules).")
    ] = None,
    root: RootOpt = None,
    weights: Annotated[
        Optional[str], typer.Option("--weights", metavar="PATH", show_default=False,
                                    help="Local checkpoint file/folder instead of the model's default source.")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", "-b", min=1, metavar="N", show_default=False,
                     help="Images per forward pass (default: what the entry was made with, else 64). Part of the "
                     "entry's identity: it can change the last bits of a feature."),
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto | cpu | cuda | cuda:N")] = "auto",
    num_workers: Annotated[
        Optional[int], typer.Option("--num-workers", min=0, metavar="N", show_default=False,
                                    help="Image-decoding worker processes (default: cores - 1; under torchrun, "
                                    "each process's share of its node's cores - 1).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the patient-level train/val/test split.")] = 0,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, metavar="N",
                                            help="Rows per cache chunk: the unit that is written, marked done and resumed.")] = 256,
    slices: Annotated[Optional[int], typer.Option("--slices", min=1, metavar="N", show_default=False,
                                                  help="Switch, 3D datasets: slices each volume is resampled to (2.5D; "
                                                  "32 under fmcache's protocol).")] = None,
    pool: Annotated[str, typer.Option("--pool", metavar="max|mean", help="3D datasets: volume feature from its slices' features.")] = "max",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cache entry made with other weights, preprocessing or data.")] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="If another process is writing this entry, stop (naming it) instead of waiting.")
    ] = False,
    trust_code: Annotated[
        bool,
        typer.Option("--trust-code", help="Also load --weights files whose loading runs code they carry (TorchScript "
                     "archives, e.g. OpenAI's CLIP .pt; the clip model's default hub safetensors need no flag). Refused "
                     "by default, as such a file can run anything: only for files from a source you trust."),
    ] = False,
    protocol: ProtocolOpt = "fmcache",
    preprocess: Annotated[
        Optional[str], typer.Option("--preprocess", metavar="model|paper|reference", show_default=False,
                                    help="Switch: the model's own preprocessing (fmcache), the paper's (resize 256, "
                                    "crop 224, ImageNet statistics) or the reference code's (resize 224, crop 224, "
                                    "per-dataset statistics).")
    ] = None,
    queries: Annotated[
        Optional[str], typer.Option("--queries", metavar="mean|reference", show_default=False,
                                    help="Switch, BLIP-2 only: cache the mean of the Q-Former queries (fmcache), or "
                                    "query 0 and every query's projection (reference).")
    ] = None,
) -> None:
    """Encode every image of a dataset with a frozen model into the cache (resumable).

    Rerunning after an interruption (Ctrl-C included) continues where it stopped; rerunning a
    finished entry is a no-op that writes nothing. A request whose weights, preprocessing,
    batch size or samples differ from the cached entry is refused unless --overwrite. One
    process writes an entry at a time: a second one waits for the first (or, with --no-wait,
    stops), and --overwrite never deletes an entry that another process is writing.

    --protocol fairmedfm (or paper) reproduces the FairMedFM benchmark's inputs: its
    preprocessing and BLIP-2 features make an entry of their own (e.g. clip+pre-reference),
    volumes get its slice count, and its dataset options (balanced test split, MIMIC-CXR
    cohort, volume intensities, HAM10000 label) are added unless -o sets them.
    `fmcache protocols` lists every switch.

    Launched under torchrun (e.g. `torchrun --nproc-per-node 4 -m fmcache embed ...`), the
    processes share out the chunks of one entry: one per GPU, on one node or several (with a
    shared --root: a shared folder or s3://...).

    A segmentation model caches image features for `fmcache segment`: a 2D one (sam, medsam,
    ...) on a volumetric dataset reads its axial slices that hold foreground (cached as
    DATASET_slices), a 3D one (sam_med3d, fastsam3d, segvol) each volume's input blocks with
    their geometry.

    Examples:

      fmcache embed -m dinov2 -d ham10000 --data ~/data/HAM10000
      fmcache embed -m medclip -d csv --data study.csv \\
          -o subject_column=patient -o labels=pneumonia
      fmcache embed -m clip -d mimic_cxr --protocol fairmedfm
    """
    from fmcache.embed.registry import get_model
    from fmcache.protocols import dataset_options as protocol_options
    from fmcache.protocols import resolve
    from fmcache.segment.models import is_segmentation_model

    segmentation = is_segmentation_model(model)
    if not segmentation:
        get_model(model)  # a misspelt model is named before the data is read or torch is imported
    resolve(protocol, "embed", {"preprocess": preprocess, "queries": queries})  # and a misspelt switch
    if segmentation and (protocol != "fmcache" or preprocess or queries or slices):
        raise typer.BadParameter(f"{model} is a segmentation model: --protocol, --preprocess, --queries and --slices "
                                 "are switches of the classification protocols", param_hint="'--model' / '-m'")
    from fmcache.datasets import get_dataset, load_dataset

    opts = dataset_options(option)
    if dataset_config is not None:
        opts["config"] = str(dataset_config)
    opts = protocol_options(protocol, dataset, list(get_dataset(dataset).attributes), opts)
    ds = load_dataset(dataset, data, options=opts, seed=seed)
    try:
        if segmentation:
            from fmcache.segment.features import DEFAULT_CHUNK_ROWS, embed_features
            from fmcache.segment.models import VOLUME_MODELS

            if ds.spec.volumetric_segmentation and model not in VOLUME_MODELS:
                from fmcache.segment.slices import slice_dataset

                say(f"{model} is a 2D model: it reads the axial slices of {ds.name} that hold foreground")
                ds = slice_dataset(ds)
            summary = embed_features(ds, model, root=root, weights=weights, device=device, batch_size=batch_size,
                                     chunk_rows=min(chunk_rows, DEFAULT_CHUNK_ROWS), overwrite=overwrite,
                                     wait=not no_wait, on_wait=say, on_repair=say)
        else:
            from fmcache.embed.encode import embed as run_embed

            summary = run_embed(ds, model, root=root, weights=weights, batch_size=batch_size, device=device,
                                num_workers=num_workers, overwrite=overwrite, chunk_rows=chunk_rows, slices=slices,
                                pool=pool, wait=not no_wait, on_wait=say, on_repair=say, trust_code=trust_code,
                                protocol=protocol, preprocess=preprocess, queries=queries)
    except KeyboardInterrupt:
        raise Interrupted(_kept(root, ds.name, model)) from None
    from fmcache.embed.distributed import is_secondary

    if is_secondary():
        return  # rank 0 reports the whole job
    typer.echo(summary.line())
    if ds.name != dataset or summary.model != model:
        typer.echo(f"cached as dataset {ds.name!r}, model {summary.model!r}: name them so from now on, e.g. "
                   f"`fmcache probe -d {ds.name} -m {summary.model}`, `fmcache cache info {ds.name}`")


def _kept(root: str | None, dataset: str, model: str) -> str:
    import fmcache

    try:
        entries = fmcache.open_cache(root).entries()
        row = entries[(entries["dataset"] == dataset) & (entries["model"] == model)]
        done = row["chunks_done"].iloc[0] if len(row) else "no"
        done = done if "/" in done else "no"  # "none yet": stopped while the entry was being made
    except Exception:  # noqa: BLE001 - the message must come out whatever state the store is in
        done = "the finished"
    return (f"{done} chunks of {dataset}/{model} are in the cache and stay there; "
            "rerun the same command to encode only the rest")


def _csv(values: list[str] | None) -> list[str] | None:
    out = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    return out or None


@command(app)
def probe(
    dataset: Annotated[str, typer.Option("--dataset", "-d", metavar="DATASET", help="Dataset name in the cache (`fmcache cache ls`).")],
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", metavar="MODEL", help="Cached model(s): repeat or comma-separate; `all` = every cached model of the dataset."),
    ],
    heads: Annotated[
        Optional[list[str]],
        typer.Option("--heads", metavar="HEAD,...", show_default=False,
                     help="Head types: linear, resample, groupdro, laftr, laftr_eqodd, laftr_eqopp, "
                     "fairpenalty, fairpenalty_eo, domain_ind, zeroshot, clip_adapt, clip_adapt_bias."),
    ] = None,
    sweep: Annotated[
        str, typer.Option("--sweep", metavar="default|all|YAML",
                          help="default: the benchmark's hyperparameters (lr 2.5e-4, wd 0.05, 100 epochs), linear unless "
                          "--heads; all: every head type (or --heads) over its grid; or a YAML file of grids.")
    ] = "default",
    attributes: Annotated[Optional[list[str]], typer.Option("--attributes", "-a", metavar="ATTR,...", show_default=False,
                                                            help="Sensitive attributes (default: all).")] = None,
    labels: Annotated[Optional[list[str]], typer.Option("--labels", "-l", metavar="LABEL,...", show_default=False,
                                                        help="Labels (default: all).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, metavar="N",
                                       help="Initialisation seeds per grid point: repeats of the selected configuration, "
                                       "not a hyperparameter. Selection uses the mean validation criterion over the "
                                       "seeds; results show mean ± sd across them and each seed's row.")] = 1,
    criterion: Annotated[str, typer.Option("--criterion", metavar="NAME",
                                           help="Validation selection: auc | worst_group_auc | tradeoff (auc - auc_delta).")] = "auc",
    threshold: Annotated[Optional[str], typer.Option("--threshold", metavar="RULE", show_default=False,
                                                     help="Switch: a number, or val / val:f1 / val:sensitivity:0.9 "
                                                     "(chosen on validation; fmcache's is val), or best_f1_on_test "
                                                     "(fairmedfm); multi-class labels use the argmax class.")] = None,
    convention: Annotated[Optional[str], typer.Option("--convention", metavar="NAME", show_default=False,
                                                      help="Switch: metric convention paper (fmcache's) | fairmedfm | "
                                                      "fairlearn.")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=0, metavar="N", help="Bootstrap resamples for the test intervals.")] = 1000,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, metavar="N", show_default=False,
                                                  help="Training epochs (default 100, or the sweep file's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="N", show_default=False,
                                                      help="Minibatch size (default 128).")] = None,
    feature_kind: Annotated[Optional[str], typer.Option("--feature-kind", metavar="KIND", show_default=False,
                                                        help="Switch: the feature trained heads learn from: auto (the "
                                                        "projected one if the model has it; fmcache's) | reference "
                                                        "(the reference code's per model) | image | image_proj.")] = None,
    volume: Annotated[
        str, typer.Option("--volume", metavar="MODE", help="3D datasets: max | mean of per-slice predictions (heads trained on "
                          "slices), or features: heads trained on the pooled volume feature.")
    ] = "max",
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of minibatch order and bootstrap resamples.")] = 0,
    domain_inference: Annotated[str, typer.Option("--domain-inference", metavar="sum|known",
                                                  help="domain_ind scoring of val and test: sum (mean of the group outputs' "
                                                  "probabilities, no group needed) | known (each row's own group, an oracle).")] = "sum",
    templates: Annotated[Optional[str], typer.Option("--templates", metavar="mean|first", show_default=False,
                                                     help="Switch: text prototype of a class for zeroshot and "
                                                     "clip_adapt: mean of all templates (fmcache's) | first (the "
                                                     "reference code's one template).")] = None,
    query_pool: Annotated[Optional[str], typer.Option("--query-pool", metavar="mean|max", show_default=False,
                                                      help="Switch, BLIP-2: text heads score the mean query (fmcache's) "
                                                      "| each class's best query (max; needs an entry embedded with "
                                                      "--queries reference).")] = None,
    logit_scale: Annotated[Optional[str], typer.Option("--logit-scale", metavar="model|reference", show_default=False,
                                                       help="Switch: zero-shot logit scale as the model stores it "
                                                       "(fmcache's) | with the reference code's factors (PubMedCLIP "
                                                       "x 0.942).")] = None,
    memory_budget: Annotated[Optional[str], typer.Option(
        "--memory-budget", metavar="SIZE", show_default=False,
        help="Memory the features and heads may take, e.g. 8G or 512M (default: a quarter of the GPU's memory, or "
        "of RAM up to 4G on a CPU). Features larger than half of it stay in the cache and are streamed in windows "
        "read ahead on a background thread; larger head stacks train in chunks.")] = None,
    shuffle: Annotated[str, typer.Option(
        "--shuffle", metavar="auto|rows|chunks",
        help="Minibatch order: rows (every epoch a permutation of all rows), chunks (cache chunks in a random order, "
        "rows shuffled within --shuffle-window rows; what streamed features need), auto (chunks when streamed, "
        "else rows). The same --shuffle chunks gives the same heads streamed or in memory.")] = "auto",
    shuffle_window: Annotated[int, typer.Option("--shuffle-window", min=1, metavar="ROWS",
                                                help="Rows shuffled together under --shuffle chunks.")] = DEFAULT_WINDOW,
    devices: Annotated[Optional[int], typer.Option("--devices", min=1, metavar="N", show_default=False,
                                                   help="Spread each stack of heads over at most N devices of each "
                                                   "process (default: all of them).")] = None,
    coordinator: Annotated[Optional[str], typer.Option("--coordinator", metavar="HOST:PORT", show_default=False,
                                                       envvar="JAX_COORDINATOR_ADDRESS",
                                                       help="Across hosts: the address of process 0, which every "
                                                       "process names (jax.distributed).")] = None,
    num_processes: Annotated[Optional[int], typer.Option("--num-processes", min=1, metavar="N", show_default=False,
                                                         envvar="JAX_NUM_PROCESSES",
                                                         help="Across hosts: how many processes take part.")] = None,
    process_id: Annotated[Optional[int], typer.Option("--process-id", min=0, metavar="I", show_default=False,
                                                      envvar="JAX_PROCESS_ID",
                                                      help="Across hosts: this process's number, 0 to N-1; 0 "
                                                      "writes the run.")] = None,
    protocol: ProtocolOpt = "fmcache",
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Train fairness heads on cached embeddings, select on validation, evaluate on test.

    Every head of one type is trained at once (JAX, vmapped). Heads are chosen per label and
    attribute on the validation split by --criterion, then evaluated on the test split with
    bootstrap intervals. Each (dataset, model) writes a run directory under <root>/runs.
    A multi-class label (e.g. ham10000's dx) trains softmax heads and skips binary-only head
    types; its AUC is macro one-vs-rest and its accuracy that of the argmax class, so
    --threshold does not apply to it.

    --protocol fairmedfm (or paper) sets every switch left unset to the FairMedFM
    reference's value and probes the entry its embed switches made (-m clip reads
    clip+pre-reference); the run records each switch and how it differs from the reference.

    Devices: each stack of heads is split along its head axis over every local JAX device
    (each GPU; the CPU is one device), the features copied to each; results equal a one-device run's up to
    float32 rounding. --devices N uses fewer.

    Across hosts: start the same command on every host with --coordinator HOST:PORT (process
    0's host and a free port), --num-processes N and --process-id I (or the variables
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). The heads are then spread
    over every process's devices; every process reads the same cache entry (a shared or
    copied cache), and only process 0 evaluates and writes the run; the others print one
    line and exit 0. On CPU the processes exchange results over TCP (gloo).

    Examples:

      fmcache probe -d chexpert -m medclip --sweep all --attributes sex,age
      fmcache probe -m clip --protocol fairmedfm --heads linear,zeroshot \\
          -d mimic_cxr_cohort-demographics_split-balanced-test-sex
      fmcache probe -d chexpert -m medclip --sweep all \\
          --coordinator host0:12355 --num-processes 2 --process-id 0   # on host0
      fmcache probe -d chexpert -m medclip --sweep all \\
          --coordinator host0:12355 --num-processes 2 --process-id 1   # on host1
    """
    import fmcache
    from fmcache.errors import FmcacheError
    from fmcache.probe.data import entry_name, is_segmentation_entry
    from fmcache.protocols import resolve

    budget = _size(memory_budget, "--memory-budget") if memory_budget else None
    cache = fmcache.open_cache(root)
    models = _csv(model) or []
    if models == ["all"]:  # every entry with embeddings to probe
        models = [m for m in cache.models(dataset) if not is_segmentation_entry(cache.embeddings(dataset, m))]
        if not models:
            raise FmcacheError(f"{dataset} has no embeddings to probe (`fmcache cache info {dataset}` lists its entries)")
    models = [entry_name(cache, dataset, m, protocol) for m in models]
    for m in models:  # named before JAX is imported
        cache.embeddings(dataset, m)
    resolve(protocol, "probe", {"feature": feature_kind, "templates": templates, "query_pool": query_pool,
                                "logit_scale": logit_scale, "threshold": threshold, "convention": convention})
    from fmcache.heads import devices as heads_devices

    across = (coordinator, num_processes, process_id)
    if any(v is not None for v in across):
        if any(v is None for v in across):
            raise typer.BadParameter("across hosts, give all three: --coordinator HOST:PORT --num-processes N "
                                     "--process-id I", param_hint="'--coordinator'")
        if process_id >= num_processes:
            raise typer.BadParameter(f"--process-id {process_id} with --num-processes {num_processes}: "
                                     "numbers run from 0 to N-1", param_hint="'--process-id'")
        # before anything starts JAX's backend, which fixes the devices it sees
        heads_devices.join(coordinator, num_processes, process_id)
    heads_devices.set_limit(devices)
    from fmcache.probe import SweepConfig, load_sweep, run_sweep
    from fmcache.views import headline_table, make_console

    grids, settings = load_sweep(sweep, _csv(heads))

    def _config(m: str) -> SweepConfig:
        return SweepConfig(
            dataset=dataset, model=m, heads=grids, labels=_csv(labels), attributes=_csv(attributes), seeds=seeds,
            criterion=criterion, threshold=float(threshold) if threshold and _is_number(threshold) else threshold,
            convention=convention, n_boot=n_boot, epochs=epochs or settings.get("epochs", 100),
            batch_size=batch_size or settings.get("batch_size", 128), kind=feature_kind, volume=volume, seed=seed,
            domain_inference=domain_inference, templates=templates, query_pool=query_pool, logit_scale=logit_scale,
            protocol=protocol, memory_budget=budget, shuffle=shuffle, window=shuffle_window,
        )

    if not heads_devices.is_writer():
        # lends its devices to process 0's sweep; the same stacks in the same order
        with _native_stdout_to_stderr():
            for m in models:
                run_sweep(_config(m), root=root, runs=runs)
        typer.echo(f"process {process_id} of {num_processes}: trained its share of the heads; process 0 writes the run(s)")
        return
    console = make_console()
    done: list[str] = []
    for m in models:
        cfg = _config(m)
        try:
            with console.status(f"{dataset}/{m}: loading") as status:
                run = run_sweep(cfg, root=root, runs=runs,
                                on_head=lambda h, k: status.update(f"{dataset}/{m}: training {k} {h} heads"))
        except KeyboardInterrupt:
            kept = f"the runs of {', '.join(done)} are kept" if done else "no run was written"
            raise Interrupted(f"the unfinished run of {dataset}/{m} was discarded and {kept}; "
                              "rerun the command to train it again") from None
        done.append(f"{dataset}/{m} ({run.path.name})")
        for label in run.metrics["label"].unique():
            console.print(headline_table(run.metrics, label, f"{dataset}/{m}, label {label}: test metrics of the heads "
                                         f"chosen by validation {criterion}"))
        for h, why in run.config["skipped"].items():
            console.print(f"skipped {h}: {why}", markup=False)
        console.print(f"run: {run.path.name}  (`fmcache results {run.path.name}`)", markup=False, highlight=False)


def _size(text: str, option: str) -> int:
    from fmcache.errors import FmcacheError
    from fmcache.heads.memory import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError:
        raise FmcacheError(f"{option} {text!r}: give a size such as 8G, 512M or 1.5G") from None


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    # gloo (collectives across processes on CPU) prints its connection lines from C++ to
    # file descriptor 1, past sys.stdout
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@command(app)
def segment(
    dataset: Annotated[str, typer.Option("--dataset", "-d", metavar="DATASET", help="Dataset name in the cache (`fmcache cache ls`).")],
    model: Annotated[str, typer.Option("--model", "-m", metavar="MODEL",
                                       help="A segmentation model whose image features are cached (sam, medsam, ...).")],
    data: Annotated[
        Optional[str],
        typer.Option("--data", metavar="PATH", show_default=False,
                     help="Root of your copy of the release, for the ground-truth masks (default $FMCACHE_DATA/<dataset>)."),
    ] = None,
    prompts: Annotated[Optional[list[str]], typer.Option(
        "--prompts", metavar="TYPE,...", show_default=False,
        help="Prompt types: center (deepest point of the object), box_center (the reference's box midpoint), rand, "
        "rands (5 points), bbox; SegVol also text (each class's name, through its text tower: needs the release's "
        "tokenizer files beside its weights). Default: center,rand,rands,bbox, those of them a 3D model takes "
        "(SAM-Med3D: no bbox).")] = None,
    attributes: Annotated[Optional[list[str]], typer.Option("--attributes", "-a", metavar="ATTR,...", show_default=False,
                                                            help="Sensitive attributes (default: all).")] = None,
    split: Annotated[str, typer.Option("--split", metavar="SPLIT", help="Items to segment: test | val | train | all.")] = "test",
    jitter: Annotated[int, typer.Option("--jitter", min=0, metavar="PX", help="bbox: move each side by up to PX pixels.")] = 0,
    n_boot: Annotated[int, typer.Option("--n-boot", min=0, metavar="N", help="Bootstrap resamples for the intervals.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the prompts and bootstrap resamples.")] = 0,
    nsd: Annotated[Optional[float], typer.Option(
        "--nsd", min=0, metavar="TOL", show_default=False,
        help="Also the normalised surface distance (surface Dice, by MONAI): the share of the true and predicted "
        "boundaries within TOL of the other, in pixels of the original image (volumes: mm, with their voxel "
        "spacing); per group and its gaps like Dice.")] = None,
    save_masks: Annotated[bool, typer.Option(
        "--save-masks", help="Keep every predicted mask (per prompt type, item and class) in the run, compressed; "
        "fmcache.segment.predicted_mask(run, prompt, item_id, class) reads one back.")] = False,
    zoom_in: Annotated[bool, typer.Option(
        "--zoom-in", help="SegVol: also its zoom-in pass, sliding windows at full resolution around each zoom-out "
        "prediction. Those windows depend on the prompt, so they are encoded afresh (an encoder pass per window "
        "and prompt) and need --data's images; without it the sweep decodes the cached zoom-out pass only.")] = False,
    weights: Annotated[
        Optional[str], typer.Option("--weights", metavar="PATH", show_default=False,
                                    help="Local checkpoint file instead of the model's default file.")
    ] = None,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Decode prompts from cached SAM-family image features and measure Dice fairness.

    Every image went through the image encoder once (`fmcache embed -m sam ...`); here each
    prompt type is decoded from those features: one prompt per item and class, built from the
    ground-truth mask and seeded per item, so a rerun gives the same prompts.

    Volumes (kits23, candi, ircadb, spider) are scored per volume, on their own voxels. A 3D
    model (sam_med3d, fastsam3d, segvol) decodes its cached blocks and maps each prediction back
    onto the volume; SAM-Med3D's prompt encoder takes points only (center, box_center, rand, rands). A 2D
    model reads the volume's foreground slices (cached by `fmcache embed` as DATASET_slices),
    each prompted from its own mask; the predicted slices are restacked into the volume. Dice and IoU per
    item (the mean over the dataset's classes), then per group with bootstrap intervals and
    the Dice gap, skew, spread and equity-scaled Dice; `fmcache report RUN` shows them, with
    the image and the true and predicted outlines of the lowest, median and highest Dice items
    of each group (small thumbnails every run keeps). --nsd TOL adds the normalised surface
    distance at that tolerance; --save-masks keeps every predicted mask.

    The image features are cached by `fmcache embed -m MODEL`, which can be launched under
    torchrun to spread the encoding over processes, GPUs and nodes; decoding here runs in one process.

    Example:

      fmcache embed -m sam -d ham10000_seg --data ~/data/HAM10000
      fmcache segment -m sam -d ham10000_seg --data ~/data/HAM10000 --prompts center,bbox
      fmcache embed -m sam_med3d -d kits23 --data ~/data/kits23
      fmcache segment -m sam_med3d -d kits23 --data ~/data/kits23 --prompts center,rands --nsd 2
    """
    import fmcache
    from fmcache.segment.models import VOLUME_MODELS, check_prompt_types, entry_dataset

    kinds = _csv(prompts) or ["center", "rand", "rands", "bbox"]
    if model in VOLUME_MODELS:
        if not prompts:
            kinds = [k for k in kinds if k in VOLUME_MODELS[model].prompts]
        check_prompt_types(VOLUME_MODELS[model], kinds)
    fmcache.open_cache(root).embeddings(entry_dataset(dataset, model), model)  # named before torch is imported
    from fmcache.segment.sweep import SegmentConfig, run_segment
    from fmcache.views import make_console, segmentation_table

    cfg = SegmentConfig(dataset=dataset, model=model, prompts=kinds, attributes=_csv(attributes),
                        split=split, seed=seed, jitter=jitter, n_boot=n_boot, nsd_tolerance=nsd, save_masks=save_masks,
                        zoom_in=zoom_in)
    console = make_console()
    try:
        with console.status(f"{dataset}/{model}: decoding") as status:
            run = run_segment(cfg, data=data, root=root, runs=runs, weights=weights,
                              on_batch=lambda d, t: status.update(f"{dataset}/{model}: {d}/{t} items decoded"))
    except KeyboardInterrupt:
        raise Interrupted("the unfinished segmentation run was discarded; rerun the command to decode again") from None
    console.print(segmentation_table(run.metrics, f"{dataset}/{model}: Dice per group and prompt ({split} split)"))
    console.print(f"run: {run.path.name}  (`fmcache report {run.path.name}`)", markup=False, highlight=False)


@command(app)
def results(
    run: Annotated[Optional[str], typer.Argument(metavar="RUN", help="Run name (from the list) or path; omit to list runs.",
                                                 show_default=False)] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", metavar="FILE", show_default=False,
                                                help="Write the run's full metric table to this CSV file "
                                                "(with --per-seed: each seed's rows).")] = None,
    per_seed: Annotated[bool, typer.Option("--per-seed", help="Also show each seed's row (runs with --seeds N).")] = False,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """List sweep runs, or show one run's headline table (and export its metrics as CSV).

    A run with several seeds shows the mean ± sd across them; --per-seed adds each seed's row.

    From Python: fmcache.load_results(name or path) returns .metrics (means over seeds),
    .seed_metrics (each seed's rows), .sweep, .predictions, .config.
    """
    from fmcache.runs import list_runs, load_results, runs_dir
    from fmcache.views import frame_table, headline_table, make_console, segmentation_table

    console = make_console()
    if run is None:
        listed = list_runs(root, runs)
        if listed.empty:
            typer.echo(f"no runs under {runs_dir(root, runs)} yet: `fmcache probe` makes them")
            return
        shown = listed.drop(columns=["path", "created"])
        console.print(frame_table(shown, f"runs under {runs_dir(root, runs)}", "`fmcache results RUN` shows one",
                                  keys=("run",)))
        return
    r = load_results(run, root, runs)
    if r.config.get("task") == "segmentation":
        console.print(segmentation_table(r.metrics, f"{r.path.name}: Dice per group and prompt"))
    else:
        for label in r.metrics["label"].unique():
            console.print(headline_table(r.metrics, label, f"{r.path.name}, label {label}"))
            if per_seed and not r.seed_metrics.empty:
                console.print(headline_table(r.seed_metrics, label, f"{r.path.name}, label {label}, per seed"))
    if per_seed and r.seed_metrics.empty:
        typer.echo("this run records no per-seed rows (written before runs kept them)")
    table = r.seed_metrics if per_seed and not r.seed_metrics.empty else r.metrics
    if csv is not None:
        table.to_csv(csv, index=False)
        typer.echo(f"wrote {len(table)} rows to {csv}")


@command(app)
def report(
    names: Annotated[list[str], typer.Argument(metavar="RUN", help="Run names (see `fmcache results`) or run directories.",
                                               show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="HTML file to write.")] = Path("study.html"),
    no_representation: Annotated[
        bool, typer.Option("--no-representation", help="Skip the t-SNE maps and attribute probes on the cached features.")
    ] = False,
    root: RootOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Write one self-contained HTML report (no network needed to view it) from one or more runs.

    Setup, headline tables with bootstrap intervals, trade-off, per-group and calibration
    figures, ranks across datasets, representation fairness, and a summary generated from the
    tables. Tables sort on click and download as CSV.

    Example:

      fmcache report 20261127-101500-synthetic-medclip \\
          20261127-103000-chexpert-medclip --out study.html
    """
    from fmcache.report import build_report
    from fmcache.runs import run_path

    paths = [run_path(r, root, runs) for r in names]
    try:
        path = build_report(paths, out, representation=not no_representation)
    except KeyboardInterrupt:
        raise Interrupted(f"no report was written to {out}; the runs are untouched") from None
    typer.echo(f"report: {path.resolve()}")


@command(app)
def demo(
    root: RootOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", metavar="MODEL", help="Model to embed with.")] = "efficientnet_lite0",
    size: Annotated[int, typer.Option("--size", min=20, metavar="N", help="Number of synthetic images.")] = 600,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild cache entries that differ.")] = False,
) -> None:
    """Run the whole pipeline offline on the synthetic dataset with a planted disparity.

    Generates chest-X-ray-like images whose lesion is harder to see in one group, embeds them
    with real pretrained weights that ship with the installation, shows what the cache holds,
    trains every head type on the cached features, says which heads shrink the planted gap
    and at what cost. Then segmentation on generated lesion images with masks: LiteMedSAM,
    whose pretrained weights ship with the installation, caches image features, prompts are
    decoded and Dice per group printed with intervals (sex, where a bias is planted, and age,
    the control); without its weights, a tiny SAM with random weights stands in and its masks
    only exercise the pipeline. Last, the HTML report of both runs.
    """
    from fmcache.demo import run_demo
    from fmcache.embed.registry import get_model

    get_model(model)
    run_demo(root=root, model=model, size=size, overwrite=overwrite)
