"""A sweep of 256 linear probes: fmcache's stacked heads against fitting them one at a time.

(a) fmcache's full-batch solver (L-BFGS, all heads at once) against scikit-learn's
    LogisticRegression (lbfgs, to convergence), same objective, over a (C, label) grid.
(b) fmcache's stacked AdamW + cosine minibatch training against a plain PyTorch loop
    training the same heads one at a time with the same optimiser, schedule and epochs.

The peers fit a seeded random subset of the heads (--sklearn-heads, --torch-heads); their
time for all heads is extrapolated linearly from it, and the output says so. AUCs are
compared on that subset. Features are synthetic: a low-rank learnable signal plus noise.

    python benchmarks/probe_sweep.py [--quick] [--n 20000] [--d 768]
"""

from __future__ import annotations

import argparse
import time
import warnings

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
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.heads, args.epochs, args.sklearn_heads, args.torch_heads = 2000, 64, 16, 3, 4, 2

    X, Y, Xt, Yt = synthetic(args.n, args.d, args.labels, args.seed)
    rng = np.random.default_rng(args.seed)
    per_label = -(-args.heads // args.labels)

    # (a) a (C, label) grid, full-batch, scikit-learn's objective
    Cs = np.tile(np.logspace(-4, 0, per_label), args.labels)[: args.heads]
    labels = np.repeat(np.arange(args.labels), per_label)[: args.heads]
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

    # (b) the reference protocol's optimiser over an (lr, weight decay, label) grid
    per_lw = -(-args.heads // args.labels)
    side = int(np.ceil(np.sqrt(per_lw)))
    lr_grid, wd_grid = np.meshgrid(np.logspace(-4, -3, side), np.linspace(0.0, 0.2, side), indexing="ij")
    lrs = np.tile(lr_grid.ravel()[:per_lw], args.labels)[: args.heads]
    wds = np.tile(wd_grid.ravel()[:per_lw], args.labels)[: args.heads]
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
