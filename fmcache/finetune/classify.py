"""Fine-tuning a classification model of the registry: LoRA adapters or the whole image tower,
a head on its pooled feature, and the loss of a mitigation shared with the JAX heads.

The head and loss of ``lora+<mitigation>`` are exactly those of the frozen-feature head of
that name (:mod:`fmcache.finetune.losses`), with the backbone's pooled feature as input; the
gradient reaches the adapters through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from fmcache.datasets.samples import Dataset
from fmcache.embed.preprocess import build_augmentation, build_transform
from fmcache.embed.spec import Encoder
from fmcache.errors import FmcacheError
from fmcache.finetune.adapters import DEFAULT_RANK, add_lora, freeze_statistics, unfreeze_image_tower
from fmcache.finetune.losses import LOSSES
from fmcache.finetune.losses import Batch as LossBatch
from fmcache.finetune.task import Batch, State

BASES = ("lora", "full")
SPLITS = {"train": 0, "val": 1, "test": 2}


def parse_method(method: str, bases: tuple[str, ...] = BASES) -> tuple[str, str]:
    """``lora+groupdro`` -> ("lora", "groupdro"); a bare base trains plain ERM ("erm")."""
    base, _, mitigation = method.partition("+")
    if base not in bases:
        raise FmcacheError(f"method {method!r}: start it with one of {', '.join(bases)} "
                           f"(e.g. {bases[0]} or {bases[0]}+groupdro)")
    mitigation = mitigation or "erm"
    if mitigation not in LOSSES:
        known = ", ".join(m for m in LOSSES if m != "erm")
        raise FmcacheError(f"method {method!r}: unknown mitigation {mitigation!r}; choose one of {known}")
    return base, mitigation


class _Items(TorchDataset):
    """One split's labelled rows: the image, its label, its group (``gm`` 0 where unknown)."""

    def __init__(self, dataset: Dataset, rows: np.ndarray, y: np.ndarray, g: np.ndarray, transform):
        self.dataset, self.rows, self.y, self.g, self.transform = dataset, rows, y, g, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = int(self.g[i])
        return {"x": self.transform(self.dataset.image(int(self.rows[i]))), "y": torch.tensor(int(self.y[i])),
                "g": torch.tensor(max(g, 0)), "gm": torch.tensor(float(g >= 0)), "m": torch.tensor(1.0),
                "row": torch.tensor(int(self.rows[i]))}


class _Classifier(torch.nn.Module):
    """The backbone's pooled ``kind`` feature into the mitigation's head."""

    def __init__(self, enc: Encoder, head: torch.nn.Module, kind: str, base: str):
        super().__init__()
        self.backbone, self.head = enc.module, head
        self._forward, self.kind, self.base = enc.image_forward, kind, base

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[self.kind].float()

    def train(self, mode: bool = True) -> _Classifier:
        super().train(mode)
        if mode and self.base == "lora":
            freeze_statistics(self.backbone)
        return self


