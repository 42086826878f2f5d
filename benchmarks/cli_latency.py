"""How fast the command line answers: time to the error for an unknown model, and time to
`--help`, each against `python -c "import fmcache"` measured in the same run.

A command that must import torch, timm or JAX before it can say "unknown model" takes
seconds; `fmcache` checks names against the registries first. The RESULT ratio is how many
times faster the answer comes than importing the torch stage alone (what answering used to
wait for); each line also gives the multiple of importing the package.

    python benchmarks/cli_latency.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PEER = [sys.executable, "-c", "import fmcache"]
HEAVY = [sys.executable, "-c", "import fmcache.embed.encode"]
TARGET = 5  # answering is at least this many times faster than importing the torch stage first
CASES = {
    "unknown model": [sys.executable, "-m", "fmcache.cli", "embed", "-m", "typo", "-d", "synthetic"],
    "--help": [sys.executable, "-m", "fmcache.cli", "--help"],
    "embed --help": [sys.executable, "-m", "fmcache.cli", "embed", "--help"],
}


def seconds(cmd: list[str], repeats: int, expect: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(cmd[2:])} exited {done.returncode}: {done.stderr.strip()}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="median of R runs of each command")
    args = ap.parse_args()
    seconds(PEER, 1, 0)  # warm the file cache for both sides
    peer = seconds(PEER, args.repeats, 0)
    print(f"python -c 'import fmcache': {peer:.2f} s (median of {args.repeats})")
    # what answering cost when the torch stage was imported before any name was checked
    heavy = seconds(HEAVY, args.repeats, 0)
    print(f"importing the torch stage: {heavy:.2f} s = {heavy / peer:.1f} x importing fmcache")
    for name, cmd in CASES.items():
        t = seconds(cmd, args.repeats, 1 if name == "unknown model" else 0)
        print(f"{name}: {t:.2f} s = {t / peer:.1f} x importing fmcache")
        print(f"RESULT cli_latency_{name.strip('-').replace(' ', '_').replace('-', '')} ratio={heavy / t:.1f} "
              f"target={TARGET} seconds={t:.2f} vs_import_fmcache={t / peer:.1f} torch_stage_import_s={heavy:.2f}")


if __name__ == "__main__":
    main()
