"""fmcache's stacked L-BFGS against optax.lbfgs vmapped over the heads, same objective.

Both fit K L2-penalised logistic regressions (scikit-learn's objective, row-averaged:
(sum logloss + ||w||^2 / (2C)) / n, intercept free) over a (C, label) grid on shared
synthetic features, as benchmarks/probe_sweep.py does.

(i)  fmcache: ``fit_stack("linear", ..., solver="lbfgs")``.
(ii) optax: ``optax.lbfgs()`` (zoom line search) for one head, looped in
     ``jax.lax.while_loop`` until the gradient norm is below tol or max_iter, and
     ``jax.vmap``-ed over the heads, so every evaluation is one (n, d) x (d, K) product.
     It gets fmcache's preconditioning as a change of variables: the same centred,
     rotated features, and coordinates scaled by the square root of fmcache's diagonal
     starting inverse Hessian. The objective is unchanged (it is the same function of the
     coefficients), and the plain gradient norm in those coordinates is exactly fmcache's
     stopping measure, so both stop at the same tol. ``--plain`` drops the scaling.
     ``optax.value_and_grad_from_state`` decides with ``lax.cond`` whether to reuse the
     line search's value and gradient; under vmap that becomes a select that computes
     both branches, i.e. one extra evaluation per iteration. ``--reuse state`` instead
     evaluates once before the loop and then reads value and gradient from the state.

Under vmap, a ``lax.cond`` on a per-head predicate becomes a select that evaluates both
branches and broadcasts every operand to the batch, including the shared features the
objective closes over: the zoom line search's conds turn each evaluation into K (n, d)
matrix-vector products on a (K, n, d) copy (16 GB at n=20000, d=768, K=256), where
fmcache's solver does one (n, d) x (d, K) product. At that size the optax side needs more
memory than a small machine has, so the default is d=256 (about 5 GB); ``--d 768`` for
the probe sweep's size.

Each solver is timed after a warm-up call with the same shapes (compile time is reported
apart; ``--repeat`` keeps the fastest of several runs). Final objectives are recomputed in float64 from the returned coefficients.

    python benchmarks/lbfgs_solver.py [--quick] [--n 20000] [--d 768] [--heads 256]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_sweep import synthetic

from fmcache.heads import fit_stack


def objective64(X: np.ndarray, T: np.ndarray, w: np.ndarray, b: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Row-averaged penalised logloss of each head, in float64: (K,)."""
    Z = X.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)[None, :]  # (n, K)
    T = T.astype(np.float64)  # (n, K) targets
    loss = np.logaddexp(0.0, Z) - T * Z
    return (loss.sum(axis=0) + 0.5 * np.sum(w.astype(np.float64) ** 2, axis=1) / C) / X.shape[0]


