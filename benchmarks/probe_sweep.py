"""A sweep of 256 linear probes: fmcache's stacked heads against fitting them one at a time.

(a) fmcache's full-batch solver (L-BFGS, all heads at once) against scikit-learn's
    LogisticRegression (lbfgs, to convergence), same objective, over a (C, label) grid.
(b) fmcache's stacked AdamW + cosine minibatch training against a plain PyTorch loop
    training the same heads one at a time with the same optimiser, schedule and epochs.
(c) the same stacked AdamW against a stacked PyTorch multi-head: all K heads as one (d, K)
    weight and a (K,) bias, one matrix product per step forward and one backward, the
    gradient of the binary cross-entropy written out (no autograd), AdamW vectorised by
    hand with per-head learning-rate and weight-decay vectors, the same cosine schedule,
    epochs and batch size. Both are timed from the call to trained weights (fmcache's
    compilation included) and reported as GFLOP/s against this machine's rate for the
    same matrix products. Flops per step are two products of 2 B d K (forward, and the
    weight gradient; features need no gradient).

In (a) and (b) the peers fit a seeded random subset of the heads (--sklearn-heads,
--torch-heads); their time for all heads is extrapolated linearly from it, and the output
says so. AUCs are compared on that subset; (c) trains and compares all heads. Features are
synthetic: a low-rank learnable signal plus noise.

    python benchmarks/probe_sweep.py [--quick] [--part a,b,c] [--n 20000] [--d 768]
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import jax
import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fmcache.heads import fit_stack


def synthetic(n: int, d: int, labels: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train / test features (float32) and labels from one latent model, 2 attributes unused here."""
    rng = np.random.default_rng(seed)
    rank = 32
    A = rng.normal(size=(rank, d)) / np.sqrt(rank)
    B = rng.normal(size=(rank, labels))
    n_test = n // 4
    Z = rng.normal(size=(n + n_test, rank))
    X = (Z @ A + 0.7 * rng.normal(size=(n + n_test, d)) * np.linspace(0.3, 1.5, d)).astype(np.float32)
    logits = Z @ B / np.sqrt(rank) * 3.0 + rng.normal(size=(n + n_test, labels))
    Y = (logits > np.quantile(logits, 0.7, axis=0)).astype(np.int8)
    return X[:n], Y[:n], X[n:], Y[n:]


