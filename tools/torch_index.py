"""Which torch wheels `make` installs: prints the pip options for torch and torchvision.

    python tools/torch_index.py [auto|cpu|cuda] [CPU_INDEX_URL]

PyPI's Linux x86_64 torch is a CUDA build: it needs the nvidia-* libraries (about 3.2 GB)
and triton (about 0.9 GB) even to import on a machine without a GPU, so installing it with
--no-deps does not give a working torch. PyTorch's CPU index has the same release built
without them. ``cuda`` prints nothing (PyPI, as pip is configured); ``cpu`` prints options
that take torch and torchvision alone from the CPU index, so that everything else still
comes from where pip is configured to look and torch's own requirements (no nvidia-*,
no triton) are filled in by the project's install; ``auto`` is ``cuda`` where nvidia-smi
finds a GPU, else ``cpu`` if the CPU index answers within a few seconds, else ``cuda``
(PyPI's build runs on the CPU as well). A choice that cannot be had exits 1 with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 5.0


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def reachable(index: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether the index lists torch within ``seconds``, name lookup included (which a socket
    timeout does not bound, hence the thread)."""
    answer: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=seconds) as r:
                answer.append(r.status == 200)
        except Exception:  # any failure means: not usable from here
            answer.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(seconds + 1.0)
    return bool(answer and answer[0])


def choose(mode: str, index: str = CPU_INDEX) -> tuple[str, str]:
    """(pip options, one line saying why) for ``mode``; SystemExit with the reason when it cannot be had."""
    if mode not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"TORCH={mode!r}: use auto, cpu or cuda")
    cpu = f"--no-deps --index-url {index}"
    if mode == "cuda":
        return "", "torch: PyPI's CUDA build (TORCH=cuda)"
    if mode == "cpu":
        if not reachable(index):
            raise SystemExit(f"TORCH=cpu: the CPU wheel index {index} cannot be reached from here; "
                             "use TORCH=cuda (PyPI's build, which runs on the CPU too) or TORCH_CPU_INDEX=<a mirror>")
        return cpu, f"torch: the CPU-only build from {index} (TORCH=cpu)"
    if has_nvidia_gpu():
        return "", "torch: PyPI's CUDA build (nvidia-smi finds a GPU)"
    if reachable(index):
        return cpu, f"torch: the CPU-only build from {index} (no NVIDIA GPU here; TORCH=cuda for PyPI's)"
    return "", (f"torch: PyPI's CUDA build, which runs on the CPU too (no NVIDIA GPU here, and {index} "
                "cannot be reached for the smaller CPU-only build)")


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "auto"
    index = argv[1] if len(argv) > 1 and argv[1] else CPU_INDEX
    options, why = choose(mode, index)
    print(why, file=sys.stderr)
    print(options)


if __name__ == "__main__":
    main(sys.argv[1:])