@functools.partial(jax.jit, static_argnames=("max_iter", "tol", "scaled", "reuse"))
def _optax_solve(Z: jax.Array, T: jax.Array, C: jax.Array, lam: jax.Array, max_iter: int, tol: float, scaled: bool, reuse: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    n, d = Z.shape

    def one(t: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        # fmcache's diagonal starting inverse Hessian in the rotated basis (binary: curvature 1/4)
        if scaled:
            s = jnp.sqrt(jnp.concatenate([1.0 / (0.25 * lam / n + 1.0 / (c * n)), jnp.array([4.0])]))
        else:
            s = jnp.ones((d + 1,))

        def f(v: jax.Array) -> jax.Array:
            x = s * v
            z = Z @ x[:d] + x[d]
            return (jnp.sum(jax.nn.softplus(z) - t * z) + 0.5 * jnp.sum(x[:d] ** 2) / c) / n

        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def step(carry: tuple[jax.Array, optax.OptState, jax.Array, jax.Array]) -> tuple[jax.Array, optax.OptState, jax.Array, jax.Array]:
            v, state, value, g = carry
            if reuse == "cond":
                value, g = vg(v, state=state)
            updates, state = opt.update(g, state, v, value=value, grad=g, value_fn=f)
            v = optax.apply_updates(v, updates)
            # the line search stores the value and gradient at the new iterate
            return v, state, optax.tree.get(state, "value"), optax.tree.get(state, "grad")

        def going(carry: tuple[jax.Array, optax.OptState, jax.Array, jax.Array]) -> jax.Array:
            _, state, _, g = carry
            count = optax.tree.get(state, "count")
            return (count == 0) | ((count < max_iter) & (optax.tree.norm(g) >= tol))

        v0 = jnp.zeros((d + 1,))
        value0, g0 = jax.value_and_grad(f)(v0)
        v, state, _, g = jax.lax.while_loop(going, step, (v0, opt.init(v0), value0, g0))
        return s * v, optax.tree.get(state, "count"), optax.tree.norm(g)

    return jax.vmap(one, in_axes=(1, 0))(T, C)


def optax_fit(X: np.ndarray, Y: np.ndarray, C: np.ndarray, label: np.ndarray, *, max_iter: int, tol: float, scaled: bool, reuse: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same setup as fmcache.heads.lbfgs (centre, rotate), then the vmapped optax solve."""
    _, d = X.shape
    mu = X.mean(axis=0, dtype=np.float64).astype(np.float32)
    Xc = jnp.asarray(X) - mu
    lam, U = np.linalg.eigh(np.asarray(Xc.T @ Xc, dtype=np.float64))
    lam = np.maximum(lam, 0.0)
    Z = Xc @ jnp.asarray(U, jnp.float32)
    T = jnp.asarray(Y[:, label].astype(np.float32))
    x, it, gn = _optax_solve(Z, T, jnp.asarray(C, jnp.float32), jnp.asarray(lam, jnp.float32), max_iter, float(tol), scaled, reuse)
    x = np.asarray(x, np.float64)  # (K, d + 1) in the rotated basis
    w = x[:, :d] @ U.T
    b = x[:, d] - w @ mu.astype(np.float64)
    return w, b, np.asarray(it), np.asarray(gn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=256, help="feature dimension (768 needs ~17 GB on the optax side)")
    ap.add_argument("--labels", type=int, default=4)
    ap.add_argument("--heads", type=int, default=256)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--plain", action="store_true", help="optax in the centred, rotated basis without the diagonal scaling")
    ap.add_argument("--reuse", choices=("cond", "state"), default="cond", help="how optax gets each iteration's value and gradient (see above)")
    ap.add_argument("--repeat", type=int, default=1, help="time each solver this many times, keep the fastest")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.heads, args.repeat = 2000, 64, 16, 3

    X, Y, _, _ = synthetic(args.n, args.d, args.labels, args.seed)
    per_label = -(-args.heads // args.labels)
    Cs = np.tile(np.logspace(-4, 0, per_label), args.labels)[: args.heads]
    labels = np.repeat(np.arange(args.labels), per_label)[: args.heads]
    # warm-up with the same shapes and a penalty so strong that w = 0 is (nearly) optimal: it
    # compiles the same programs and converges in a few iterations
    tiny = np.full_like(Cs, 1e-9)
    kw = {"max_iter": args.max_iter, "tol": args.tol}

    start = time.perf_counter()
    fit_stack("linear", X, Y, hparams={"C": tiny, "label": labels}, solver="lbfgs", **kw)
    fm_compile = time.perf_counter() - start
    fm_s = np.inf
    for _ in range(args.repeat):
        start = time.perf_counter()
        fit = fit_stack("linear", X, Y, hparams={"C": Cs, "label": labels}, solver="lbfgs", **kw)
        fm_s = min(fm_s, time.perf_counter() - start)
    fm_obj = objective64(X, Y[:, labels], fit.params["w"][:, :, 0], fit.params["b"][:, 0], Cs)
    fm_it = fit.log["iterations"]

    print(
        f"fmcache: {args.heads} heads in {fm_s:.2f}s (warm-up/compile {fm_compile:.2f}s), iterations max {fm_it.max()} "
        f"median {int(np.median(fm_it))}, converged {int(fit.log['converged'].sum())}/{args.heads}",
        flush=True,
    )
    ox_kw = {**kw, "scaled": not args.plain, "reuse": args.reuse}
    start = time.perf_counter()
    optax_fit(X, Y, tiny, labels, **ox_kw)
    ox_compile = time.perf_counter() - start
    ox_s = np.inf
    for _ in range(args.repeat):
        start = time.perf_counter()
        w, b, ox_it, ox_gn = optax_fit(X, Y, Cs, labels, **ox_kw)
        ox_s = min(ox_s, time.perf_counter() - start)
    ox_obj = objective64(X, Y[:, labels], w, b, Cs)

    rel = (ox_obj - fm_obj) / np.abs(fm_obj)
    worst = int(np.argmax(np.abs(rel)))
    ox_conv = int((ox_gn < args.tol).sum())
    print(
        f"optax.lbfgs vmapped ({'plain rotated basis' if args.plain else 'preconditioned'}, reuse={args.reuse}): {args.heads} heads in "
        f"{ox_s:.2f}s (warm-up/compile {ox_compile:.2f}s), iterations max {ox_it.max()} median {int(np.median(ox_it))}, "
        f"grad norm < tol {ox_conv}/{args.heads}"
    )
    print(
        f"objective: max |optax - fmcache| / fmcache = {np.abs(rel).max():.2e} (head {worst}, C={Cs[worst]:.2g}); "
        f"mean signed {rel.mean():+.2e}; optax lower on {int((rel < 0).sum())}/{args.heads} heads; "
        f"equal within 1e-5: {bool(np.abs(rel).max() <= 1e-5)}"
    )
    print(
        f"RESULT lbfgs_optax ratio={ox_s / fm_s:.2f} target=1.0 fmcache_s={fm_s:.2f} optax_s={ox_s:.2f} "
        f"fmcache_compile_s={fm_compile:.2f} optax_compile_s={ox_compile:.2f} obj_max_rel_diff={np.abs(rel).max():.2e} "
        f"iters_fmcache_max={fm_it.max()} iters_optax_max={ox_it.max()} heads={args.heads} n={args.n} d={args.d} "
        f"precondition={not args.plain} reuse={args.reuse} tol={args.tol:g}"
    )


if __name__ == "__main__":
    main()
