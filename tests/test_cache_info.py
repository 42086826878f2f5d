"""`fmcache cache info`: a dataset's rules as applied, an entry's provenance as a table that
reads at 80 columns, and the raw record with --json."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import zarr
from PIL import Image
from rich.console import Console

import fmcache
from fmcache.views import entry_table

ENTRY = ("synthetic", "efficientnet_lite0")


def _recorded(root) -> dict:
    """The entry's attributes read straight from its zarr.json, less the metadata checksum."""
    doc = json.loads((root / ENTRY[0] / ENTRY[1] / "zarr.json").read_text())
    return {k: v for k, v in doc["attributes"].items() if k != "attrs_crc32c"}


def _rows(text: str) -> dict[str, str]:
    """Each row of a rendered two-column table: its name, and its value with folded lines joined."""
    lines = [line.rstrip() for line in text.splitlines()]
    first = next(m for m in map(re.compile(r"(\S.*?)\s{2,}(\S.*)").fullmatch, lines) if m)
    at = first.start(2)  # where the value column starts
    body = [line for line in lines if len(line) > at and (line[:at].strip() or not line[:at].strip() and line[at:].strip())]
    width = max(len(line) - at for line in body)
    rows: dict[str, str] = {}
    name, full = None, False
    for line in body:
        key, value = line[:at].strip(), line[at:].strip()
        if key:
            assert key not in rows, f"row {key!r} twice"
            name, rows[key] = key, value
        elif name is not None:  # the value goes on; the name column is never split
            # a line filled to the column's width was folded inside a word, a shorter one wrapped at a space
            rows[name] += value if full else " " + value
        full = len(line) - at == width
    return rows


def test_an_entry_reads_as_a_table_at_80_columns(effnet_entry):
    console = Console(width=80, file=io.StringIO())
    console.print(entry_table(fmcache.open_cache(effnet_entry.root).embeddings(*ENTRY)))
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    rows, prov = _rows(text), _recorded(effnet_entry.root)
    done = zarr.open_array(str(effnet_entry.root / ENTRY[0] / ENTRY[1] / "done"), mode="r")[...]
    assert rows["model"] == prov["model"] and rows["weights"] == prov["weights_id"]
    assert rows["weights sha256"] == prov["weights_sha256"] and len(prov["weights_sha256"]) == 64
    assert rows["features"] == ", ".join(f"{k} {d}" for k, d in prov["dims"].items())
    assert rows["rows"] == str(prov["n"]) and rows["batch size"] == str(prov["batch_size"])
    assert rows["chunks done"] == f"{int(np.sum(done))}/{done.size}"
    assert rows["state"] == prov["state"] == "complete" and rows["created"] == prov["created"]
    assert rows["stored as"] == prov["dtype"] and rows["fmcache version"] == prov["fmcache_version"]
    pre = prov["preprocess"]
    mean, std = ("(" + ", ".join(f"{x:.4g}" for x in pre[k]) + ")" for k in ("mean", "std"))
    assert rows["preprocessing"] == (f"resize {pre['resize']}, centre crop {pre['size']} px, {pre['interpolation']}; "
                                     f"mean {mean}, std {std}")
    last = prov["last_run"]
    assert rows["last run"] == f"{last['encoded']} rows encoded in {last['seconds']} s on {last['device']}"
    assert rows["volumes"] == "none: 2D images"
    # every recorded fact has a row: the known ones under their names, any other under its own key
    assert len(rows) >= len(prov) - len({"feature_kinds", "text_dim", "logit_scale"}) + 1


def test_cache_info_prints_the_table_and_json_prints_the_record(effnet_entry, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli("cache", "info", *ENTRY, "--root", str(effnet_entry.root))
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "weights sha256" in out and "chunks done" in out and "{" not in out
    code, out, err = run_cli("cache", "info", *ENTRY, "--root", str(effnet_entry.root), "--json")
    assert code == 0, err
    assert json.loads(out) == _recorded(effnet_entry.root)
    code, out, err = run_cli("cache", "info", "synthetic", "--root", str(effnet_entry.root), "--json")
    assert code == 0, err
    recorded = json.loads((effnet_entry.root / "synthetic" / "zarr.json").read_text())["attributes"]
    assert json.loads(out) == {k: v for k, v in recorded.items() if k != "attrs_crc32c"}


@pytest.fixture
def csv_cache(tmp_path):
    """A csv dataset's samples table in a cache (no model needed to describe it): two blank sexes."""
    from fmcache.cache.store import open_root
    from fmcache.cache.writer import write_samples
    from fmcache.datasets import load_dataset

    rows = ["M", "F", "", "M", "F", "", "M", "F"]
    (tmp_path / "study").mkdir()
    for i in range(len(rows)):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp_path / "study" / f"im{i}.png")
    csv = tmp_path / "study" / "study.csv"
    csv.write_text("path,disease,sex\n" + "\n".join(f"im{i}.png,{i % 2},{s}" for i, s in enumerate(rows)) + "\n")
    ds = load_dataset("csv", csv, options={"labels": "disease", "attributes": "sex=sex:M->male,F->female"})
    root = tmp_path / "cache"
    write_samples(open_root(str(root), mode="a"), ds.name, ds.table, ds.group_attrs())
    return root, ds.name, rows.count("")


def test_a_dataset_shows_each_rule_as_applied(csv_cache, run_cli):
    root, name, blanks = csv_cache
    code, out, err = run_cli("cache", "info", name, "--root", str(root))
    assert code == 0, err
    (rule_line,) = [line for line in out.splitlines() if line.startswith("sex (")]
    assert "M -> male, F -> female" in rule_line and "blank" in rule_line and rule_line.endswith("-> unknown):")
    # the blanks are there, as unknown, as the rule says
    unknown = next(line for line in out.splitlines() if line.strip().startswith("unknown"))
    assert sum(int(x) for x in unknown.split()[1:]) == blanks


def test_an_unfinished_entry_shows_its_progress(tmp_path):
    from helpers import toy

    toy.write_cache(tmp_path, n=300, chunk_rows=64, finish=False)  # one chunk of five written
    console = Console(width=80, file=io.StringIO())
    console.print(entry_table(fmcache.open_cache(tmp_path).embeddings("synthetic", "toy", allow_partial=True)))
    rows = _rows(console.file.getvalue())
    assert rows["chunks done"] == "1/5" and rows["state"] != "complete" and rows["rows"] == "300"
    assert rows["weights sha256"] == "none recorded"