def torch_fit(X: torch.Tensor, y: torch.Tensor, lr: float, wd: float, epochs: int, batch: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(X.shape[1], 1)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * -(-X.shape[0] // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for rows in torch.randperm(X.shape[0]).split(batch):
            loss = loss_fn(head(X[rows])[:, 0], y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head


def torch_stacked_fit(X: torch.Tensor, T: torch.Tensor, lrs: np.ndarray, wds: np.ndarray, epochs: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K binary logistic heads as one (d, K) weight; T (n, K) float targets, one column per head.

    Loss per head: mean binary cross-entropy over the batch's rows. AdamW as
    torch.optim.AdamW (decoupled decay, bias-corrected moments, eps outside the root), the
    rate lr * (1 + cos(pi t / steps)) / 2 at step t, biases not decayed (as fmcache's default).
    """
    gen = torch.Generator().manual_seed(seed)
    n, d = X.shape
    K = T.shape[1]
    bound = 1.0 / math.sqrt(d)
    W = torch.empty(d, K).uniform_(-bound, bound, generator=gen)
    b = torch.empty(K).uniform_(-bound, bound, generator=gen)
    mW, vW, mb, vb = torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(b)
    lr0 = torch.as_tensor(lrs, dtype=torch.float32)
    wd = torch.as_tensor(wds, dtype=torch.float32)
    b1, b2, eps = 0.9, 0.999, 1e-8
    total = epochs * -(-n // batch)
    t = 0
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=gen).split(batch):
            xb = X.index_select(0, rows)
            r = torch.addmm(b, xb, W).sigmoid_().sub_(T.index_select(0, rows)).div_(rows.shape[0])
            gW, gb = torch.mm(xb.T, r), r.sum(0)
            lr_t = lr0 * (0.5 * (1.0 + math.cos(math.pi * t / total)))
            t += 1
            root_bc2 = math.sqrt(1 - b2**t)
            step = lr_t / (1 - b1**t)
            W.mul_(1 - lr_t * wd)
            for p, g, m, v in ((W, gW, mW, vW), (b, gb, mb, vb)):
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.sub_(m.div(v.sqrt().div_(root_bc2).add_(eps)).mul_(step))
    return W, b


def gemm_rates(B: int, d: int, K: int, reps: int = 200) -> dict[str, float]:
    """GFLOP/s of the step's two products, (B, d) @ (d, K) and (d, B) @ (B, K), best of 3:
    XLA's, compiled as fmcache's trainer is, and PyTorch's at all cores and at one thread."""
    from fmcache.heads.train import _compiler_options

    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(B, d)).astype(np.float32), (rng.normal(size=(d, K)) / np.sqrt(d)).astype(np.float32)

    def body(W: jax.Array, _: None) -> tuple[jax.Array, None]:
        return W - 1e-6 * (x.T @ (x @ W)), None

    loop = jax.jit(lambda W: jax.lax.scan(body, W, None, length=reps)[0], compiler_options=_compiler_options())
    loop(w).block_until_ready()
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    flops = reps * 2 * 2 * B * d * K
    threads = torch.get_num_threads()
    rates = {"xla": 0.0}
    for _ in range(3):
        start = time.perf_counter()
        loop(w).block_until_ready()
        rates["xla"] = max(rates["xla"], flops / (time.perf_counter() - start) / 1e9)
        for n_threads in sorted({os.cpu_count() or 1, 1}, reverse=True):
            torch.set_num_threads(n_threads)
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(xt.T, torch.mm(xt, wt))
            key = f"torch_{n_threads}t"
            rates[key] = max(rates.get(key, 0.0), flops / (time.perf_counter() - start) / 1e9)
    torch.set_num_threads(threads)
    return rates


def torch_threads(X: torch.Tensor, T: torch.Tensor, lrs: np.ndarray, wds: np.ndarray, batch: int) -> int:
    """The faster of all cores and one thread for the stacked peer, by a short trial: on a
    loaded machine a thread team waiting at every barrier can cost more than it brings."""
    rows = min(X.shape[0], 24 * batch)
    best, pick = math.inf, 1
    for threads in sorted({os.cpu_count() or 1, 1}, reverse=True):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        torch_stacked_fit(X[:rows], T[:rows], lrs, wds, 1, batch, 0)
        took = time.perf_counter() - start
        if took < best:
            best, pick = took, threads
    return pick


def part_c(args: argparse.Namespace, X: np.ndarray, Y: np.ndarray, Xt: np.ndarray, Yt: np.ndarray, lrs: np.ndarray, wds: np.ndarray, labels: np.ndarray) -> None:
    batch = 128
    steps = args.epochs * -(-args.n // batch)
    flops = steps * 2 * 2 * batch * args.d * args.heads
    # timed cold, as a first fit is: (b) may have compiled the same trainer already
    jax.clear_caches()
    start = time.perf_counter()
    fit = fit_stack("linear", X, Y, hparams={"lr": lrs, "weight_decay": wds, "label": labels, "seed": np.arange(args.heads)}, epochs=args.epochs, batch_size=batch, seed=args.seed)
    ours_s = time.perf_counter() - start
    ours_auc = np.mean([roc_auc_score(Yt[:, l], s) for l, s in zip(labels, fit.predict(Xt))])

    Xtr, T = torch.from_numpy(X), torch.from_numpy(Y[:, labels].astype(np.float32))
    threads = torch_threads(Xtr, T, lrs, wds, batch)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    W, b = torch_stacked_fit(Xtr, T, lrs, wds, args.epochs, batch, args.seed)
    torch_s = time.perf_counter() - start
    scores = (torch.from_numpy(Xt) @ W + b).numpy().T
    torch_auc = np.mean([roc_auc_score(Yt[:, l], s) for l, s in zip(labels, scores)])

    rates = gemm_rates(batch, args.d, args.heads)
    gemm = max(rates.values())
    ours_gf, torch_gf = flops / ours_s / 1e9, flops / torch_s / 1e9
    print(
        f"(c) fmcache: {args.heads} heads x {args.epochs} epochs in {ours_s:.1f}s ({ours_gf:.1f} GFLOP/s, compilation included); "
        f"stacked PyTorch ({threads} thread(s)) in {torch_s:.1f}s ({torch_gf:.1f} GFLOP/s); the step's matrix products alone: "
        + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
        + f" GFLOP/s; fmcache at {ours_gf / gemm:.0%}, PyTorch at {torch_gf / gemm:.0%} of the best"
    )
    print(
        f"RESULT probe_sweep_torch_stacked ratio={torch_s / ours_s:.2f} target=1.0 fmcache_s={ours_s:.2f} torch_s={torch_s:.2f} "
        f"fmcache_gflops={ours_gf:.1f} torch_gflops={torch_gf:.1f} gemm_gflops={gemm:.1f} "
        + "".join(f"gemm_gflops_{k}={v:.1f} " for k, v in rates.items())
        + f"auc_fmcache={ours_auc:.4f} auc_torch={torch_auc:.4f} auc_diff={ours_auc - torch_auc:+.5f} auc_equal={abs(ours_auc - torch_auc) <= 0.002} "
        f"heads={args.heads} epochs={args.epochs} steps={steps} torch_threads={threads} n={args.n} d={args.d}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--labels", type=int, default=4)
    ap.add_argument("--heads", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--sklearn-heads", type=int, default=32, help="random subset scikit-learn fits (time extrapolated)")
    ap.add_argument("--torch-heads", type=int, default=6, help="random subset PyTorch trains (time extrapolated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", default="a,b,c", help="comma-separated parts to run: a, b, c")
    args = ap.parse_args()
    parts = set(args.part.split(","))
    if args.quick:
        args.n, args.d, args.heads, args.epochs, args.sklearn_heads, args.torch_heads = 2000, 64, 16, 3, 4, 2

    X, Y, Xt, Yt = synthetic(args.n, args.d, args.labels, args.seed)
    rng = np.random.default_rng(args.seed)
    per_label = -(-args.heads // args.labels)
    labels = np.repeat(np.arange(args.labels), per_label)[: args.heads]
    # (b) and (c): the reference protocol's optimiser over an (lr, weight decay, label) grid
    side = int(np.ceil(np.sqrt(per_label)))
    lr_grid, wd_grid = np.meshgrid(np.logspace(-4, -3, side), np.linspace(0.0, 0.2, side), indexing="ij")
    lrs = np.tile(lr_grid.ravel()[:per_label], args.labels)[: args.heads]
    wds = np.tile(wd_grid.ravel()[:per_label], args.labels)[: args.heads]
    if "a" in parts:
        part_a(args, X, Y, Xt, Yt, labels, rng)
    if "b" in parts:
        part_b(args, X, Y, Xt, Yt, lrs, wds, labels, rng)
    if "c" in parts:
        part_c(args, X, Y, Xt, Yt, lrs, wds, labels)


def part_a(args: argparse.Namespace, X: np.ndarray, Y: np.ndarray, Xt: np.ndarray, Yt: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
    # a (C, label) grid, full-batch, scikit-learn's objective
    per_label = -(-args.heads // args.labels)
    Cs = np.tile(np.logspace(-4, 0, per_label), args.labels)[: args.heads]
    start = time.perf_counter()
    fit = fit_stack("linear", X, Y, hparams={"C": Cs, "label": labels}, solver="lbfgs")
    ours_s = time.perf_counter() - start
    scores = fit.predict(Xt)
    ours_auc = np.array([roc_auc_score(Yt[:, l], s) for l, s in zip(labels, scores)])
    subset = np.sort(rng.choice(args.heads, size=min(args.sklearn_heads, args.heads), replace=False))
    sk_auc = []
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for k in subset:
            clf = LogisticRegression(C=Cs[k], max_iter=100_000).fit(X, Y[:, labels[k]])
            sk_auc.append(roc_auc_score(Yt[:, labels[k]], clf.predict_proba(Xt)[:, 1]))
    sk_sub_s = time.perf_counter() - start
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)], "scikit-learn did not converge"
    sk_s = sk_sub_s * args.heads / subset.size
    print(
        f"(a) fmcache: {args.heads} heads in {ours_s:.1f}s (L-BFGS iterations max {fit.log['iterations'].max()}, "
        f"converged {int(fit.log['converged'].sum())}/{args.heads}); scikit-learn fitted a random {subset.size} of them in "
        f"{sk_sub_s:.1f}s, extrapolated linearly to {sk_s:.1f}s for {args.heads}"
    )
    auc_diff = float(np.mean(ours_auc[subset]) - np.mean(sk_auc))
    print(
        f"RESULT probe_sweep_sklearn ratio={sk_s / ours_s:.1f} target=20 fmcache_s={ours_s:.2f} sklearn_s={sk_s:.2f} "
        f"auc_fmcache={np.mean(ours_auc[subset]):.4f} auc_sklearn={np.mean(sk_auc):.4f} auc_diff={auc_diff:+.5f} "
        f"auc_fmcache_all={np.mean(ours_auc):.4f} heads={args.heads} sklearn_heads_timed={subset.size} extrapolated={subset.size < args.heads} "
        f"n={args.n} d={args.d}"
    )


def part_b(args: argparse.Namespace, X: np.ndarray, Y: np.ndarray, Xt: np.ndarray, Yt: np.ndarray, lrs: np.ndarray, wds: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
    start = time.perf_counter()
    fit = fit_stack("linear", X, Y, hparams={"lr": lrs, "weight_decay": wds, "label": labels, "seed": np.arange(args.heads)}, epochs=args.epochs, batch_size=128, seed=args.seed)
    ours_s = time.perf_counter() - start
    scores = fit.predict(Xt)
    ours_auc = np.array([roc_auc_score(Yt[:, l], s) for l, s in zip(labels, scores)])
    subset = np.sort(rng.choice(args.heads, size=min(args.torch_heads, args.heads), replace=False))
    Xtr, Xte = torch.from_numpy(X), torch.from_numpy(Xt)
    torch_auc = []
    start = time.perf_counter()
    for k in subset:
        head = torch_fit(Xtr, torch.from_numpy(Y[:, labels[k]].astype(np.float32)), float(lrs[k]), float(wds[k]), args.epochs, 128, int(k))
        with torch.no_grad():
            torch_auc.append(roc_auc_score(Yt[:, labels[k]], head(Xte)[:, 0].numpy()))
    torch_sub_s = time.perf_counter() - start
    torch_s = torch_sub_s * args.heads / subset.size
    print(
        f"(b) fmcache: {args.heads} heads x {args.epochs} epochs in {ours_s:.1f}s ({fit.log['chunks']} chunk(s)); PyTorch trained a random "
        f"{subset.size} of them in {torch_sub_s:.1f}s, extrapolated linearly to {torch_s:.1f}s for {args.heads}"
    )
    print(
        f"RESULT probe_sweep_torch ratio={torch_s / ours_s:.1f} target=10 fmcache_s={ours_s:.2f} torch_s={torch_s:.2f} "
        f"auc_fmcache={np.mean(ours_auc[subset]):.4f} auc_torch={np.mean(torch_auc):.4f} auc_fmcache_all={np.mean(ours_auc):.4f} "
        f"heads={args.heads} torch_heads_timed={subset.size} extrapolated={subset.size < args.heads} epochs={args.epochs} "
        f"threads={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
