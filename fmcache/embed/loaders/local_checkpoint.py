"""Reading training checkpoints of single-file releases (C2L, LVM-Med, MedMAE, MoCo-CXR).

These files are what the authors' training scripts saved: the weights nested under an
entry (``model``, ``state_dict``), prefixed by the wrappers used in training
(``nn.DataParallel``, MoCo's query encoder), next to parts that are not the image backbone
(an MAE decoder, a MoCo key encoder and queue, projection heads) and sometimes the
script's ``argparse.Namespace``. An entry's ``config`` says how to get the backbone out:

``container``
    the entry the weights are nested under (a flat state dict is accepted too, so a
    re-saved file loads).
``drop``
    names, or prefixes ending in ``.``, of entries that are not part of the backbone; they
    are removed before the strict load. Nothing else is ever ignored.
``strip``
    key prefixes removed, in order, from the keys that carry them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import torch

from fmcache.embed.spec import ModelSpec
from fmcache.embed.weights import key_mismatch, read_state_dict
from fmcache.errors import ModelError

# The one class besides tensors and containers these releases pickle: the training script's
# command-line arguments (C2L's ``opt``, MAE's ``args``). Its instances hold only the parsed
# values, and unpickling it runs no code, so it is the only class allowed.
SAFE_CLASSES = (argparse.Namespace,)


def read_checkpoint(path: Path, spec: ModelSpec, *, trust_code: bool = False) -> Any:
    """``torch.load`` of ``path`` with ``weights_only=True``, ``argparse.Namespace`` allowed.

    Raises :class:`ModelError` naming the file when it is truncated or corrupt, and saying
    how to re-save the weights alone when it pickles any other class. A TorchScript archive
    is read only with ``trust_code`` (see :func:`~fmcache.embed.weights.read_state_dict`).
    """
    return read_weights(path, spec.key, spec.config.get("container"), trust_code=trust_code)


def read_weights(path: Path, key: str, container: str | None = None, *, trust_code: bool = False) -> Any:
    """:func:`read_checkpoint` for a model registered as ``key`` whose state dict, in a nested
    checkpoint, is the entry ``container`` (named in the re-save command)."""
    try:
        with torch.serialization.safe_globals(list(SAFE_CLASSES)):
            return read_state_dict(path, key, trust_code=trust_code)
    except ModelError as e:
        if "refuses to unpickle" not in str(e):
            raise
        part = f"[{container!r}]" if container else ""
        raise ModelError(
            f"{e}; if you trust the file, save its weights alone and pass that file with --weights: "
            f"python -c \"import torch; torch.save(torch.load('{path}', weights_only=False){part}, "
            f"'{path.name}.weights.pth')\""
        ) from None


def backbone_state_dict(ckpt: Any, spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors from a checkpoint, per the entry's ``container``/``drop``/``strip``."""
    cfg = spec.config
    ckpt = unwrap_state_dict(ckpt, cfg.get("container"), path, spec.key)
    drop = tuple(cfg.get("drop", ()))
    sd = {k: v for k, v in ckpt.items() if not _listed(k, drop)}
    for prefix in cfg.get("strip", ()):
        sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    return sd


def unwrap_state_dict(ckpt: Any, container: str | None, path: Path, key: str) -> Mapping[str, torch.Tensor]:
    """The tensors of a checkpoint: its ``container`` entry where it has one, else the checkpoint
    itself; ModelError naming what it holds when that is not a mapping of names to tensors."""
    if container and isinstance(ckpt, Mapping) and isinstance(ckpt.get(container), Mapping):
        ckpt = ckpt[container]
    if not isinstance(ckpt, Mapping) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        what = ", ".join(sorted(map(str, ckpt))[:8]) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        where = f"a state dict under {container!r} or a flat state dict" if container else "a flat state dict"
        raise ModelError(f"weights file {path} for {key!r} is not {where} (it holds: {what})")
    return ckpt


def _listed(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], key: str, path: Path) -> None:
    """Load ``sd`` into ``model`` (registered as ``key``); any missing, unexpected or misshapen
    key is a :class:`ModelError`."""
    own = model.state_dict()
    err = key_mismatch(key, path, [k for k in own if k not in sd], [k for k in sd if k not in own])
    if err is not None:
        raise err
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in sd.items() if v.shape != own[k].shape
    ]
    if wrong:
        raise ModelError(
            f"weights {path} do not match the architecture of {key!r}: {len(wrong)} tensor(s) of another "
            f"shape: {', '.join(wrong[:5])}"
        )
    model.load_state_dict(dict(sd), strict=True)


def block_count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks ``<prefix><i>.`` the state dict holds."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})
