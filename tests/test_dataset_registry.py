"""The dataset registry: one table of the adapters' entries, importable in any order."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import fmcache
from fmcache.datasets import adapters
from fmcache.datasets.registry import DATASETS
from fmcache.datasets.spec import DatasetSpec

# the checkout under test, for child interpreters
ROOT = Path(fmcache.__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_every_entry_is_keyed_by_its_own_key():
    assert DATASETS
    for key, spec in DATASETS.items():
        assert isinstance(spec, DatasetSpec) and key == spec.key


def test_every_adapter_module_contributes_exactly_one_spec():
    names = [m.name for m in pkgutil.iter_modules(adapters.__path__) if m.name != "_common"]
    specs = []
    for name in names:
        module = import_module(f"{adapters.__name__}.{name}")
        defined = [v for v in vars(module).values() if isinstance(v, DatasetSpec)]
        assert defined == [module.SPEC], name
        specs.append(module.SPEC)
    assert len(specs) == len(DATASETS)
    assert all(DATASETS[s.key] is s for s in specs)


@pytest.mark.parametrize(
    "order",
    [("fmcache.datasets.adapters.ham10000", "fmcache.datasets.registry"),
     ("fmcache.datasets.registry", "fmcache.datasets.adapters.ham10000")],
)
def test_registry_and_an_adapter_import_in_either_order(order):
    first, then = order
    done = _python(f"import {first}; import {then}; from fmcache.datasets.registry import DATASETS; print(len(DATASETS))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(DATASETS))


def test_reading_a_cache_leaves_the_adapters_unloaded():
    loaded = "sorted(m for m in sys.modules if m.startswith('fmcache.datasets.adapters') or m == 'fmcache.datasets.registry')"
    done = _python(f"import sys, fmcache.cache.reader; print({loaded})")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("key", sorted(DATASETS))
def test_layout_fits_an_80_column_terminal(key):
    too_long = [line for line in DATASETS[key].layout.splitlines() if len(line) > 78]
    assert not too_long, f"{key}: layout lines over 78 characters: {too_long}"
