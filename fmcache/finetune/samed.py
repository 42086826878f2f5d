"""SAMed fine-tuning of a SAM-family model on a 2D segmentation dataset, with the benchmark's
mitigations, as a :class:`~fmcache.finetune.task.Task`.

SAMed (Zhang & Liu 2023) as FairMedFM uses it: LoRA on the image encoder, the mask decoder
trained in full, no prompts, one output channel per class plus background
(:mod:`fmcache.finetune.samed_net`), trained on ``(1 - 0.8) CE + 0.8 Dice`` of the low-res
logits (4x the feature grid: 256 x 256 at a 1024 input) against the label map resized to that
size by the nearest rule (:mod:`fmcache.finetune.seg_loss`).

Methods (:data:`METHODS`):

- ``samed``: the loss above.
- ``samed+febs``: FairSeg's fair error-bound scaling of the Dice term, per batch.
- ``samed+resample``: each item's CE and Dice sums weighted N / (n_groups N_g), counted on the
  training items of known group, as the group-balanced heads (:mod:`fmcache.heads.resample`);
  items of unknown group weigh 0 there and here.
- ``samed+ind``: one decoder per group; an item trains and predicts through its group's,
  an item of unknown group through the mean of all decoders' probabilities.

Inputs follow the model's own rule (:func:`fmcache.segment.sam.prepare`: SAM's longest side to
1024 and padding, MedSAM's square resize, ...), and the label map is resized and padded the
same way before it is brought to the low-res size, so label and logits stay aligned (SAMed
stretches its images to a square; its inputs have no padding). With ``augment``, training items
are flipped left-right with probability 1/2, drawn from torch's generator. It is off by
default: a flip moves a left lung to the right while its label still says left, so on datasets
whose classes are sides (Montgomery) it teaches the model to confuse them. SAMed's random
90-degree turns and rotations of up to 20 degrees are left out, as the padding of non-square
inputs would turn with them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from fmcache.datasets.samples import Dataset
from fmcache.datasets.splits import SPLIT_NAMES
from fmcache.errors import FmcacheError, UnknownNameError
from fmcache.finetune.samed_net import SamedNet
from fmcache.finetune.seg_loss import samed_loss
from fmcache.finetune.task import Batch, State
from fmcache.segment.sam import SamModel, feature_grid, prepare

METHODS = ("samed", "samed+febs", "samed+resample", "samed+ind")

# The benchmark's SAMed settings (the loop reads them as defaults): AdamW at lr 0.005, batches of
# 16, up to 100 epochs (FEBS: 20), Dice share 0.8, FEBS temperature 1, LoRA rank 4
SAMED_SETTINGS: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 0.005,
    "batch_size": 16,
    "max_epochs": 100,
    "febs_epochs": 20,
    "dice_weight": 0.8,
    "gamma": 1.0,
    "rank": 4,
}


class SamedTask:
    """SAMed (and its mitigations) on one SAM-family model and one 2D segmentation dataset.

    Parameters
    ----------
    sam_model
        A loaded model (:func:`fmcache.segment.sam.load_sam`); its weights are shared, frozen,
        and left unchanged.
    dataset
        A 2D dataset with segmentation masks.
    attribute
        The sensitive attribute whose groups the mitigations use (``sa/<attribute>``).
    method
        One of :data:`METHODS`.
    rank, dice_weight, gamma
        LoRA rank, the Dice term's share, FEBS's temperature.
    augment
        Flip training items left-right at random (off: it swaps sided classes such as left and
        right lung).
    """

    def __init__(self, sam_model: SamModel, dataset: Dataset, attribute: str, method: str = "samed", *,
                 rank: int = SAMED_SETTINGS["rank"], dice_weight: float = SAMED_SETTINGS["dice_weight"],
                 gamma: float = SAMED_SETTINGS["gamma"], augment: bool = False):
        if method not in METHODS:
            raise UnknownNameError(f"unknown SAMed method {method!r}: use one of {', '.join(METHODS)}")
        classes = list(dataset.spec.mask_classes or ())
        if dataset.spec.dim != "2d" or not classes:
            raise FmcacheError(f"SAMed fine-tunes on 2D segmentation datasets; {dataset.name} is "
                               f"{dataset.spec.dim} {dataset.spec.task}")
        column = f"sa/{attribute}"
        if column not in dataset.table:
            raise UnknownNameError(f"{dataset.name} has no attribute {attribute!r}: known: "
                                   f"{', '.join(dataset.attribute_names) or 'none'}")
        if not 0.0 <= dice_weight <= 1.0:
            raise FmcacheError(f"dice_weight {dice_weight!r}: give a share between 0 and 1 (SAMed: 0.8)")
        self.method, self.sam_model, self.dataset, self.attribute = method, sam_model, dataset, attribute
        self.rank, self.dice_weight, self.gamma, self.augment = rank, float(dice_weight), float(gamma), augment
        self.classes = classes
        self.groups = dataset.table[column].to_numpy(dtype=np.int64)
        self.split = dataset.table["split"].to_numpy()
        self.n_groups = max(int(self.groups.max(initial=-1)) + 1, 1)
        self.model = SamedNet(sam_model.sam, len(classes), rank,
                              n_decoders=self.n_groups if method == "samed+ind" else 1).to(sam_model.device)
        self.low_res = 4 * feature_grid(sam_model)
        self.group_weights = _balanced_weights(self.groups[self.rows("train")], self.n_groups)
        self._targets: dict[str, tuple[torch.Tensor, np.ndarray]] = {}

    def rows(self, split: str) -> np.ndarray:
        """The dataset rows of ``split`` (train, val, test), in the order items come."""
        if split not in SPLIT_NAMES:
            raise FmcacheError(f"unknown split {split!r}: use train, val or test")
        return np.flatnonzero(self.split == SPLIT_NAMES[split])

    def items(self, split: str, *, train: bool) -> TorchDataset:
        """The split's items: ``x`` (3, S, S) the model input, ``mask`` (L, L) int64 the class ids
        at the low-res size, ``g`` the group (-1 unknown), ``row`` the dataset row and ``size`` the
        image's original (H, W)."""
        return _Items(self, self.rows(split), flip=train and self.augment)

    def init_state(self) -> State:
        return {}

    def loss(self, batch: Batch, state: State) -> tuple[torch.Tensor, State]:
        device = self.sam_model.device
        g, target = batch["g"].to(device), batch["mask"].to(device)
        logits = self.model(batch["x"].to(device), g)
        weights = febs = None
        if self.method == "samed+resample":
            weights = torch.as_tensor(self.group_weights, dtype=logits.dtype, device=device)[g.clamp(min=0)]
            weights = torch.where(g >= 0, weights, torch.zeros_like(weights))
        elif self.method == "samed+febs":
            febs = (g, self.n_groups, self.gamma)
        return samed_loss(logits, target, dice_weight=self.dice_weight, item_weights=weights, febs=febs), state

    def predict(self, batch: Batch) -> torch.Tensor:
        """Low-res logits (B, n_classes + 1, L, L), channel 0 background."""
        with torch.no_grad():
            return self.model(batch["x"].to(self.sam_model.device), batch["g"].to(self.sam_model.device))

    def score(self, split: str, outputs: torch.Tensor) -> float:
        """Mean foreground Dice of the split's items (argmax of ``outputs``, the items' logits in
        order) against their low-res label maps, over the cells that show the image; a class
        absent from both counts 1."""
        labels, valid = self._split_targets(split)
        if len(outputs) != len(labels):
            raise FmcacheError(f"{len(outputs)} outputs for the {len(labels)} {split} items")
        pred = outputs.argmax(1).cpu()
        keep = torch.zeros_like(labels, dtype=torch.bool)
        for i, (h, w) in enumerate(valid):
            keep[i, :h, :w] = True
        dice = []
        for c in range(1, len(self.classes) + 1):
            t, p = (labels == c) & keep, (pred == c) & keep
            inter, total = (t & p).sum((1, 2)).double(), (t.sum((1, 2)) + p.sum((1, 2))).double()
            dice.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
        return float(torch.stack(dice, 1).mean()) if len(labels) else float("nan")

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.sam_model.key, "attribute": self.attribute, "rank": self.rank,
                "lora_alpha": self.rank, "lora_targets": "image encoder qkv", "dice_weight": self.dice_weight,
                "gamma": self.gamma if self.method == "samed+febs" else None, "classes": self.classes,
                "n_decoders": len(self.model.decoders), "augment": "hflip" if self.augment else None,
                "low_res": self.low_res}

    def _split_targets(self, split: str) -> tuple[torch.Tensor, np.ndarray]:
        """The split's low-res label maps (n, L, L) and the (rows, columns) of each that show the
        image rather than padding, read once."""
        if split not in self._targets:
            labels, valid = [], []
            size = self.sam_model.input.size
            for row in self.rows(split):
                mask = self.dataset.mask(int(row))
                h, w = _input_size(self.sam_model, mask.shape)
                labels.append(low_res_label(mask, (h, w), size, self.low_res))
                valid.append((-(-h * self.low_res // size), -(-w * self.low_res // size)))
            stacked = torch.stack(labels) if labels else torch.zeros((0, self.low_res, self.low_res), dtype=torch.int64)
            self._targets[split] = (stacked, np.array(valid, dtype=np.int64).reshape(-1, 2))
        return self._targets[split]


class _Items(TorchDataset):
    """A split's items, read and prepared when asked for (the images do not fit in memory)."""

    def __init__(self, task: SamedTask, rows: np.ndarray, flip: bool):
        self.task, self.rows, self.flip = task, rows, flip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        image = np.asarray(self.task.dataset.image(row).convert("RGB"))
        mask = self.task.dataset.mask(row)
        if self.flip and bool(torch.rand(()) < 0.5):
            image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        x, size = prepare(self.task.sam_model, image)
        target = low_res_label(mask, size, self.task.sam_model.input.size, self.task.low_res)
        return {"x": x.cpu(), "mask": target, "g": torch.tensor(self.task.groups[row]), "row": torch.tensor(row),
                "size": torch.tensor(image.shape[:2], dtype=torch.int64)}


def low_res_label(mask: np.ndarray, input_size: tuple[int, int], size: int, low: int) -> torch.Tensor:
    """A label map as the model sees its image: resized to ``input_size`` (h, w), padded
    bottom/right with background to ``size``, then resized to ``low`` x ``low``, each by the
    nearest rule. Returns int64 (low, low)."""
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=tuple(int(v) for v in input_size), mode="nearest-exact")
    t = F.pad(t, (0, size - int(input_size[1]), 0, size - int(input_size[0])))
    return F.interpolate(t, size=(low, low), mode="nearest-exact")[0, 0].round().long()


def predict_masks(task: SamedTask, rows: np.ndarray | list[int], *, batch_size: int = 4) -> list[np.ndarray]:
    """Class-id masks of dataset rows at each image's original size.

    The low-res logits are brought back as SAM's ``postprocess_masks`` does (bilinear to the
    input size, padding cropped, bilinear to the original size), then the argmax is taken.

    Parameters
    ----------
    task
        A (trained) SAMed task.
    rows
        Dataset rows, of any split.
    batch_size
        Images per forward pass (memory, not results).

    Returns
    -------
    list of numpy.ndarray
        uint8 (H, W) per row: 0 background, c the class ``task.classes[c - 1]``; score them
        with :func:`fmcache.fairness.dice_per_sample` against ``dataset.mask(row)``.
    """
    rows = [int(r) for r in rows]
    items = _Items(task, np.asarray(rows, dtype=np.int64), flip=False)
    sam = task.sam_model.sam
    out: list[np.ndarray] = []
    for lo in range(0, len(rows), batch_size):
        chunk = [items[i] for i in range(lo, min(lo + batch_size, len(rows)))]
        logits = task.predict({k: torch.stack([c[k] for c in chunk]) for k in ("x", "g")})
        for j, item in enumerate(chunk):
            original = tuple(int(v) for v in item["size"])
            up = sam.postprocess_masks(logits[j:j + 1], _input_size(task.sam_model, original), original)
            out.append(up[0].argmax(0).to(torch.uint8).cpu().numpy())
    return out


def _input_size(model: SamModel, original: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) :func:`prepare` resizes an image of ``original`` (H, W) to, before padding."""
    size = model.input.size
    if model.input.resize == "longest_side":
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide.get_preprocess_shape(original[0], original[1], size)
    return size, size


def _balanced_weights(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """N / (non-empty groups x N_g) per group, counted on known-group items (0 for an empty group)."""
    counts = np.bincount(groups[groups >= 0], minlength=n_groups).astype(np.float64)
    filled = max(int((counts > 0).sum()), 1)
    return np.where(counts > 0, counts.sum() / (filled * np.maximum(counts, 1)), 0.0)
