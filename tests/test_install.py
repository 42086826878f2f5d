"""How `make` picks the torch build (tools/torch_index.py): a GPU gets PyPI's CUDA build, a
machine without one the CPU-only build when its index answers, else PyPI's build; each choice
checked against a local index that answers, one that refuses and one that never answers."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "torch_index.py"


@pytest.fixture
def index(tmp_path):
    """A local package index that lists torch; ``requests`` counts what it was asked."""
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<a href='torch-2.14.1+cpu.whl'>torch</a>")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "index"), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", requests
    server.shutdown()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def _run(tmp_path, *args, nvidia_smi: int | None = None):
    """The script as `make` runs it, on a PATH with no nvidia-smi, or one that exits ``nvidia_smi``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\nexit {nvidia_smi}\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_without_gpu_the_cpu_build_when_its_index_answers(tmp_path, index):
    url, requests = index
    done = _run(tmp_path, "auto", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--no-deps", "--index-url", url]
    assert "CPU-only build" in done.stderr and requests == ["/torch/"]


def test_a_failing_nvidia_smi_is_no_gpu(tmp_path, index):
    url, _ = index
    done = _run(tmp_path, "auto", url, nvidia_smi=9)  # installed, but no driver or device
    assert done.stdout.split() == ["--no-deps", "--index-url", url]


def test_with_a_gpu_pypi_and_no_probe(tmp_path, index):
    url, requests = index
    done = _run(tmp_path, "auto", url, nvidia_smi=0)
    assert done.returncode == 0 and done.stdout.strip() == "" and "finds a GPU" in done.stderr
    assert requests == []


def test_without_gpu_or_index_the_default_build(tmp_path):
    start = time.monotonic()
    done = _run(tmp_path, "auto", _closed_port())
    assert done.returncode == 0 and done.stdout.strip() == ""
    assert "cannot be reached" in done.stderr and time.monotonic() - start < 10


def test_an_index_that_never_answers_is_given_up_on(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("torch_index", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        assert not module.reachable(f"http://127.0.0.1:{silent.getsockname()[1]}/", seconds=0.5)
        assert time.monotonic() - start < 2.0


def test_asked_choices(tmp_path, index):
    url, requests = index
    assert _run(tmp_path, "cpu", url).stdout.split() == ["--no-deps", "--index-url", url]
    cuda = _run(tmp_path, "cuda", url)
    assert cuda.returncode == 0 and cuda.stdout.strip() == "" and requests == ["/torch/"]
    refused = _run(tmp_path, "cpu", _closed_port())
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1 and "cannot be reached" in lines[0] and "TORCH=cuda" in lines[0]
    wrong = _run(tmp_path, "gpu")
    assert wrong.returncode == 1 and "use auto, cpu or cuda" in wrong.stderr