@dataclass
class ClassifyTask:
    """LoRA or full fine-tuning of ``enc`` on one label of ``dataset``, the mitigation's groups
    from one attribute. Implements :class:`fmcache.finetune.task.Task`."""

    enc: Encoder
    dataset: Dataset
    method: str
    label: str
    attribute: str
    rank: int = DEFAULT_RANK
    alpha: float | None = None
    kind: str = "image"
    augment: bool = False
    hparams: dict[str, float] | None = None
    seed: int = 0  # of the adapters' and the head's initialisation
    domain_inference: str = "sum"  # domain_ind at test time: sum over the groups' heads, or the known group's

    def __post_init__(self) -> None:
        self.base, self.mitigation = parse_method(self.method)
        torch.manual_seed(self.seed)
        table = self.dataset.table
        for col, what in ((f"label/{self.label}", "label"), (f"sa/{self.attribute}", "attribute")):
            if col not in table:
                have = self.dataset.label_names if what == "label" else self.dataset.attribute_names
                raise FmcacheError(f"{self.dataset.name} has no {what} {col.split('/', 1)[1]!r}; it has: {', '.join(have)}")
        if self.domain_inference not in ("sum", "known"):
            raise FmcacheError(f"domain inference {self.domain_inference!r}: choose sum or known")
        if self.kind not in self.enc.dims:
            raise FmcacheError(f"{self.enc.spec.key!r} has no feature kind {self.kind!r}; it has {', '.join(self.enc.dims)}")
        y = table[f"label/{self.label}"].to_numpy()
        known = y >= 0
        self.n_classes = max(2, int(y[known].max()) + 1) if known.any() else 2
        g = table[f"sa/{self.attribute}"].to_numpy()
        self.n_groups = max(2, int(g.max()) + 1)
        self.loss_fn = LOSSES[self.mitigation]
        train = known & (table["split"].to_numpy() == SPLITS["train"]) & (g >= 0)
        counts = np.zeros((self.n_groups, self.n_classes), np.float32)
        np.add.at(counts, (g[train], y[train]), 1.0)
        self.hp = {**self.loss_fn.hparams, **(self.hparams or {}), "cell_counts": torch.from_numpy(counts)}
        size = self.enc.spec.preprocess.size
        if self.base == "lora":
            self.adapted = add_lora(self.enc, self.rank, self.alpha)
        else:
            self.adapted = []
            unfreeze_image_tower(self.enc, torch.zeros(1, 3, size, size), self.kind)
        head = self.loss_fn.make_head(self.enc.dims[self.kind], self.n_classes, self.n_groups,
                                      cell_counts=self.hp["cell_counts"])
        self.model = _Classifier(self.enc, head, self.kind, self.base)
        self._eval = build_transform(self.enc.spec.preprocess)
        self._train = build_augmentation(self.enc.spec.preprocess) if self.augment else self._eval

    def items(self, split: str, *, train: bool) -> _Items:
        table = self.dataset.table
        y = table[f"label/{self.label}"].to_numpy()
        rows = np.flatnonzero((table["split"].to_numpy() == SPLITS[split]) & (y >= 0))
        g = table[f"sa/{self.attribute}"].to_numpy()[rows]
        return _Items(self.dataset, rows, y[rows], g, self._train if train else self._eval)

    def init_state(self) -> State:
        return self.loss_fn.init_state(self.n_groups, self.n_classes, self.hp)

    def loss(self, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        feats = self.model.features(batch["x"])
        hp = {k: v.to(feats.device) if isinstance(v, torch.Tensor) else v for k, v in self.hp.items()}
        b = LossBatch(x=feats, y=batch["y"], g=batch["g"], m=batch["m"].float(), gm=batch["gm"].float())
        return self.loss_fn.loss(self.model.head, state, b, hp)

    def predict(self, batch: Batch) -> torch.Tensor:
        """Scores: P(class 1) for a binary label, class probabilities otherwise. Only
        ``domain_inference="known"`` reads the group (an unknown one falls back to the sum rule)."""
        known = self.domain_inference == "known"
        g = torch.where(batch["gm"] > 0, batch["g"], torch.full_like(batch["g"], -1)) if known else None
        logits = self.loss_fn.predict(self.model.head, self.model.features(batch["x"]), g)
        if logits.ndim == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    def score(self, split: str, outputs: torch.Tensor) -> float:
        """Validation AUC (macro one-vs-rest for several classes); minus the log loss when the
        split holds one class only, so selection still has a direction."""
        from sklearn.metrics import log_loss, roc_auc_score

        y = self.items(split, train=False).y
        s = outputs.numpy()
        if len(np.unique(y)) < 2:
            return -float(log_loss(y, s if s.ndim > 1 else np.stack([1 - s, s], 1), labels=range(self.n_classes)))
        return float(roc_auc_score(y, s, multi_class="ovr") if s.ndim > 1 else roc_auc_score(y, s))

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "base": self.base, "mitigation": self.mitigation, "label": self.label,
                "attribute": self.attribute, "kind": self.kind, "augment": self.augment,
                "rank": self.rank if self.base == "lora" else None,
                "alpha": (self.alpha if self.alpha is not None else self.rank) if self.base == "lora" else None,
                "lora_modules": len(self.adapted), "domain_inference": self.domain_inference,
                "hparams": {k: v for k, v in self.hp.items() if k != "cell_counts"}}
