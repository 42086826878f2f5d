"""Train a stack of K heads of one type at once, and score features with them.

The K heads share every minibatch: inside one jitted ``lax.scan`` over steps, the head
axis is a ``jax.vmap`` whose per-head matrix products against the shared batch fuse into
one batched product per step. A stack too large for memory is trained in chunks of heads,
and each chunk's heads are split over the devices (fmcache.heads.devices).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from fmcache.errors import HeadInputError
from fmcache.heads import devices, inputs, memory
from fmcache.heads.registry import get_head
from fmcache.heads.stream import (
    DEFAULT_WINDOW,
    WINDOWS_RESIDENT,
    ArraySource,
    RowSource,
    check_starts,
    check_window_budget,
    chunk_order,
    localise,
    prefetched,
    window_rows,
    windows,
)
from fmcache.heads.types import Batch, HeadSpec, HeadType, positive_score

SOLVERS = ("adamw", "lbfgs")
SHUFFLES = ("rows", "chunks")


@dataclass
class FitResult:
    """A trained stack: parameters and hyperparameters with a leading axis of K heads.

    Attributes
    ----------
    head : the head type.
    params : pytree of NumPy arrays, each (K, ...).
    hparams : every hyperparameter of every head (defaults filled in), each (K,).
    state : the heads' final training state (GroupDRO: ``{"q": (K, G * n_classes)}``, one weight per (group, label) cell), NumPy.
    spec : the static shape facts the heads were built with.
    log : ``loss`` (K, epochs) mean training loss per epoch (``adamw``) or ``iterations``,
        ``converged`` and ``grad_norm`` per head (``lbfgs``); ``seconds``, ``chunks``,
        ``heads_per_chunk``, ``devices`` (that the heads were split over, read from the
        trained arrays), ``solver``, ``seed``, ``decay_bias``.
    """

    head: HeadType
    params: Any
    hparams: dict[str, np.ndarray]
    state: Any
    spec: HeadSpec
    log: dict[str, Any] = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return int(next(iter(self.hparams.values())).shape[0])

    def predict(self, X: ArrayLike, groups: ArrayLike | None = None, memory_budget: int | None = None) -> np.ndarray:
        """Scores of every head on ``X``; see ``predict_stack``."""
        return predict_stack(self.head, self.params, X, groups=groups, attribute=self.hparams.get("attribute"),
                             memory_budget=memory_budget)


def fit_stack(
    head: str | HeadType,
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike | None = None,
    hparams: Mapping[str, ArrayLike] | None = None,
    *,
    n_heads: int | None = None,
    n_classes: int = 2,
    epochs: int = 100,
    batch_size: int = 128,
    seed: int = 0,
    solver: str = "adamw",
    prototypes: ArrayLike | None = None,
    logit_scale: float = 100.0,
    hidden: int = 128,
    max_iter: int = 1000,
    tol: float = 1e-5,
    memory_budget: int | None = None,
    max_heads_per_chunk: int | None = None,
    decay_bias: bool = False,
    shuffle: str = "rows",
    window: int = DEFAULT_WINDOW,
) -> FitResult:
    """Train K heads of one type together on the same training rows.

    Parameters
    ----------
    head : a name in ``HEADS`` or a HeadType.
    X : (n, d) float features of the training rows; NaN / inf is refused.
    y : (n,) or (n, C) integer labels, -1 = unknown (masked per head). With ``n_classes``
        > 2 a column holds class ids for one softmax task; otherwise each column is a
        binary task.
    groups : (n,) or (n, A) integer sensitive-attribute groups, -1 = unknown. Heads that
        use groups leave rows of unknown group out of their training.
    hparams : per-head hyperparameters, each a scalar or a length-K array: ``lr``,
        ``weight_decay``, ``seed`` (parameter initialisation), ``label`` (column of y),
        ``attribute`` (column of groups), and the head's own (``HEADS[name].hparams``:
        ``dro_step``, ``adj``, ``cells``, ``adv_coeff``, ``adv_steps``, ``eqopp_label``, ``penalty``, ``balance_label``). With ``solver="lbfgs"``:
        ``C`` (scikit-learn's inverse L2 strength) and ``label`` only.
    n_heads : K, where no hyperparameter is an array.
    n_classes : classes of the task (2: one logit per head).
    epochs, batch_size : minibatch AdamW with a cosine schedule to 0 over all steps; the
        batch order (a permutation of the rows per epoch, NumPy's generator) is drawn from
        ``seed`` and shared by all heads.
    solver : ``"adamw"`` or ``"lbfgs"``, one of the head type's ``solvers``. ``lbfgs`` is
        full-batch, minimising scikit-learn's objective sum(logloss) + ||w||^2 / (2C),
        intercept free (the ``linear`` head).
    prototypes, logit_scale : the text prototypes (C, T, D) and logit scale that heads with
        ``needs_text`` start from (``clip_adapt``) or are built from (``zeroshot``).
    hidden : LAFTR's encoder width, and that of its adversary's hidden layer.
    decay_bias : weight decay applies to biases too (torch's AdamW default). By default
        biases are left out of it (``optim.decay_mask``), as FairMedFM's trainer does.
    max_iter, tol : the ``lbfgs`` solver's limits (tol on the preconditioned gradient of
        the loss averaged over rows).
    memory_budget, max_heads_per_chunk : bound on the bytes (default: a quarter of the
        device's memory) or heads trained at once on each device; larger stacks run in
        chunks. The heads of a chunk are split over every device (``devices.current()``:
        all of them, across processes too, unless ``devices.use`` limits them), so a
        chunk is this many times the device count.
    shuffle, window : the minibatch order. ``"rows"``: every epoch a permutation of all
        rows. ``"chunks"``: every epoch the blocks of ``X`` (an :class:`ArraySource` or
        other :class:`~fmcache.heads.stream.RowSource`) in a random order, rows shuffled
        within windows of ``window`` rows (:func:`fmcache.heads.stream.chunk_order`). A
        ``RowSource`` that is not held in memory (features read from the cache) is
        streamed: windows are read as training goes, ``memory_budget`` covering them too.

    Returns
    -------
    FitResult
        Parameters stacked over K, the filled-in hyperparameters, final state and a log. A
        head type that is not trained (``trainable=False``) gets the parameters its ``init``
        builds, and an empty training log.
    """
    ht = get_head(head)
    if solver not in SOLVERS:
        raise HeadInputError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver not in ht.solvers:
        raise HeadInputError(f"solver {solver!r} does not fit head {ht.name!r}; it takes {', '.join(ht.solvers)}")
    if epochs < 1 or batch_size < 1:
        raise HeadInputError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if shuffle not in SHUFFLES:
        raise HeadInputError(f"unknown shuffle {shuffle!r}; choose one of {', '.join(SHUFFLES)}")
    if isinstance(X, RowSource):
        if shuffle != "chunks":
            raise HeadInputError("features given as blocks (a RowSource) are visited chunk-wise: pass shuffle='chunks'")
        source = X
        check_starts(source.starts, source.n)
    else:
        source = ArraySource(X) if shuffle == "chunks" else None
    # features in memory (X) train in one scan; any other source streams window by window
    streamed = source is not None and not isinstance(source, ArraySource)
    if not streamed:
        X = source.X if source is not None else inputs.check_features(X)
    if streamed and solver == "lbfgs":
        raise HeadInputError("the full-batch lbfgs solver needs the features in memory, and these are streamed "
                             "(raise --memory-budget, or train these heads with the adamw grid)")
    n, d = (source.n, source.d) if streamed else X.shape
    Y = inputs.as_columns(y, n, "labels")
    G = inputs.as_columns(groups, n, "groups")
    if prototypes is not None:
        n_classes = int(np.asarray(prototypes).shape[0])
    if ht.needs_text and prototypes is None:
        raise HeadInputError(f"head {ht.name!r} starts from the model's text prototypes: pass prototypes=")
    if n_classes < 2:
        raise HeadInputError(f"n_classes must be >= 2, got {n_classes}")

    if solver == "lbfgs":
        for key in ("lr", "weight_decay"):
            if hparams and key in hparams:
                raise HeadInputError(f"solver 'lbfgs' takes the L2 strength as C (scikit-learn's), not {key!r}")
        hp, K = inputs.check_hparams(ht, hparams, n_heads, extra={"C": 1.0})
    else:
        hp, K = inputs.check_hparams(ht, hparams, n_heads)
    inputs.check_columns(hp, Y, G)
    inputs.check_trainable(ht, hp, Y, G, n_classes)
    # group slots for the attribute columns these heads use, not every column passed: heads of
    # attributes with fewer groups than the largest still carry the extra slots (one vmap, one
    # shape), which group-aware heads must leave out (domain_ind marks them from cell counts)
    n_groups = max(2, int(G[:, np.unique(hp["attribute"])].max()) + 1) if G is not None else 2
    spec = HeadSpec(d=d, n_classes=n_classes, n_groups=n_groups, hidden=hidden, prototypes=None if prototypes is None else np.asarray(prototypes, np.float32), logit_scale=float(logit_scale))

    start = time.perf_counter()
    if not ht.trainable:
        params, state = _initializer(ht, spec)({k: jnp.asarray(v) for k, v in hp.items()})
        params, state, log = jax.tree_util.tree_map(np.asarray, params), jax.tree_util.tree_map(np.asarray, state), {}
    elif solver == "lbfgs":
        from fmcache.heads.lbfgs import fit_logistic

        params, log = fit_logistic(X, Y, hp["C"], hp["label"], n_classes=n_classes, max_iter=max_iter, tol=tol, memory_budget=memory_budget, max_heads_per_chunk=max_heads_per_chunk)
        state: Any = {}
    else:
        batch_size = min(batch_size, n)
        Gc = G if G is not None else np.zeros((n, 1), np.int32)
        where = devices.current()
        if streamed:
            budget = memory.default_budget() if memory_budget is None else memory_budget
            width = window_rows(window, batch_size)
            check_window_budget(width, d, budget)
            total = epochs * -(-n // batch_size)
            stretches = _windows(source, Y, Gc, where, epochs, batch_size, width, seed)
            memory_budget = budget // 2  # the windows take the other half
        else:
            order = (_batch_order(n, epochs, batch_size, seed) if source is None
                     else np.concatenate(list(chunk_order(source.starts, epochs, batch_size, window, seed))))
            whole = where.copy((X, Y, Gc, order))
            total = len(order)

            def stretches() -> list[tuple[Any, ...]]:
                return [whole]  # every chunk of heads trains on all of it in one stretch
        params, state, log = _fit_adamw(ht, spec, Y, G, hp, K, epochs, batch_size, total, stretches, where,
                                        memory_budget, max_heads_per_chunk, decay_bias)
        if streamed:
            log["window"] = width
        log["shuffle"] = shuffle
    log.update(seconds=time.perf_counter() - start, solver=solver, seed=seed, decay_bias=decay_bias)
    return FitResult(head=ht, params=params, hparams=hp, state=state, spec=spec, log=log)


def cell_counts(Y: np.ndarray, G: np.ndarray | None, hp: Mapping[str, np.ndarray], n_groups: int, n_classes: int) -> np.ndarray:
    """(K, groups, classes) training rows per (group, label) cell of each head."""
    K = hp["label"].shape[0]
    out = np.zeros((K, n_groups, n_classes), np.float32)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for k, (label, attr) in enumerate(zip(hp["label"].tolist(), hp["attribute"].tolist())):
        if (label, attr) not in cache:
            yv = Y[:, label]
            gv = G[:, attr] if G is not None else np.zeros_like(yv)
            ok = (yv >= 0) & (gv >= 0)
            c = np.zeros((n_groups, n_classes), np.float32)
            np.add.at(c, (gv[ok], yv[ok]), 1.0)
            cache[(label, attr)] = c
        out[k] = cache[(label, attr)]
    return out


def _fit_adamw(ht: HeadType, spec: HeadSpec, Y: np.ndarray, G: np.ndarray | None, hp: dict[str, np.ndarray], K: int,
               epochs: int, batch_size: int, total: int, stretches: Callable[[], Iterable[tuple[Any, ...]]],
               where: devices.Heads, memory_budget: int | None, cap: int | None,
               decay_bias: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """Train the stack chunk of heads by chunk of heads; each chunk runs through ``stretches()``:
    (features, labels, groups, order) on the devices, all rows at once or streamed windows."""
    full_hp = dict(hp)
    if ht.needs_cell_counts:
        full_hp["cell_counts"] = cell_counts(Y, G, hp, spec.n_groups, spec.n_classes)
    init = _initializer(ht, spec)
    one = {k: v[:1] for k, v in full_hp.items()}
    shapes = jax.eval_shape(init, {k: jnp.asarray(v) for k, v in one.items()})[0]
    n_params = sum(int(np.prod(s.shape[1:])) for s in jax.tree_util.tree_leaves(shapes))
    width = spec.n_out * spec.n_groups + spec.hidden + spec.n_groups + 8
    # the budget and the cap are per device: each holds its share of a chunk
    per_device = memory.heads_per_chunk(-(-K // where.count), memory.train_bytes_per_head(n_params, batch_size, width),
                                        memory_budget, cap)
    chunk = where.chunk(K, per_device)
    opt_init, steps = _trainer(ht, total, decay_bias)
    parts, spread = [], 1
    for lo in range(0, K, chunk):
        # the last chunk is padded with copies of its last head, so every chunk has one
        # shape and the trainer compiles once (and splits evenly over the devices)
        idx = np.minimum(np.arange(lo, lo + chunk), K - 1)
        h = where.split({k: v[idx] for k, v in full_hp.items()})
        params, state = init(h)
        opt = where.made(opt_init)(params, h)
        losses = []
        for X, Ys, Gs, order in stretches():
            params, opt, state, loss = steps(params, opt, state, X, Ys, Gs, h, order)
            # fetched stretch by stretch: the host waits for each, so windows are not queued without bound
            losses.append(where.gather(loss))
        spread = where.spread(params)
        take = min(chunk, K - lo)
        parts.append(jax.tree_util.tree_map(lambda a, take=take: np.asarray(a)[:take],
                                            (*where.gather((params, state)), np.concatenate(losses).T)))
    params, state, loss = (jax.tree_util.tree_map(lambda *a: np.concatenate(a), *[p[i] for p in parts]) for i in range(3))
    return params, state, {"loss": loss.reshape(K, epochs, -1).mean(axis=2), "chunks": len(parts),
                           "heads_per_chunk": chunk, "steps": total, "devices": spread}


def _windows(source: RowSource, Y: np.ndarray, Gc: np.ndarray, where: devices.Heads, epochs: int, batch_size: int,
             width: int, seed: int) -> Callable[[], Iterator[tuple[Any, ...]]]:
    """Streamed stretches (see :mod:`fmcache.heads.stream`): every epoch's windows of ``width``
    rows, each read while the one before trains."""
    def load(order: np.ndarray) -> tuple[Any, ...]:
        X, held, local = localise(source, order, width)
        rows = np.concatenate([held, np.zeros(width - len(held), np.int64)])  # padding rows: none points at them
        return where.copy((X, Y[rows], Gc[rows], local))

    def orders() -> Iterator[np.ndarray]:
        for order in chunk_order(source.starts, epochs, batch_size, width, seed):
            yield from windows(order, width // batch_size)

    return lambda: prefetched(orders(), load)


def _batch_order(n: int, epochs: int, batch_size: int, seed: int) -> np.ndarray:
    """(steps, batch) row indices: a fresh permutation of the rows per epoch.

    Drawn on the host: a permutation inside the compiled trainer costs seconds of
    compilation (threefry and a sort) for milliseconds of work. The last batch of an epoch
    is padded with -1, which the trainer masks out.
    """
    steps_per_epoch = -(-n // batch_size)
    rng = np.random.default_rng(seed)
    order = np.full((epochs, steps_per_epoch * batch_size), -1, np.int32)
    for e in range(epochs):
        order[e, :n] = rng.permutation(n)
    return order.reshape(epochs * steps_per_epoch, batch_size)


def _init(ht: HeadType, spec: HeadSpec, hp: Mapping[str, jax.Array]) -> tuple[Any, Any]:
    keys = jax.vmap(jax.random.PRNGKey)(hp["seed"])
    params = jax.vmap(lambda k, h: ht.init(k, spec, h))(keys, hp)
    state = jax.vmap(lambda h: ht.init_state(spec, h))(hp)
    return params, state


# The initial draw runs once per stack and takes milliseconds, but optimised compilation of
# its random-bit generator takes a second on 2 cores; unoptimised it takes half that, with
# draws equal to the optimised ones within a float32 rounding.
_INIT_OPTIONS = {"xla_backend_optimization_level": 0}


def _initializer(ht: HeadType, spec: HeadSpec) -> Any:
    # one compiled program instead of an eager dispatch (and compilation) per random draw;
    # cached only where the spec's equality covers all it holds (it leaves prototypes out)
    if spec.prototypes is None:
        return _cached_initializer(ht, spec)
    return jax.jit(functools.partial(_init, ht, spec), compiler_options=_INIT_OPTIONS)


@functools.lru_cache(maxsize=32)
def _cached_initializer(ht: HeadType, spec: HeadSpec) -> Any:
    return jax.jit(functools.partial(_init, ht, spec), compiler_options=_INIT_OPTIONS)


# XLA's CPU backend (jaxlib 0.10) hands matrix products to YNNPACK, which runs them on one
# thread; without it they go to Eigen's kernels, which split them over the intra-op thread
# pool. A trainer step is mostly two products, so on a 2-core machine this is the
# difference between keeping pace with a BLAS library that uses both cores and not (on
# cores already busy with other work, one thread does about as well: measured both ways).
THREADED_MATMUL = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=1)
def _compiler_options() -> dict[str, Any]:
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(jnp.matmul, compiler_options=THREADED_MATMUL).lower(jnp.ones((2, 2)), jnp.ones((2, 2))).compile()
    except RuntimeError:  # an XLA without the option: "No such compile option"
        return {}
    return dict(THREADED_MATMUL)


@functools.lru_cache(maxsize=32)
def _trainer(ht: HeadType, total: int, decay_bias: bool = False) -> tuple[Any, Any]:
    """The optimiser's initial state, and the steps of one stretch of training (all of it, or
    one streamed window): both jitted; ``total`` steps set the learning-rate schedule."""

    def optimizer(h: Any) -> optax.GradientTransformation:
        return ht.optimizer(h, total, decay_bias)

    def head_step(p: Any, o: Any, s: Any, h: Any, xb: jax.Array, yb: jax.Array, gb: jax.Array, vb: jax.Array) -> tuple[Any, Any, Any, jax.Array]:
        y = yb[:, h["label"]]
        g = gb[:, h["attribute"]]
        known = vb & (y >= 0)
        gknown = (known & (g >= 0)).astype(jnp.float32)
        m = gknown if ht.uses_groups else known.astype(jnp.float32)
        batch = Batch(x=xb, y=jnp.maximum(y, 0), g=jnp.maximum(g, 0), m=m, gm=gknown)
        (loss, s), grads = jax.value_and_grad(ht.loss, has_aux=True)(p, s, batch, h)
        updates, o = optimizer(h).update(grads, o, p)
        p = optax.apply_updates(p, updates)
        return p, o, s, loss

    stacked_step = jax.vmap(head_step, in_axes=(0, 0, 0, 0, None, None, None, None))

    def run(params: Any, opt_state: Any, state: Any, X: jax.Array, Y: jax.Array, G: jax.Array, hp: Any,
            order: jax.Array) -> tuple[Any, Any, Any, jax.Array]:
        # one scan over all steps (not epochs of steps): a smaller program to compile
        def step(carry: Any, rows: jax.Array) -> tuple[Any, jax.Array]:
            p, o, s = carry
            take = jnp.maximum(rows, 0)  # -1 pads a short last batch
            # streamed windows may come as stored (float16): widened exactly, batch by batch
            p, o, s, loss = stacked_step(p, o, s, hp, X[take].astype(jnp.float32), Y[take], G[take], rows >= 0)
            return (p, o, s), loss

        (params, opt_state, state), losses = jax.lax.scan(step, (params, opt_state, state), order)
        return params, opt_state, state, losses

    opt_init = jax.jit(jax.vmap(lambda p, h: optimizer(h).init(p)))
    return opt_init, jax.jit(run, compiler_options=_compiler_options())


def predict_stack(
    head: str | HeadType,
    params: Any,
    X: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    attribute: ArrayLike | None = None,
    logits: bool = False,
    memory_budget: int | None = None,
) -> np.ndarray:
    """Scores of K stacked heads on the rows of ``X``.

    Parameters
    ----------
    head : a name in ``HEADS`` or a HeadType.
    params : parameters stacked over K (``FitResult.params`` or ``zeroshot_params``).
    X : (n, d) features, or a :class:`~fmcache.heads.stream.RowSource` read block by
        block; NaN / inf is refused.
    groups : (n,) or (n, A) groups, used by heads that can score with the known group
        (``domain_ind``'s ``known`` rule); without it they use the rule that needs no group
        (``domain_ind``: the mean over its groups of their probabilities).
    attribute : (K,) column of ``groups`` for each head (default column 0).
    logits : return logits instead of probabilities.

    Returns
    -------
    np.ndarray
        float32 (K, n): the probability of class 1 for two-class heads; (K, n, C) class
        probabilities (or logits) for more classes.
    """
    ht = get_head(head)
    streamed = isinstance(X, RowSource)  # its blocks are read as they are scored
    if not streamed:
        X = inputs.check_features(X)
    n, d = (X.n, X.d) if streamed else X.shape
    K = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    G = inputs.as_columns(groups, n, "groups")
    gsel = None
    if G is not None:
        attr = np.zeros(K, np.int32) if attribute is None else np.broadcast_to(np.asarray(attribute, np.int32), (K,))
        if np.any(attr >= G.shape[1]):
            raise HeadInputError(f"attribute column {int(attr.max())} requested but groups has {G.shape[1]} column(s)")
        gsel = G[:, attr].T  # (K, n)
    to_score = _identity if logits else positive_score

    leaves = jax.tree_util.tree_leaves(params)
    width = max(int(np.prod(a.shape[1:])) // max(d, 1) for a in leaves) + 8
    where = devices.current()
    # the heads split over the devices, padded to a multiple of them with copies of the last
    Kp = where.chunk(K, K)
    pad = np.minimum(np.arange(Kp), K - 1)
    if Kp != K:
        params = jax.tree_util.tree_map(lambda a: np.asarray(a)[pad], params)
        gsel = gsel[pad] if gsel is not None else None
    params = where.split(params)
    budget = memory_budget or memory.default_budget()
    rows = max(1, min(n, budget // (4 * 4 * (Kp // where.count) * width)))
    if streamed:
        rows = max(1, min(rows, budget // (2 * WINDOWS_RESIDENT * 4 * d)))
    fn = _predictor(ht, gsel is not None, to_score)
    out = []
    for lo in range(0, n, rows):
        # pad the last block to the common size so the predictor compiles once
        sel = slice(None) if rows == n and not streamed else np.minimum(np.arange(lo, lo + rows), n - 1)
        g = where.split(gsel[:, sel]) if gsel is not None else None
        block = X.read(sel).astype(np.float32, copy=False) if streamed else X[sel]
        out.append(where.gather(fn(params, where.copy(block), g))[:K, : min(rows, n - lo)])
    return np.concatenate(out, axis=1)


def _identity(z: jax.Array) -> jax.Array:
    return z


@functools.lru_cache(maxsize=32)
def _predictor(ht: HeadType, with_groups: bool, to_score: Any) -> Any:
    if with_groups:
        return jax.jit(jax.vmap(lambda p, x, g: to_score(ht.predict(p, x, g)), in_axes=(0, None, 0)))
    return jax.jit(jax.vmap(lambda p, x, g: to_score(ht.predict(p, x, None)), in_axes=(0, None, None)))
