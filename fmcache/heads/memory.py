"""How many heads fit in memory at once, so a large stack is trained in chunks."""

from __future__ import annotations

import os

_BYTES = 4  # float32


def default_budget() -> int:
    """Bytes a stack may use per device: a quarter of the accelerator's memory, or of RAM on CPU (<= 4 GiB, shared by the host's devices)."""
    import jax  # here, so that sizes can be parsed and printed without loading JAX

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except (RuntimeError, AttributeError, NotImplementedError, ValueError):  # backends without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) // 4
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    # host "devices" (forced ones included) share the one RAM; the budget is per device
    return min(ram // 4, 4 << 30) // jax.local_device_count()


def heads_per_chunk(n_heads: int, per_head_bytes: int, budget: int | None = None, cap: int | None = None) -> int:
    """The chunk size along the head axis: as many heads as fit in ``budget``, at least one."""
    budget = default_budget() if budget is None else budget
    fit = max(1, int(budget // max(per_head_bytes, 1)))
    if cap is not None:
        fit = min(fit, cap)
    return min(n_heads, fit)


def train_bytes_per_head(n_params: int, batch_size: int, width: int) -> int:
    """Parameters, two Adam moments, gradient and a temporary, plus the batch activations."""
    return _BYTES * (5 * n_params + 4 * batch_size * width)


def solve_bytes_per_head(n_params: int, n_rows: int, n_out: int, history: int) -> int:
    """Full-batch solver: logits and residuals over all rows, plus the L-BFGS history."""
    return _BYTES * (6 * n_rows * n_out + (2 * history + 8) * n_params)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"4G"``, ``"4GiB"``, ``"1.5g"`` or plain bytes as a byte count; ValueError otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    value = float(t[: len(t) - len(unit)])
    if not value > 0:
        raise ValueError(f"{text!r} is not a positive size")
    return int(value * _UNITS[unit])


def format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"
