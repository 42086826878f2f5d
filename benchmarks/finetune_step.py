"""One training step of LoRA fine-tuning against full fine-tuning of the same image tower, same run.

Both sides train CLIP ViT-B/32's image tower (open_clip's ViT-B-32-quickgelu, random weights:
the cost does not depend on them) wrapped as fmcache's ``clip`` encoder, with a linear head on
the pre-projection features, a BCE loss on random labels and AdamW over what is trainable (the
head included), on the same random batches. LoRA (``add_lora``, rank 8 on the modules the
registry names for open_clip) freezes the backbone, so its backward pass skips the weight
gradients of the frozen matrices and AdamW updates a few hundred thousand numbers instead of
~88 million; full fine-tuning (``unfreeze_image_tower``) trains every weight of the tower. Each
side runs in its own spawned process, so its peak resident memory is its own; the two take turns
step by step and each side's time is the median of its steps, so a change in the machine's load
does not favour either.

    python benchmarks/finetune_step.py [--steps 5] [--batch-size 8] [--rank 8] [--quick]

Prints a table (images/s, peak RSS, its growth from the built model through training, trainable
parameters, head included) and
``RESULT finetune_step ratio=<LoRA images/s / full images/s> target=1.0``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time

MODES = ("lora", "full")
ARCH = "ViT-B-32-quickgelu"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rss_mib() -> float:
    """Current resident set of this process."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(conn, mode: str, batch_size: int, rank: int, threads: int) -> None:
    """Build the encoder, make ``mode``'s parameters trainable, then run one training step per
    ``"step"`` received, answering its seconds; ``"done"`` answers the memory figures."""
    import open_clip
    import torch

    from fmcache.embed.loaders.open_clip_family import _image_encoder
    from fmcache.embed.models import MODELS
    from fmcache.embed.spec import Encoder
    from fmcache.finetune import adapters

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = MODELS["clip"]
    model = open_clip.create_model(ARCH, pretrained=None)
    encode_image, dims = _image_encoder(model, spec, spec.text_dim)
    enc = Encoder(spec=spec, module=model, encode_image=encode_image, dims=dims, weights_id="random",
                  weights_sha256=None)
    size = spec.preprocess.size
    if mode == "lora":
        adapters.add_lora(enc, rank=rank)
    else:
        adapters.unfreeze_image_tower(enc, torch.randn(1, 3, size, size))
    enc.module.train()
    head = torch.nn.Linear(dims["image"], 1)
    params = [p for p in enc.module.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(1)  # both modes draw the same batches

    base = rss_mib()
    conn.send("ready")
    while conn.recv() == "step":
        x = torch.randn(batch_size, 3, size, size, generator=gen)
        y = torch.randint(0, 2, (batch_size,), generator=gen).float()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = head(enc.image_forward(x)["image"]).squeeze(1)
        loss_fn(logits, y).backward()
        opt.step()
        conn.send(time.perf_counter() - start)
    peak = peak_rss_mib()
    conn.send({"peak_mib": peak, "growth_mib": peak - base, "trainable": sum(p.numel() for p in params)})
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--quick", action="store_true", help="2 timed steps")
    args = ap.parse_args()
    steps = 2 if args.quick else args.steps
    threads = cores()

    # one process per mode, so each peak resident set is that mode's alone; both stay up and
    # take turns step by step, so a change in the machine's load falls on both alike
    ctx = mp.get_context("spawn")
    conns, procs = {}, {}
    for mode in MODES:
        conns[mode], child = ctx.Pipe()
        procs[mode] = ctx.Process(target=worker, args=(child, mode, args.batch_size, args.rank, threads))
        procs[mode].start()
        conns[mode].recv()  # built; built one after the other so the builds do not compete
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(args.warmup + steps):
        for mode in MODES:
            conns[mode].send("step")
            seconds = conns[mode].recv()
            if i >= args.warmup:
                times[mode].append(seconds)
    res = {}
    for mode in MODES:
        conns[mode].send("done")
        res[mode] = conns[mode].recv()
        procs[mode].join()
        step_s = statistics.median(times[mode])
        res[mode].update(step_s=step_s, img_s=args.batch_size / step_s)

    lora, full = res["lora"], res["full"]
    print(f"{ARCH} image tower, batch {args.batch_size}, median of {steps} timed steps after {args.warmup}, "
          f"CPU threads {threads}")
    print(f"{'mode':<6} {'img/s':>8} {'s/step':>8} {'peak MiB':>9} {'growth MiB':>11} {'trainable':>12}")
    for mode in MODES:
        r = res[mode]
        print(f"{mode:<6} {r['img_s']:>8.2f} {r['step_s']:>8.2f} {r['peak_mib']:>9.0f} {r['growth_mib']:>11.0f} "
              f"{r['trainable']:>12,}")
    print(f"RESULT finetune_step ratio={lora['img_s'] / full['img_s']:.3f} target=1.0 "
          f"lora_img_s={lora['img_s']:.2f} full_img_s={full['img_s']:.2f} "
          f"lora_peak_mib={lora['peak_mib']:.0f} full_peak_mib={full['peak_mib']:.0f} "
          f"lora_growth_mib={lora['growth_mib']:.0f} full_growth_mib={full['growth_mib']:.0f} "
          f"lora_trainable={lora['trainable']} full_trainable={full['trainable']} "
          f"batch={args.batch_size} steps={steps} threads={threads}")


if __name__ == "__main__":
    main()
